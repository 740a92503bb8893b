// The weights pane: what the selected tensor's weights look like. It draws only what core
// computed (ql::TensorStats, handed over by AppSession::statsReady): the value histogram, the
// per-output-row and per-input-column abs-max with outlier channels and their threshold, the
// summary statistics and a downsampled |W| heatmap. Its controls change the session's statistics
// options (bin count, outlier rule), which recompute in core on the job worker; the log-scale
// toggles and zoom only change the view.
#pragma once

#include <QWidget>

#include <memory>

#include "stats/tensor_stats.h"

class AppSession;
class QCheckBox;
class QComboBox;
class QCPBars;
class QCPColorMap;
class QCPColorScale;
class QCPGraph;
class QCPItemStraightLine;
class QCPTextElement;
class QCustomPlot;
class QDoubleSpinBox;
class QGroupBox;
class QLabel;
class QProgressBar;
class QSettings;
class QSpinBox;
class QSplitter;
class QStackedWidget;

class WeightsPane : public QWidget {
    Q_OBJECT
public:
    explicit WeightsPane(AppSession* session, QWidget* parent = nullptr);
    ~WeightsPane() override;

    // Splitter positions and view toggles, kept by the main window between runs.
    void saveSettings(QSettings& settings) const;
    void restoreSettings(QSettings& settings);

    // The statistics currently drawn (null when none).
    std::shared_ptr<const ql::TensorStats> drawnStats() const { return m_stats; }
    QCPBars* histogramBars() const { return m_histBars; }
    QCPGraph* rowOutlierGraph() const { return m_rowOutliers; }
    QCPGraph* colOutlierGraph() const { return m_colOutliers; }

private:
    struct ChannelPlot {
        QCustomPlot* plot = nullptr;
        QCPGraph* values = nullptr;
        QCPGraph* outliers = nullptr;
        QCPItemStraightLine* threshold = nullptr;
        QCPTextElement* title = nullptr;
    };

    QWidget* buildHistogramBox();
    QWidget* buildHeatmapBox();
    QWidget* buildChannelsBox();
    QWidget* buildStatsPanel();
    ChannelPlot makeChannelPlot(const QString& objectName, const QString& xLabel,
                                const QString& yLabel);

    void onModelLoaded();
    void onModelClosed();
    void onTensorSelected(const QString& name);
    void onStatsRequested(const QString& name);
    void onStatsReady(std::shared_ptr<const ql::TensorStats> stats);
    void onStatsFailed(const QString& name, const QString& message);
    void onOptionsChanged();
    void onOutlierControlsChanged();

    void updateHeader();
    void setBusy(bool busy, const QString& text = {});
    void clearPlots();
    void drawHistogram();
    void drawChannels();
    void drawChannel(ChannelPlot& plot, const std::vector<float>& absMax,
                     const ql::OutlierChannels& outliers, const QString& what);
    void drawHeatmap();
    void drawStatsPanel();
    void applyHistogramScale();
    void applyHeatmapScale();
    void resetHistogramView();
    void resetHeatmapView();
    void resetChannelViews();

    AppSession* m_session;
    std::shared_ptr<const ql::TensorStats> m_stats;

    QLabel* m_title = nullptr;
    QLabel* m_status = nullptr;
    QProgressBar* m_busy = nullptr;
    QStackedWidget* m_stack = nullptr;
    QLabel* m_placeholder = nullptr;
    QSplitter* m_mainSplitter = nullptr;
    QSplitter* m_plotSplitter = nullptr;
    QSplitter* m_topSplitter = nullptr;
    QSplitter* m_channelSplitter = nullptr;

    // (a) histogram
    QGroupBox* m_histBox = nullptr;
    QCustomPlot* m_histPlot = nullptr;
    QCPBars* m_histBars = nullptr;
    QSpinBox* m_binsSpin = nullptr;
    QCheckBox* m_histLog = nullptr;
    // (b) channels
    ChannelPlot m_rowPlot;
    ChannelPlot m_colPlot;
    QComboBox* m_ruleCombo = nullptr;
    QDoubleSpinBox* m_kSpin = nullptr;
    QCPGraph* m_rowOutliers = nullptr;
    QCPGraph* m_colOutliers = nullptr;
    // (c) statistics
    struct StatLabels;
    std::unique_ptr<StatLabels> m_labels;
    // (d) heatmap
    QCustomPlot* m_heatPlot = nullptr;
    QCPColorMap* m_heatMap = nullptr;
    QCPColorScale* m_heatScale = nullptr;
    QCheckBox* m_heatLog = nullptr;
    QGroupBox* m_heatBox = nullptr;
};
