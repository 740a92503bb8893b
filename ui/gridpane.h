// The grid pane (the teaching view): how one group of real weights lands on the grids of the
// common 4-bit formats. For the selected tensor, a row and a group, it draws the group's weights
// as a jittered strip plot and a histogram, with each format's representable levels
// (ql::gridLevels) as vertical ticks in the format's own lane and colour: INT4 symmetric and
// asymmetric and NF4 with the chosen group size, MXFP4 (E2M1, blocks of 32) and one llama.cpp
// format. Tables give each grid's scale, zero point, group MSE and the weights that moved most,
// and a step-through of one weight (click a point or pick its column) through every grid
// (ql::explainWeight): w / scale, rounded, clamped, code, dequantized.
//
// Below, a sortable table compares every preset format on the whole tensor (MSE, SQNR, max
// error, bits per weight, bytes). All numbers come from core on the job worker: "gridWeights"
// decodes the tensor once, "grid" quantizes the chosen row in each grid format (every grid here
// is per group, so one row quantizes exactly as in the whole tensor), "formatTable" quantizes the
// tensor in every format. Formats whose blocks do not divide the row use llama.cpp's fallback,
// and the table says so.
#pragma once

#include <QWidget>

#include <memory>
#include <string>
#include <vector>

#include "quant/error_metrics.h"
#include "quant/format.h"
#include "util/progress.h"
#include "util/result.h"

class AppSession;
class CalibrationState;
class FormatTableModel;
class GridTableModel;
class JobRunner;
class QAbstractItemModel;
class QCPBars;
class QCPGraph;
class QCPItemLine;
class QCPAbstractPlottable;
class QComboBox;
class QCustomPlot;
class QGroupBox;
class QLabel;
class QMouseEvent;
class QSortFilterProxyModel;
class QSpinBox;
class QStackedWidget;
class QTableView;
class StepTableModel;

// One grid applied to one group (computed on the worker).
struct GridRow {
    QString label;           // "INT4 sym g32"
    ql::QuantFormat format;  // what was used (the fallback when the wanted one does not fit)
    QString note;            // fallback or error text
    bool ok = false;
    std::vector<float> levels;  // gridLevels at the group's first column
    float scale = 0;
    float zeroPoint = 0;
    bool hasZeroPoint = false;
    double groupMse = 0;
    std::vector<float> dequantized;            // the group's decoded values
    std::vector<std::pair<int, float>> moved;  // (column, q - w), largest |q - w| first
    ql::QuantStep step;                        // the followed weight
};

struct GridData {
    int row = 0;
    int group = 0;
    int groupSize = 32;
    int firstCol = 0;
    int column = 0;                // followed weight
    std::vector<float> weights;    // the group's original values
    std::vector<double> histKeys;  // bin centres (ql::computeHistogram)
    std::vector<double> histCounts;
    double histBinWidth = 0;
    std::vector<GridRow> grids;
};

// One row of the per-tensor format comparison.
struct FormatRow {
    QString rule;  // preset rule, e.g. "q4_k"
    QString family;
    QString used;  // the format actually quantized (rule, or its fallback)
    QString note;  // "" or why the fallback is used / the error
    bool ok = false;
    ql::ErrorMetrics metrics;
    double bitsPerWeight = 0;
    std::uint64_t bytes = 0;
};

class GridPane : public QWidget {
    Q_OBJECT
public:
    GridPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
             QWidget* parent = nullptr);
    ~GridPane() override;

    // The grid formats for a group size and llama.cpp type, in display order.
    static std::vector<std::pair<QString, ql::QuantFormat>> gridFormats(int groupSize,
                                                                        ql::TensorType ggml);
    // Everything the grid views show, for row `row` (cols values) of a tensor.
    static ql::Result<GridData> computeGrid(const std::vector<float>& rowValues, int row, int group,
                                            int groupSize, int column, ql::TensorType ggml);
    // Every preset format on a rows x cols tensor.
    static ql::Result<std::vector<FormatRow>> computeFormatTable(const std::vector<float>& w,
                                                                 std::int64_t rows,
                                                                 std::int64_t cols,
                                                                 const ql::ProgressFn& progress);

    void setRow(int row);
    void setGroup(int group);
    void setGroupSize(int size);
    void setColumn(int column);  // absolute column of the followed weight
    void setGgmlType(ql::TensorType type);

    // What is drawn, for tests and screenshots.
    std::shared_ptr<const GridData> drawnGrid() const { return m_grid; }
    // x positions of the level ticks drawn for grid `index` (gridFormats order).
    std::vector<double> drawnLevels(int index) const;
    QCPGraph* stripGraph() const { return m_strip; }
    QAbstractItemModel* formatModel() const;        // the sortable view's model (proxy)
    QAbstractItemModel* formatSourceModel() const;  // unsorted rows, FormatRow order
    const std::vector<FormatRow>& formatRows() const;
    QAbstractItemModel* gridModel() const;
    QAbstractItemModel* stepModel() const;
    bool formatTablePending() const { return m_formatPending; }
    bool gridPending() const { return m_gridPending; }

signals:
    void gridDrawn();
    void formatTableReady();

private:
    QWidget* buildControls();
    QWidget* buildPlots();
    QWidget* buildTables();
    QWidget* buildFormatTable();

    void onModelLoaded();
    void onModelClosed();
    void onTensorSelected(const QString& name);
    void requestWeights();
    void requestGrid();
    void requestFormatTable();
    void drawGrid();
    void onPlottableClick(QCPAbstractPlottable* plottable, int dataIndex, QMouseEvent* event);
    void updateSpinRanges();
    void setStatus(const QString& text);

    AppSession* m_session;
    JobRunner* m_jobs;
    CalibrationState* m_state;

    // The decoded selected tensor.
    QString m_tensor;
    std::shared_ptr<const std::vector<float>> m_weights;
    std::int64_t m_rows = 0;
    std::int64_t m_cols = 0;
    std::shared_ptr<const GridData> m_grid;
    bool m_gridPending = false;
    bool m_formatPending = false;

    QStackedWidget* m_stack = nullptr;
    QLabel* m_placeholder = nullptr;
    QLabel* m_title = nullptr;
    QLabel* m_status = nullptr;
    QSpinBox* m_rowSpin = nullptr;
    QSpinBox* m_groupSpin = nullptr;
    QComboBox* m_groupSize = nullptr;
    QComboBox* m_ggmlCombo = nullptr;
    QSpinBox* m_colSpin = nullptr;

    QCustomPlot* m_stripPlot = nullptr;
    QCPGraph* m_strip = nullptr;
    QCPGraph* m_followed = nullptr;
    std::vector<int> m_stripCols;  // column of each strip point, in the graph's (sorted) order
    std::vector<std::vector<QCPItemLine*>> m_levelLines;
    std::vector<QCPItemLine*> m_followMarks;  // where the followed weight lands, per grid
    QCustomPlot* m_histPlot = nullptr;
    QCPBars* m_histBars = nullptr;
    QGroupBox* m_plotBox = nullptr;

    GridTableModel* m_gridModel = nullptr;
    StepTableModel* m_stepModel = nullptr;
    QGroupBox* m_stepBox = nullptr;
    FormatTableModel* m_formatModel = nullptr;
    QSortFilterProxyModel* m_formatProxy = nullptr;
    QTableView* m_formatView = nullptr;
    QGroupBox* m_formatBox = nullptr;
};
