// The live GPTQ pane ("GPTQ Run" dock): runs GPTQ over the open model and shows it working.
//
// Controls: layout rules (the --layout syntax, default "*=int4:g128:gptq"), the calibration
// source (the current calibration, whose Hessians are used as they are, or text files with
// samples and sequence length), true-sequential on/off, step mode (pause after every layer), and
// Start / Pause-Resume / Cancel. The parameters are copied into the "gptq" job on the JobRunner;
// the job calls ql::quantizeModelSequential or ql::quantizeModel with a GptqRelay as observer and
// a ql::PauseGate, and returns the ql::QuantizedModel as a value, partial when cancelled
// (QuantizeOptions::partialOnCancel).
//
// While it runs, the relay's batches (at most ~30 a second) fill a per-layer table
// (GptqLayerModel: tensor, shape, status, RTN and GPTQ loss, their ratio, damp, seconds), a log-
// scale plot of every finished layer's loss (RTN vs GPTQ), the current layer's Hessian diagonal
// in processing order beside its original column order (act-order's permutation) with the
// current column marked, the dampening log, the progress bar (layer, lazy block, column) and
// elapsed time with ETA. Afterwards the result is handed to AppSession for inspection (clicking a
// finished layer selects it there, showing its quantized values), can be evaluated ("gptqEval":
// PPL and KL divergence against the unquantized model on a text) and exported ("gptqExport":
// ql::writeGguf, which writes a temporary file and renames it).
#pragma once

#include <QElapsedTimer>
#include <QWidget>

#include <memory>
#include <optional>

#include "eval/evaluator.h"
#include "gptqrelay.h"
#include "quant/quantize_model.h"

class AppSession;
class QAbstractItemModel;
class QModelIndex;
class CalibrationState;
class GptqLayerModel;
class JobRunner;
class QCheckBox;
class QComboBox;
class QCPGraph;
class QCPItemStraightLine;
class QCustomPlot;
class QLabel;
class QLineEdit;
class QPlainTextEdit;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QTableView;
class QTimer;

namespace ql {
class PauseGate;
}

// What the "gptq" job is given (copied from the controls) and returns.
struct GptqRunRequest {
    std::string layout;
    bool useCalibration = true;  // the current calibration, else the text files
    std::vector<std::string> textFiles;
    int samples = 32;
    int seqLen = 256;
    bool sequential = true;
};

struct GptqEvalRequest {
    std::string textFile;
    int ctx = 256;
    int chunks = 16;  // 0: all
};

class GptqPane : public QWidget {
    Q_OBJECT
public:
    enum class State { Idle, Running, Pausing, Paused, Cancelling, Finished };

    GptqPane(AppSession* session, JobRunner* jobs, CalibrationState* calibration,
             QWidget* parent = nullptr);
    ~GptqPane() override;

    GptqRunRequest requestFromControls() const;
    void setRequest(const GptqRunRequest& request);
    GptqEvalRequest evalRequestFromControls() const;
    void setEvalRequest(const GptqEvalRequest& request);

    State state() const { return m_state; }
    // The finished (or partial) model of the last run; null before one ends.
    std::shared_ptr<const ql::QuantizedModel> result() const { return m_result; }
    std::optional<ql::EvalResult> evalResult() const { return m_eval; }
    QAbstractItemModel* layerModel() const;
    QTableView* layerView() const { return m_table; }
    int finishedLayers() const;
    QString currentLayer() const { return m_current; }
    QCPGraph* gptqLossGraph() const { return m_gptqLoss; }
    QCPGraph* rtnLossGraph() const { return m_rtnLoss; }
    QCPGraph* hessianGraph() const { return m_hessSorted; }
    QString dampLog() const;
    QString progressText() const;
    int eventDeliveries() const;

public slots:
    void start();  // from the controls
    void startRun(const GptqRunRequest& request);
    void togglePause();
    void pause();
    void resume();
    void cancel();
    void setStepMode(bool on);
    void evaluate();
    void exportGguf(const QString& path);

signals:
    void stateChanged(GptqPane::State state);
    void runFinished(bool ok, const QString& message);
    void evaluationFinished(bool ok, const QString& message);
    void exportFinished(bool ok, const QString& message);

private:
    QWidget* buildControls();
    QWidget* buildPlots();
    QWidget* buildAfterRun();
    void onEvents(const GptqEventBatch& events);
    void onJobProgress(const QString& tag, double fraction, const QString& text);
    void onRowActivated(const QModelIndex& index);
    void onModelChanged();
    void setState(State state);
    void updateEnabled();
    void updateClock();
    double activeSeconds() const;  // since Start, pauses left out
    void updateProgressText();
    void drawLosses();
    void drawHessian(const ql::GptqLayerStart& layer);
    void showExportDialog();
    void browseText(QLineEdit* target);

    AppSession* m_session;
    JobRunner* m_jobs;
    CalibrationState* m_calibration;
    State m_state = State::Idle;
    std::shared_ptr<ql::PauseGate> m_gate;
    GptqRelay* m_relay = nullptr;
    std::shared_ptr<const ql::QuantizedModel> m_result;
    std::optional<ql::EvalResult> m_eval;
    bool m_sideJob = false;  // evaluation or export running

    // Progress.
    QElapsedTimer m_clock;
    qint64 m_pausedMs = 0;
    QElapsedTimer m_pausedSince;
    double m_fraction = 0;
    QString m_current;  // tensor in progress
    int m_currentIndex = -1;
    ql::GptqLayerProgress m_block;
    std::int64_t m_currentCols = 0;

    // Controls.
    QLineEdit* m_layout = nullptr;
    QComboBox* m_source = nullptr;
    QLineEdit* m_textFile = nullptr;
    QPushButton* m_browseText = nullptr;
    QSpinBox* m_samples = nullptr;
    QSpinBox* m_seqLen = nullptr;
    QCheckBox* m_sequential = nullptr;
    QCheckBox* m_step = nullptr;
    QPushButton* m_start = nullptr;
    QPushButton* m_pause = nullptr;
    QPushButton* m_cancel = nullptr;
    QProgressBar* m_progress = nullptr;
    QLabel* m_clockLabel = nullptr;
    QLabel* m_status = nullptr;
    QTimer* m_ticker = nullptr;

    GptqLayerModel* m_layers = nullptr;
    QTableView* m_table = nullptr;
    QCustomPlot* m_lossPlot = nullptr;
    QCPGraph* m_rtnLoss = nullptr;
    QCPGraph* m_gptqLoss = nullptr;
    QCustomPlot* m_hessPlot = nullptr;
    QCPGraph* m_hessSorted = nullptr;
    QCPGraph* m_hessOriginal = nullptr;
    QCPItemStraightLine* m_columnMark = nullptr;
    QPlainTextEdit* m_dampLog = nullptr;

    // After the run.
    QLineEdit* m_evalText = nullptr;
    QPushButton* m_browseEval = nullptr;
    QSpinBox* m_ctx = nullptr;
    QSpinBox* m_chunks = nullptr;
    QPushButton* m_evaluate = nullptr;
    QPushButton* m_export = nullptr;
    QLabel* m_resultLabel = nullptr;
};
