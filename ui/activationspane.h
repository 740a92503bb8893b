// The activations pane: what the inputs of the linear layers look like over the calibration text.
// It draws only what core computed in the CalibrationResult held by CalibrationState: a probe's
// signed histogram (ActivationStats::histogram) with the clipping ranges of
// ql::computeActivationRanges at the chosen bit width, its per-channel abs-max with outlier
// channels, its largest activations with the tokens that produced them (ProbeStats::topContext),
// and a layers × channels heatmap of log10 abs-max for one probe site, where outlier channels
// that persist across blocks show up as vertical stripes. The probe follows the tree selection:
// selecting blk.N.attn_k.weight shows blk.N.attn_qkv, the probe at that layer's input.
#pragma once

#include <QWidget>

#include <memory>
#include <vector>

#include "calib/calibration.h"

class AppSession;
class CalibrationState;
class JobRunner;
class QAbstractItemModel;
class QCheckBox;
class QComboBox;
class QCPBars;
class QCPColorMap;
class QCPColorScale;
class QCPGraph;
class QCPItemStraightLine;
class QCustomPlot;
class QDoubleSpinBox;
class QGroupBox;
class QLabel;
class QSpinBox;
class QStackedWidget;
class QTableView;
class RangeTableModel;
class TopActivationModel;

class ActivationsPane : public QWidget {
    Q_OBJECT
public:
    ActivationsPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
                    QWidget* parent = nullptr);
    ~ActivationsPane() override;

    // "blk.3.attn_q.weight" -> "blk.3.attn_qkv"; empty for tensors without a probe.
    static QString probeForTensor(const QString& tensorName);

    QString currentProbe() const;
    void setProbe(const QString& name);
    void setBits(int bits);
    int bits() const;

    // What is drawn, for tests and screenshots.
    QCPBars* histogramBars() const { return m_histBars; }
    const std::vector<ql::ActivationRange>& drawnRanges() const { return m_ranges; }
    // Two lines per range in drawnRanges() order: +clip then -clip.
    const std::vector<QCPItemStraightLine*>& clipLines() const { return m_clipLines; }
    QAbstractItemModel* rangeModel() const;
    QAbstractItemModel* topModel() const;
    QCPColorMap* heatmap() const { return m_heatMap; }
    QLabel* contextLabel() const { return m_context; }
    QTableView* topView() const { return m_topView; }

private:
    QWidget* buildHistogramBox();
    QWidget* buildChannelsBox();
    QWidget* buildTopBox();
    QWidget* buildHeatmapBox();

    void onCalibrationChanged();
    void onTensorSelected(const QString& name);
    void onProbeChosen();
    void drawProbe();
    void drawHistogram();
    void drawRanges();
    void drawChannels();
    void drawHeatmap();
    void applyHistogramScale();
    void showTopContext();

    const ql::ProbeStats* probe() const;

    AppSession* m_session;
    JobRunner* m_jobs;
    CalibrationState* m_state;
    std::shared_ptr<const ql::CalibrationResult> m_result;
    std::vector<ql::ActivationRange> m_ranges;

    QStackedWidget* m_stack = nullptr;
    QLabel* m_placeholder = nullptr;
    QComboBox* m_probeCombo = nullptr;
    QLabel* m_probeInfo = nullptr;

    QGroupBox* m_histBox = nullptr;
    QCustomPlot* m_histPlot = nullptr;
    QCPBars* m_histBars = nullptr;
    QCheckBox* m_histLog = nullptr;
    QSpinBox* m_bitsSpin = nullptr;
    std::vector<QCPItemStraightLine*> m_clipLines;
    RangeTableModel* m_rangeModel = nullptr;
    QTableView* m_rangeView = nullptr;

    QGroupBox* m_channelBox = nullptr;
    QCustomPlot* m_channelPlot = nullptr;
    QCPBars* m_channelBars = nullptr;
    QCPBars* m_outlierBars = nullptr;
    QCPItemStraightLine* m_threshold = nullptr;
    QDoubleSpinBox* m_kSpin = nullptr;
    QLabel* m_topChannels = nullptr;

    TopActivationModel* m_topModel = nullptr;
    QTableView* m_topView = nullptr;
    QLabel* m_context = nullptr;

    QGroupBox* m_heatBox = nullptr;
    QComboBox* m_siteCombo = nullptr;
    QCustomPlot* m_heatPlot = nullptr;
    QCPColorMap* m_heatMap = nullptr;
    QCPColorScale* m_heatScale = nullptr;
    class QCPItemRect* m_heatMark = nullptr;  // outlines the chosen probe's block
};
