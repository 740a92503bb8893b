#include "gptqpane.h"

#include <QAbstractTableModel>
#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QProgressBar>
#include <QPushButton>
#include <QSpinBox>
#include <QSplitter>
#include <QTableView>
#include <QTimer>
#include <QVBoxLayout>

#include <qcustomplot.h>

#include <algorithm>
#include <cmath>

#include "appsession.h"
#include "calib/calibrate.h"
#include "calibrationpane.h"
#include "calibrationstate.h"
#include "compute/backend.h"
#include "export/gguf_writer.h"
#include "format.h"
#include "jobrunner.h"
#include "layout/layout.h"
#include "model/llama.h"
#include "model/llama_runner.h"
#include "model/tokenizer.h"
#include "quant/gptq_sequential.h"
#include "util/pause_gate.h"

namespace {

const QString kRunTag = QStringLiteral("gptq");
const QString kEvalTag = QStringLiteral("gptqEval");
const QString kExportTag = QStringLiteral("gptqExport");

const QColor kRtnColor(0xd9, 0x5f, 0x02);
const QColor kGptqColor(0x1f, 0x77, 0xb4);

QString sci(double v)
{
    return QString::number(v, 'e', 3);
}

QString durationText(double seconds)
{
    if (!(seconds >= 0) || seconds > 360000) return QStringLiteral("—");
    if (seconds < 10) return QObject::tr("%1 s").arg(seconds, 0, 'f', 1);
    const int s = int(seconds + 0.5);
    if (s < 60) return QObject::tr("%1 s").arg(s);
    return QObject::tr("%1 min %2 s").arg(s / 60).arg(s % 60, 2, 10, QLatin1Char('0'));
}

// The legend in its own column right of the axis rect, where it hides no data.
void legendBeside(QCustomPlot* plot)
{
    auto* column = new QCPLayoutGrid;
    plot->plotLayout()->addElement(1, 1, column);
    column->addElement(0, 0, plot->legend);
    column->setMargins(QMargins(0, 8, 6, 0));
    column->insertRow(1);  // a spacer row takes the rest of the height
    column->setRowStretchFactor(0, 0.01);
    plot->plotLayout()->setColumnStretchFactor(1, 0.01);
    plot->legend->setVisible(true);
    plot->legend->setFont(QFont(plot->font().family(), 8));
    plot->legend->setBorderPen(Qt::NoPen);
}

QString dataDir()
{
    const QString fromEnv = qEnvironmentVariable("QUANTLENS_DATA");
    if (!fromEnv.isEmpty()) return fromEnv;
    return QStringLiteral(QL_DEFAULT_DATA_DIR);
}

QString defaultEvalText()
{
    const QString path = dataDir() + QStringLiteral("/text/eval/tinystories-valid-1000.txt");
    return QFileInfo::exists(path) ? QFileInfo(path).canonicalFilePath()
                                   : CalibrationPane::defaultTextFile();
}

// The quantized model as a LlamaModel: its tensors decoded, the rest from the source.
ql::Result<ql::LlamaModel> quantizedLlama(const ql::Model& model, const ql::QuantizedModel& q)
{
    ql::LlamaLoadOptions options;
    options.override =
        [&q](const ql::TensorInfo& t) -> ql::Result<std::optional<std::vector<float>>> {
        if (!q.find(t.name)) return std::optional<std::vector<float>>();
        auto w = ql::dequantizedWeights(q, t.name);
        if (!w) return w.error();
        return std::optional<std::vector<float>>(std::move(w).value());
    };
    return ql::LlamaModel::create(model, options);
}

// On the worker: GPTQ over the whole model, with the relay watching and the gate holding.
ql::Result<ql::QuantizedModel> runGptq(const ql::Model& model, const ql::Layout& layout,
                                       const GptqRunRequest& request,
                                       std::shared_ptr<const ql::CalibrationResult> calibration,
                                       ql::GptqObserver* observer, ql::PauseGate* gate,
                                       const ql::ProgressFn& progress)
{
    ql::QuantizeOptions options;
    options.gptqObserver = observer;
    options.pauseGate = gate;
    options.partialOnCancel = true;
    // GPTQ of each tensor on the GPU when there is one; a GPU failure other than a cancel runs
    // the whole model again on the CPU.
    auto backend = ql::createBackend(ql::BackendKind::Auto);
    ql::Backend* gpu = backend && (*backend)->device().isGpu ? backend->get() : nullptr;
    auto withCalibration = [&](const ql::CalibrationResult& c,
                               const ql::ProgressFn& p) -> ql::Result<ql::QuantizedModel> {
        if (gpu) {
            options.backend = gpu;
            auto q = ql::quantizeModel(model, layout, &c, p, options);
            options.backend = nullptr;
            if (q || q.error().code == ql::ErrorCode::Cancelled) return q;
            (void)ql::reportProgress(
                p, 0.0, "the GPU failed (" + q.error().message + "): GPTQ on the CPU instead");
        }
        return ql::quantizeModel(model, layout, &c, p, options);
    };
    if (request.useCalibration && !request.sequential) {
        if (!calibration)
            return ql::makeError(ql::ErrorCode::InvalidArgument, "no calibration to use");
        return withCalibration(*calibration, progress);
    }
    // Windows from the text, or the ones the current calibration was made from.
    auto tokenizer = ql::Tokenizer::create(model);
    if (!tokenizer) return tokenizer.error();
    ql::CalibrationConfig config;
    if (request.useCalibration && calibration) {
        config = calibration->config;
    } else {
        config.textFiles = request.textFiles;
        config.samples = request.samples;
        config.seqLen = request.seqLen;
    }
    config.hessian = ql::HessianPrecision::Float64;
    auto windows = ql::calibrationWindows(**tokenizer, config);
    if (!windows) return windows.error();
    auto llama = ql::LlamaModel::create(model);
    if (!llama) return llama.error();
    if (request.sequential) {
        // The block passes and GPTQ on the GPU when there is one (bf16 passes, weights streamed
        // when the model does not fit); a GPU failure other than a cancel runs it again on the
        // CPU.
        if (gpu) {
            std::string failure;
            {
                auto runner = ql::createLlamaRunner(*gpu, *llama, ql::Precision::BFloat16);
                if (runner) {
                    (void)ql::reportProgress(progress, 0.0, "GPTQ on " + gpu->device().name);
                    options.backend = gpu;
                    auto q = ql::quantizeModelSequential(model, *llama, **runner, *windows, layout,
                                                         progress, options);
                    if (q) return std::move(q->model);
                    if (q.error().code == ql::ErrorCode::Cancelled) return q.error();
                    failure = q.error().message;
                } else {
                    failure = runner.error().message;
                }
            }
            (void)ql::reportProgress(progress, 0.0,
                                     "the GPU failed (" + failure + "): GPTQ on the CPU instead");
            options.backend = nullptr;
            llama = ql::LlamaModel::create(model);  // the GPU run changed some weights
            if (!llama) return llama.error();
        }
        auto q = ql::quantizeModelSequential(model, *llama, *windows, layout, progress, options);
        if (!q) return q.error();
        return std::move(q->model);
    }
    auto calib = ql::calibrateWindows(
        *llama, **tokenizer, *windows, config, [&](double f, std::string_view) {
            return ql::reportProgress(progress, 0.3 * f, "calibrating");
        });
    if (!calib) return calib.error();
    return withCalibration(*calib, [&](double f, std::string_view what) {
        return ql::reportProgress(progress, 0.3 + 0.7 * f, what);
    });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The per-layer table.

class GptqLayerModel : public QAbstractTableModel {
public:
    enum Column { Tensor, Shape, Status, RtnLoss, GptqLoss, Ratio, Damp, Seconds, ColumnCount };
    enum class LayerStatus { Pending, Running, Done, NotRun };

    struct Row {
        ql::GptqPlannedLayer plan;
        LayerStatus status = LayerStatus::Pending;
        std::int64_t block = 0, blocks = 0;
        ql::GptqLayerDone done;
        double damp = 0;
        int raises = 0;
    };

    using QAbstractTableModel::QAbstractTableModel;

    int rowCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : int(m_rows.size());
    }
    int columnCount(const QModelIndex& parent = {}) const override
    {
        return parent.isValid() ? 0 : ColumnCount;
    }

    QVariant headerData(int section, Qt::Orientation o, int role) const override
    {
        if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
        static const char* names[] = {"Tensor",    "Shape",    "Status", "RTN loss",
                                      "GPTQ loss", "GPTQ/RTN", "Damp",   "Seconds"};
        return tr(names[section]);
    }

    QVariant data(const QModelIndex& index, int role) const override
    {
        if (!index.isValid()) return {};
        const Row& r = m_rows[std::size_t(index.row())];
        const bool done = r.status == LayerStatus::Done;
        if (role == Qt::UserRole) {
            switch (index.column()) {
                case Tensor: return QString::fromStdString(r.plan.tensor);
                case Status: return int(r.status);
                case RtnLoss: return done ? QVariant(r.done.rtnLoss) : QVariant();
                case GptqLoss: return done ? QVariant(r.done.loss) : QVariant();
                case Ratio:
                    return done && r.done.rtnLoss > 0 ? QVariant(r.done.loss / r.done.rtnLoss)
                                                      : QVariant();
                case Damp: return r.damp;
                case Seconds: return done ? QVariant(r.done.seconds) : QVariant();
                default: return {};
            }
        }
        if (role == Qt::TextAlignmentRole && index.column() >= RtnLoss)
            return int(Qt::AlignRight | Qt::AlignVCenter);
        if (role == Qt::ForegroundRole) {
            if (r.status == LayerStatus::Pending || r.status == LayerStatus::NotRun)
                return QColor(Qt::gray);
            if (index.column() == Ratio && done && r.done.rtnLoss > 0)
                return r.done.loss < r.done.rtnLoss ? QColor(0x1a, 0x7f, 0x37)
                                                    : QColor(0xb0, 0x1c, 0x1c);
            if (index.column() == Damp && r.raises > 0) return QColor(0xb0, 0x1c, 0x1c);
            return {};
        }
        if (role == Qt::FontRole && r.status == LayerStatus::Running) {
            QFont f;
            f.setBold(true);
            return f;
        }
        if (role == Qt::ToolTipRole) {
            if (index.column() == Tensor || index.column() == Shape)
                return tr("%1: %2 × %3 (out × in), %4")
                    .arg(QString::fromStdString(r.plan.tensor))
                    .arg(r.plan.rows)
                    .arg(r.plan.cols)
                    .arg(QString::fromStdString(r.plan.format));
            if (r.status == LayerStatus::NotRun)
                return tr("The run stopped before this layer: it keeps its source weights");
            if (done)
                return tr("Output error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): GPTQ %1, RTN %2%3")
                    .arg(sci(r.done.error.relative), sci(r.done.rtnError.relative),
                         r.raises ? tr("; damp raised %n time(s)", nullptr, r.raises) : QString());
            return {};
        }
        if (role != Qt::DisplayRole) return {};
        switch (index.column()) {
            case Tensor: return QString::fromStdString(r.plan.tensor);
            case Shape: return QStringLiteral("%1 × %2").arg(r.plan.rows).arg(r.plan.cols);
            case Status:
                switch (r.status) {
                    case LayerStatus::Pending: return tr("pending");
                    case LayerStatus::Running:
                        return tr("block %1/%2")
                            .arg(r.block)
                            .arg(std::max<std::int64_t>(1, r.blocks));
                    case LayerStatus::Done: return tr("done");
                    case LayerStatus::NotRun: return tr("not run");
                }
                return {};
            case RtnLoss: return done ? sci(r.done.rtnLoss) : QString();
            case GptqLoss: return done ? sci(r.done.loss) : QString();
            case Ratio:
                return done && r.done.rtnLoss > 0
                           ? QString::number(r.done.loss / r.done.rtnLoss, 'f', 3)
                           : QString();
            case Damp:
                if (r.status == LayerStatus::Pending || r.status == LayerStatus::NotRun)
                    return QString();
                return r.raises ? tr("%1 (raised)").arg(r.damp, 0, 'g', 3)
                                : QString::number(r.damp, 'g', 3);
            case Seconds: return done ? QString::number(r.done.seconds, 'f', 3) : QString();
            default: return {};
        }
    }

    void reset(std::vector<ql::GptqPlannedLayer> layers)
    {
        beginResetModel();
        m_rows.clear();
        for (auto& l : layers) m_rows.push_back({std::move(l)});
        endResetModel();
    }

    int find(const std::string& tensor) const
    {
        for (std::size_t i = 0; i < m_rows.size(); ++i)
            if (m_rows[i].plan.tensor == tensor) return int(i);
        return -1;
    }

    Row* row(int i) { return i >= 0 && i < int(m_rows.size()) ? &m_rows[std::size_t(i)] : nullptr; }
    const std::vector<Row>& rows() const { return m_rows; }

    void changed(int i)
    {
        if (i >= 0) emit dataChanged(index(i, 0), index(i, ColumnCount - 1));
    }

    // After the run: layers that never finished.
    void markNotRun()
    {
        for (std::size_t i = 0; i < m_rows.size(); ++i)
            if (m_rows[i].status != LayerStatus::Done) m_rows[i].status = LayerStatus::NotRun;
        if (!m_rows.empty()) emit dataChanged(index(0, 0), index(rowCount() - 1, ColumnCount - 1));
    }

    int finished() const
    {
        return int(std::count_if(m_rows.begin(), m_rows.end(),
                                 [](const Row& r) { return r.status == LayerStatus::Done; }));
    }

private:
    std::vector<Row> m_rows;
};

// ---------------------------------------------------------------------------------------------
// Construction

GptqPane::GptqPane(AppSession* session, JobRunner* jobs, CalibrationState* calibration,
                   QWidget* parent)
    : QWidget(parent), m_session(session), m_jobs(jobs), m_calibration(calibration)
{
    m_layers = new GptqLayerModel(this);
    m_ticker = new QTimer(this);
    m_ticker->setInterval(250);
    connect(m_ticker, &QTimer::timeout, this, &GptqPane::updateClock);

    m_table = new QTableView(this);
    m_table->setObjectName(QStringLiteral("gptqLayerTable"));
    m_table->setModel(m_layers);
    m_table->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_table->setSelectionMode(QAbstractItemView::SingleSelection);
    m_table->verticalHeader()->setVisible(false);
    m_table->verticalHeader()->setDefaultSectionSize(20);
    m_table->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    m_table->horizontalHeader()->setStretchLastSection(true);
    m_table->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
    m_table->setAlternatingRowColors(true);
    m_table->setToolTip(
        tr("Click a finished layer to show its quantized values in the weights "
           "view"));
    connect(m_table, &QTableView::clicked, this, &GptqPane::onRowActivated);
    connect(m_table, &QTableView::activated, this, &GptqPane::onRowActivated);

    m_dampLog = new QPlainTextEdit(this);
    m_dampLog->setObjectName(QStringLiteral("gptqDampLog"));
    m_dampLog->setReadOnly(true);
    m_dampLog->setMaximumBlockCount(2000);
    m_dampLog->setPlaceholderText(tr("Dampening raises appear here (none so far)."));
    m_dampLog->setFixedHeight(44);

    auto* tableBox = new QWidget(this);
    auto* tableLayout = new QVBoxLayout(tableBox);
    tableLayout->setContentsMargins(0, 0, 0, 0);
    tableLayout->addWidget(m_table, 1);
    auto* dampTitle = new QLabel(tr("Dampening events"), tableBox);
    tableLayout->addWidget(dampTitle);
    tableLayout->addWidget(m_dampLog);

    auto* split = new QSplitter(Qt::Horizontal, this);
    split->setObjectName(QStringLiteral("gptqSplitter"));
    split->addWidget(tableBox);
    split->addWidget(buildPlots());
    split->setStretchFactor(0, 1);
    split->setStretchFactor(1, 1);
    split->setSizes({660, 740});
    split->setChildrenCollapsible(false);

    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(6, 6, 6, 6);
    layout->addWidget(buildControls());
    layout->addWidget(split, 1);
    layout->addWidget(buildAfterRun());

    connect(m_jobs, &JobRunner::progress, this, &GptqPane::onJobProgress);
    connect(m_session, &AppSession::modelLoaded, this, &GptqPane::onModelChanged);
    connect(m_session, &AppSession::modelClosed, this, &GptqPane::onModelChanged);
    connect(m_calibration, &CalibrationState::calibrationChanged, this, &GptqPane::updateEnabled);
    updateEnabled();
    updateProgressText();
}

GptqPane::~GptqPane()
{
    // A paused worker must not wait for a pane that is gone.
    if (m_gate) m_gate->cancel();
}

QWidget* GptqPane::buildControls()
{
    auto* box = new QGroupBox(tr("GPTQ run"), this);
    m_layout = new QLineEdit(QStringLiteral("*=int4:g128:gptq"), box);
    m_layout->setObjectName(QStringLiteral("gptqLayout"));
    m_layout->setToolTip(
        tr("Layout rules as for quantlens-cli --layout: PATTERN=FORMAT[:options], ';' between "
           "rules, e.g. \"*=int4:g128:gptq\", \"*=q4_k:gptq:actorder; output.weight=q6_k\""));
    m_source = new QComboBox(box);
    m_source->setObjectName(QStringLiteral("gptqSource"));
    m_source->addItem(tr("Current calibration"));
    m_source->addItem(tr("Text file"));
    m_source->setToolTip(
        tr("Where the Hessians come from: the calibration shown in the "
           "Calibration dock, or a text calibrated for this run"));
    m_textFile =
        new QLineEdit(QFileInfo(CalibrationPane::defaultTextFile()).canonicalFilePath(), box);
    m_textFile->setObjectName(QStringLiteral("gptqTextFile"));
    m_browseText = new QPushButton(tr("…"), box);
    m_browseText->setFixedWidth(28);
    m_samples = new QSpinBox(box);
    m_samples->setObjectName(QStringLiteral("gptqSamples"));
    m_samples->setRange(1, 100000);
    m_samples->setValue(32);
    m_samples->setToolTip(tr("Calibration windows"));
    m_seqLen = new QSpinBox(box);
    m_seqLen->setObjectName(QStringLiteral("gptqSeqLen"));
    m_seqLen->setRange(2, 32768);
    m_seqLen->setValue(256);
    m_seqLen->setToolTip(tr("Tokens per calibration window"));
    m_sequential = new QCheckBox(tr("True-sequential"), box);
    m_sequential->setObjectName(QStringLiteral("gptqSequential"));
    m_sequential->setChecked(true);
    m_sequential->setToolTip(
        tr("Recompute each sublayer's Hessian block by block from the already quantized layers "
           "before it (with the current calibration: from the windows it was made of)"));
    m_step = new QCheckBox(tr("Pause after each layer"), box);
    m_step->setObjectName(QStringLiteral("gptqStep"));
    m_step->setToolTip(tr("Step through GPTQ one layer at a time: Resume runs the next layer"));
    m_start = new QPushButton(tr("Start"), box);
    m_start->setObjectName(QStringLiteral("gptqStart"));
    m_pause = new QPushButton(tr("Pause"), box);
    m_pause->setObjectName(QStringLiteral("gptqPause"));
    m_cancel = new QPushButton(tr("Cancel"), box);
    m_cancel->setObjectName(QStringLiteral("gptqCancel"));
    m_cancel->setToolTip(tr("Stop the run: finished layers stay quantized"));
    m_progress = new QProgressBar(box);
    m_progress->setObjectName(QStringLiteral("gptqProgress"));
    m_progress->setRange(0, 1000);
    m_progress->setTextVisible(true);
    m_clockLabel = new QLabel(box);
    m_clockLabel->setObjectName(QStringLiteral("gptqClock"));
    m_clockLabel->setMinimumWidth(220);
    m_status = new QLabel(box);
    m_status->setObjectName(QStringLiteral("gptqStatus"));
    m_status->setWordWrap(true);

    auto* row1 = new QHBoxLayout;
    row1->addWidget(new QLabel(tr("Layout:"), box));
    row1->addWidget(m_layout, 3);
    row1->addSpacing(8);
    row1->addWidget(new QLabel(tr("Hessians from:"), box));
    row1->addWidget(m_source);
    row1->addWidget(m_textFile, 2);
    row1->addWidget(m_browseText);
    row1->addWidget(new QLabel(tr("Samples:"), box));
    row1->addWidget(m_samples);
    row1->addWidget(new QLabel(tr("Tokens:"), box));
    row1->addWidget(m_seqLen);
    auto* row2 = new QHBoxLayout;
    row2->addWidget(m_sequential);
    row2->addWidget(m_step);
    row2->addSpacing(8);
    row2->addWidget(m_start);
    row2->addWidget(m_pause);
    row2->addWidget(m_cancel);
    row2->addWidget(m_progress, 1);
    row2->addWidget(m_clockLabel);
    auto* v = new QVBoxLayout(box);
    v->setContentsMargins(6, 4, 6, 4);
    v->addLayout(row1);
    v->addLayout(row2);
    v->addWidget(m_status);

    connect(m_start, &QPushButton::clicked, this, &GptqPane::start);
    connect(m_pause, &QPushButton::clicked, this, &GptqPane::togglePause);
    connect(m_cancel, &QPushButton::clicked, this, &GptqPane::cancel);
    connect(m_step, &QCheckBox::toggled, this, &GptqPane::setStepMode);
    connect(m_source, &QComboBox::currentIndexChanged, this, &GptqPane::updateEnabled);
    connect(m_browseText, &QPushButton::clicked, this, [this] { browseText(m_textFile); });
    return box;
}

QWidget* GptqPane::buildPlots()
{
    auto* w = new QWidget(this);
    auto* v = new QVBoxLayout(w);
    v->setContentsMargins(0, 0, 0, 0);

    m_lossPlot = new QCustomPlot(w);
    m_lossPlot->setObjectName(QStringLiteral("gptqLossPlot"));
    m_lossPlot->setMinimumHeight(120);
    m_lossPlot->plotLayout()->insertRow(0);
    m_lossPlot->plotLayout()->addElement(
        0, 0,
        new QCPTextElement(m_lossPlot, tr("Per-layer loss tr(ΔW H ΔWᵀ): RTN vs GPTQ"),
                           QFont(font().family(), 9, QFont::Bold)));
    m_rtnLoss = m_lossPlot->addGraph();
    m_rtnLoss->setName(tr("RTN"));
    m_rtnLoss->setLineStyle(QCPGraph::lsNone);
    m_rtnLoss->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssSquare, kRtnColor, 5));
    m_rtnLoss->setPen(QPen(kRtnColor));
    m_gptqLoss = m_lossPlot->addGraph();
    m_gptqLoss->setName(tr("GPTQ"));
    m_gptqLoss->setLineStyle(QCPGraph::lsNone);
    m_gptqLoss->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssDisc, kGptqColor, kGptqColor, 6));
    m_gptqLoss->setPen(QPen(kGptqColor));
    m_lossPlot->yAxis->setScaleType(QCPAxis::stLogarithmic);
    {
        auto ticker = QSharedPointer<QCPAxisTickerLog>::create();
        ticker->setTickCount(4);
        m_lossPlot->yAxis->setTicker(ticker);
    }
    m_lossPlot->yAxis->setNumberFormat(QStringLiteral("gb"));
    m_lossPlot->yAxis->setNumberPrecision(0);
    m_lossPlot->yAxis->setLabel(tr("loss (log)"));
    m_lossPlot->xAxis->setLabel(tr("layer, in processing order"));
    m_lossPlot->xAxis->setTicker(QSharedPointer<QCPAxisTickerText>::create());
    legendBeside(m_lossPlot);
    m_lossPlot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);

    m_hessPlot = new QCustomPlot(w);
    m_hessPlot->setObjectName(QStringLiteral("gptqHessianPlot"));
    m_hessPlot->setMinimumHeight(120);
    m_hessPlot->plotLayout()->insertRow(0);
    m_hessPlot->plotLayout()->addElement(
        0, 0,
        new QCPTextElement(m_hessPlot, tr("Hessian diagonal of the current layer"),
                           QFont(font().family(), 9, QFont::Bold)));
    m_hessOriginal = m_hessPlot->addGraph();
    m_hessOriginal->setName(tr("input column"));
    m_hessOriginal->setLineStyle(QCPGraph::lsNone);
    m_hessOriginal->setScatterStyle(
        QCPScatterStyle(QCPScatterStyle::ssCircle, QColor(150, 150, 150), 3));
    m_hessSorted = m_hessPlot->addGraph();
    m_hessSorted->setName(tr("processing order"));
    m_hessSorted->setPen(QPen(kGptqColor, 1.6));
    m_columnMark = new QCPItemStraightLine(m_hessPlot);
    m_columnMark->setPen(QPen(kRtnColor, 1, Qt::DashLine));
    m_columnMark->point1->setCoords(0, 1);
    m_columnMark->point2->setCoords(0, 2);
    m_columnMark->setVisible(false);
    m_hessPlot->yAxis->setScaleType(QCPAxis::stLogarithmic);
    {
        auto ticker = QSharedPointer<QCPAxisTickerLog>::create();
        ticker->setTickCount(4);
        m_hessPlot->yAxis->setTicker(ticker);
    }
    m_hessPlot->yAxis->setNumberFormat(QStringLiteral("gb"));
    m_hessPlot->yAxis->setNumberPrecision(1);
    m_hessPlot->yAxis->setLabel(tr("H_ii (log)"));
    m_hessPlot->xAxis->setLabel(tr("input column, or position in processing order"));
    legendBeside(m_hessPlot);
    m_hessPlot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);

    v->addWidget(m_lossPlot, 1);
    v->addWidget(m_hessPlot, 1);
    return w;
}

QWidget* GptqPane::buildAfterRun()
{
    auto* box = new QGroupBox(tr("Result: inspect (click a layer), evaluate, export"), this);
    m_evalText = new QLineEdit(defaultEvalText(), box);
    m_evalText->setObjectName(QStringLiteral("gptqEvalText"));
    m_browseEval = new QPushButton(tr("…"), box);
    m_browseEval->setFixedWidth(28);
    m_ctx = new QSpinBox(box);
    m_ctx->setObjectName(QStringLiteral("gptqEvalCtx"));
    m_ctx->setRange(8, 32768);
    m_ctx->setValue(256);
    m_ctx->setToolTip(tr("Window length (llama.cpp protocol: the second half is scored)"));
    m_chunks = new QSpinBox(box);
    m_chunks->setObjectName(QStringLiteral("gptqEvalChunks"));
    m_chunks->setRange(0, 1 << 20);
    m_chunks->setValue(16);
    m_chunks->setSpecialValueText(tr("all"));
    m_chunks->setToolTip(tr("Windows to evaluate (0: the whole text)"));
    m_evaluate = new QPushButton(tr("Evaluate PPL / KL"), box);
    m_evaluate->setObjectName(QStringLiteral("gptqEvaluate"));
    m_export = new QPushButton(tr("Export GGUF…"), box);
    m_export->setObjectName(QStringLiteral("gptqExport"));
    m_resultLabel = new QLabel(box);
    m_resultLabel->setObjectName(QStringLiteral("gptqResult"));
    m_resultLabel->setWordWrap(true);
    m_resultLabel->setTextFormat(Qt::RichText);
    m_resultLabel->setTextInteractionFlags(Qt::TextSelectableByMouse);

    auto* row = new QHBoxLayout;
    row->addWidget(new QLabel(tr("Text:"), box));
    row->addWidget(m_evalText, 2);
    row->addWidget(m_browseEval);
    row->addWidget(new QLabel(tr("Context:"), box));
    row->addWidget(m_ctx);
    row->addWidget(new QLabel(tr("Windows:"), box));
    row->addWidget(m_chunks);
    row->addWidget(m_evaluate);
    row->addWidget(m_export);
    auto* v = new QVBoxLayout(box);
    v->setContentsMargins(6, 4, 6, 4);
    v->addLayout(row);
    v->addWidget(m_resultLabel);

    connect(m_evaluate, &QPushButton::clicked, this, &GptqPane::evaluate);
    connect(m_export, &QPushButton::clicked, this, &GptqPane::showExportDialog);
    connect(m_browseEval, &QPushButton::clicked, this, [this] { browseText(m_evalText); });
    return box;
}

// ---------------------------------------------------------------------------------------------
// Parameters

GptqRunRequest GptqPane::requestFromControls() const
{
    GptqRunRequest r;
    r.layout = m_layout->text().toStdString();
    r.useCalibration = m_source->currentIndex() == 0;
    if (!m_textFile->text().trimmed().isEmpty())
        r.textFiles.push_back(m_textFile->text().trimmed().toStdString());
    r.samples = m_samples->value();
    r.seqLen = m_seqLen->value();
    r.sequential = m_sequential->isChecked();
    return r;
}

void GptqPane::setRequest(const GptqRunRequest& r)
{
    m_layout->setText(QString::fromStdString(r.layout));
    m_source->setCurrentIndex(r.useCalibration ? 0 : 1);
    m_textFile->setText(r.textFiles.empty() ? QString() : QString::fromStdString(r.textFiles[0]));
    m_samples->setValue(r.samples);
    m_seqLen->setValue(r.seqLen);
    m_sequential->setChecked(r.sequential);
}

GptqEvalRequest GptqPane::evalRequestFromControls() const
{
    return {m_evalText->text().trimmed().toStdString(), m_ctx->value(), m_chunks->value()};
}

void GptqPane::setEvalRequest(const GptqEvalRequest& r)
{
    m_evalText->setText(QString::fromStdString(r.textFile));
    m_ctx->setValue(r.ctx);
    m_chunks->setValue(r.chunks);
}

QAbstractItemModel* GptqPane::layerModel() const
{
    return m_layers;
}

int GptqPane::finishedLayers() const
{
    return m_layers->finished();
}

int GptqPane::eventDeliveries() const
{
    return m_relay ? m_relay->deliveries() : 0;
}

QString GptqPane::dampLog() const
{
    return m_dampLog->toPlainText();
}

QString GptqPane::progressText() const
{
    return m_progress->format();
}

// ---------------------------------------------------------------------------------------------
// The run

void GptqPane::start()
{
    startRun(requestFromControls());
}

void GptqPane::startRun(const GptqRunRequest& request)
{
    if (m_state == State::Running || m_state == State::Paused || m_state == State::Pausing ||
        m_state == State::Cancelling)
        return;
    const std::shared_ptr<const ql::Model> model = m_session->model();
    auto fail = [this](const QString& message) {
        m_status->setText(tr("<span style='color:#b01c1c'>%1</span>").arg(message.toHtmlEscaped()));
        emit runFinished(false, message);
    };
    if (!model) return fail(tr("No model is open"));
    auto layout = ql::Layout::parse(request.layout);
    if (!layout) return fail(QString::fromStdString(layout.error().message));
    std::shared_ptr<const ql::CalibrationResult> calibration =
        request.useCalibration ? m_calibration->result() : nullptr;
    if (request.useCalibration && !calibration)
        return fail(
            tr("No calibration yet: run one in the Calibration dock, or take the "
               "Hessians from a text file"));
    if (request.useCalibration && !request.sequential) {
        auto plan = layout->resolve(*model);
        if (!plan) return fail(QString::fromStdString(plan.error().message));
        if (auto ok = ql::checkGptqCalibration(*model, *plan, calibration.get()); !ok)
            return fail(QString::fromStdString(ok.error().message));
    }
    if (!request.useCalibration && request.textFiles.empty())
        return fail(tr("Choose a calibration text file"));

    // A new run: the previous result stays inspectable in the session until this one ends.
    m_result.reset();
    m_eval.reset();
    m_gate = std::make_shared<ql::PauseGate>();
    delete m_relay;
    m_relay = new GptqRelay(m_gate, this);
    m_relay->setStepMode(m_step->isChecked());
    connect(m_relay, &GptqRelay::eventsReady, this, &GptqPane::onEvents);
    m_layers->reset({});
    m_dampLog->clear();
    m_rtnLoss->data()->clear();
    m_gptqLoss->data()->clear();
    m_hessSorted->data()->clear();
    m_hessOriginal->data()->clear();
    m_columnMark->setVisible(false);
    m_lossPlot->replot();
    m_hessPlot->replot();
    m_current.clear();
    m_currentIndex = -1;
    m_block = {};
    m_fraction = 0;
    m_pausedMs = 0;
    m_clock.start();
    m_ticker->start();
    m_resultLabel->clear();
    m_status->setText(tr("Running %1 …").arg(QString::fromStdString(layout->toString())));
    setState(State::Running);
    updateProgressText();

    std::shared_ptr<ql::PauseGate> gate = m_gate;
    std::shared_ptr<ql::GptqObserver> observer = m_relay->observer();  // safe if the pane goes
    using ModelPtr = std::shared_ptr<const ql::QuantizedModel>;
    JobRunner::Work<ModelPtr> work =
        [model, layout = *layout, request, calibration, gate,
         observer](const ql::ProgressFn& progress) -> ql::Result<ModelPtr> {
        auto q =
            runGptq(*model, layout, request, calibration, observer.get(), gate.get(), progress);
        if (!q) return q.error();
        return ModelPtr(std::make_shared<const ql::QuantizedModel>(std::move(q).value()));
    };
    m_jobs->run(kRunTag, this, std::move(work), [this](ql::Result<ModelPtr> result) {
        m_ticker->stop();
        if (m_relay) m_relay->flushNow();
        m_gate.reset();
        m_layers->markNotRun();
        if (!result) {
            const bool cancelled = result.error().code == ql::ErrorCode::Cancelled;
            const QString message = QString::fromStdString(result.error().message);
            m_status->setText(cancelled ? tr("Cancelled before any layer finished.")
                                        : tr("<span style='color:#b01c1c'>Failed: %1</span>")
                                              .arg(message.toHtmlEscaped()));
            setState(State::Idle);
            emit runFinished(false, message);
            return;
        }
        m_result = *result;
        const int done = m_layers->finished();
        const int total = m_layers->rowCount();
        const double seconds = activeSeconds();
        m_status->setText(
            m_result->partial
                ? tr("<b>Cancelled</b> after %1 of %2 GPTQ layers (%3). The finished layers "
                     "stay quantized; the others keep their source weights.")
                      .arg(done)
                      .arg(total)
                      .arg(durationText(seconds))
                : tr("<b>Done</b>: %1 GPTQ layers in %2.").arg(done).arg(durationText(seconds)));
        m_fraction = 1;
        setState(State::Finished);
        updateProgressText();
        updateClock();
        m_session->setQuantizedModel(m_result);
        emit runFinished(true, {});
    });
}

void GptqPane::togglePause()
{
    if (m_state == State::Running)
        pause();
    else if (m_state == State::Paused || m_state == State::Pausing)
        resume();
}

void GptqPane::pause()
{
    if (!m_gate || m_state != State::Running) return;
    m_gate->pause();
    m_pausedSince.start();
    setState(State::Pausing);
    updateClock();
}

void GptqPane::resume()
{
    if (!m_gate || (m_state != State::Paused && m_state != State::Pausing)) return;
    if (m_pausedSince.isValid()) m_pausedMs += m_pausedSince.elapsed();
    m_pausedSince.invalidate();
    setState(State::Running);
    m_gate->resume();
}

void GptqPane::cancel()
{
    if (!m_gate) return;
    setState(State::Cancelling);
    m_gate->cancel();
    m_jobs->cancel(kRunTag);
}

void GptqPane::setStepMode(bool on)
{
    if (m_step->isChecked() != on) m_step->setChecked(on);
    if (m_relay) m_relay->setStepMode(on);
}

void GptqPane::setState(State state)
{
    m_state = state;
    updateEnabled();
    emit stateChanged(state);
}

void GptqPane::updateEnabled()
{
    const bool model = m_session->hasModel();
    const bool active = m_state == State::Running || m_state == State::Pausing ||
                        m_state == State::Paused || m_state == State::Cancelling;
    const bool text = m_source->currentIndex() == 1;
    m_start->setEnabled(model && !active && !m_sideJob);
    m_pause->setEnabled(m_state == State::Running || m_state == State::Paused ||
                        m_state == State::Pausing);
    m_pause->setText(m_state == State::Paused || m_state == State::Pausing ? tr("Resume")
                                                                           : tr("Pause"));
    m_cancel->setEnabled(active && m_state != State::Cancelling);
    for (QWidget* w : {static_cast<QWidget*>(m_layout), static_cast<QWidget*>(m_source),
                       static_cast<QWidget*>(m_sequential)})
        w->setEnabled(!active);
    for (QWidget* w : {static_cast<QWidget*>(m_textFile), static_cast<QWidget*>(m_browseText),
                       static_cast<QWidget*>(m_samples), static_cast<QWidget*>(m_seqLen)})
        w->setEnabled(!active && text);
    if (m_source->count() > 0)
        m_source->setItemText(0, m_calibration->hasResult()
                                     ? tr("Current calibration (%1)").arg(m_calibration->source())
                                     : tr("Current calibration (none yet)"));
    const bool haveResult = m_result != nullptr && model;
    m_evaluate->setEnabled(haveResult && !active && !m_sideJob);
    m_export->setEnabled(haveResult && !active && !m_sideJob);
}

void GptqPane::onModelChanged()
{
    if (m_gate) cancel();
    m_result.reset();
    m_eval.reset();
    m_layers->reset({});
    m_resultLabel->clear();
    m_status->clear();
    m_rtnLoss->data()->clear();
    m_gptqLoss->data()->clear();
    m_hessSorted->data()->clear();
    m_hessOriginal->data()->clear();
    m_lossPlot->replot();
    m_hessPlot->replot();
    updateEnabled();
}

// ---------------------------------------------------------------------------------------------
// Events

void GptqPane::onEvents(const GptqEventBatch& events)
{
    bool lossesChanged = false;
    const ql::GptqLayerStart* lastStart = nullptr;
    for (const GptqEvent& event : events) {
        if (const auto* run = std::get_if<ql::GptqRunStart>(&event)) {
            m_layers->reset(run->layers);
            lossesChanged = true;
        } else if (const auto* s = std::get_if<ql::GptqLayerStart>(&event)) {
            m_current = QString::fromStdString(s->tensor);
            m_currentIndex = m_layers->find(s->tensor);
            m_currentCols = s->cols;
            m_block = {};
            m_block.tensor = s->tensor;
            m_block.blocks = (s->cols + s->blockSize - 1) / std::max<std::int64_t>(1, s->blockSize);
            m_block.cols = s->cols;
            if (auto* row = m_layers->row(m_currentIndex)) {
                row->status = GptqLayerModel::LayerStatus::Running;
                row->blocks = m_block.blocks;
                row->damp = s->damp;
                m_layers->changed(m_currentIndex);
            }
            lastStart = s;
        } else if (const auto* p = std::get_if<ql::GptqLayerProgress>(&event)) {
            m_block = *p;
            if (auto* row = m_layers->row(m_layers->find(p->tensor))) {
                row->block = p->block + 1;
                row->blocks = p->blocks;
                m_layers->changed(m_layers->find(p->tensor));
            }
        } else if (const auto* d = std::get_if<ql::GptqDampRaise>(&event)) {
            m_dampLog->appendPlainText(QStringLiteral("%1: %2").arg(
                QString::fromStdString(d->tensor), QString::fromStdString(d->message)));
            if (auto* row = m_layers->row(m_layers->find(d->tensor))) {
                row->damp = d->to;
                ++row->raises;
                m_layers->changed(m_layers->find(d->tensor));
            }
        } else if (const auto* f = std::get_if<ql::GptqLayerDone>(&event)) {
            const int i = m_layers->find(f->tensor);
            if (auto* row = m_layers->row(i)) {
                row->status = GptqLayerModel::LayerStatus::Done;
                row->done = *f;
                row->damp = f->damp;
                row->block = row->blocks;
                m_layers->changed(i);
                if (m_step->isChecked() || m_state != State::Running)
                    m_table->scrollTo(m_layers->index(i, 0));
            }
            lossesChanged = true;
        }
    }
    if (lastStart) drawHessian(*lastStart);
    if (lossesChanged) drawLosses();
    if (m_block.cols > 0 && m_hessSorted->data()->size() > 0) {
        const double x = double(m_block.column);
        m_columnMark->point1->setCoords(x, 1);
        m_columnMark->point2->setCoords(x, 2);
        m_columnMark->setVisible(true);
        m_hessPlot->replot(QCustomPlot::rpQueuedReplot);
    }
    if (m_currentIndex >= 0 && m_state == State::Running)
        m_table->scrollTo(m_layers->index(m_currentIndex, 0));
    updateProgressText();
}

void GptqPane::drawLosses()
{
    const auto& rows = m_layers->rows();
    QVector<double> x, rtn, gptq;
    auto ticker = qSharedPointerDynamicCast<QCPAxisTickerText>(m_lossPlot->xAxis->ticker());
    ticker->clear();
    // A tick at the first layer of every k-th block, k chosen so that ~12 labels fit.
    std::vector<std::pair<int, QString>> blockStarts;
    QString lastBlock;
    double lo = INFINITY, hi = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const QString name = QString::fromStdString(rows[i].plan.tensor);
        const QString block = name.section(QLatin1Char('.'), 0, 1);
        if (block != lastBlock) blockStarts.emplace_back(int(i), block);
        lastBlock = block;
        if (rows[i].status != GptqLayerModel::LayerStatus::Done) continue;
        x << double(i);
        rtn << rows[i].done.rtnLoss;
        gptq << rows[i].done.loss;
        for (double v : {rows[i].done.rtnLoss, rows[i].done.loss})
            if (v > 0) {
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
    }
    const std::size_t every = std::max<std::size_t>(1, (blockStarts.size() + 11) / 12);
    for (std::size_t k = 0; k < blockStarts.size(); k += every)
        ticker->addTick(blockStarts[k].first, blockStarts[k].second);
    m_rtnLoss->setData(x, rtn, true);
    m_gptqLoss->setData(x, gptq, true);
    m_lossPlot->xAxis->setRange(-0.8, std::max<double>(1.0, double(rows.size()) - 0.2));
    if (hi > 0)
        m_lossPlot->yAxis->setRange(lo / 2, hi * 2);
    else
        m_lossPlot->yAxis->setRange(1e-3, 1);
    m_lossPlot->replot(QCustomPlot::rpQueuedReplot);
}

void GptqPane::drawHessian(const ql::GptqLayerStart& layer)
{
    QVector<double> xs, sorted, orig;
    const std::size_t n = layer.hessianDiagonal.size();
    double lo = INFINITY, hi = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double v = layer.hessianDiagonal[i];
        const double s = layer.hessianDiagonal[std::size_t(layer.order[i])];
        xs << double(i);
        // Dead columns (H_ii = 0) cannot be drawn on a log scale.
        orig << (v > 0 ? v : qQNaN());
        sorted << (s > 0 ? s : qQNaN());
        if (v > 0) {
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
    }
    m_hessOriginal->setData(xs, orig, true);
    m_hessSorted->setData(xs, sorted, true);
    m_hessSorted->setName(layer.actOrder ? tr("processing order\n(act-order)")
                                         : tr("processing order\n(= column order)"));
    m_hessPlot->xAxis->setRange(-0.5, double(n) - 0.5);
    if (hi > 0) m_hessPlot->yAxis->setRange(lo / 1.5, hi * 1.5);
    auto* title = qobject_cast<QCPTextElement*>(m_hessPlot->plotLayout()->element(0, 0));
    if (title)
        title->setText(tr("Hessian diagonal of %1 (damp %2%3)")
                           .arg(QString::fromStdString(layer.tensor))
                           .arg(layer.damp, 0, 'g', 3)
                           .arg(layer.deadColumns ? tr(", %1 dead columns").arg(layer.deadColumns)
                                                  : QString()));
    m_hessPlot->replot(QCustomPlot::rpQueuedReplot);
}

void GptqPane::onJobProgress(const QString& tag, double fraction, const QString&)
{
    if (tag != kRunTag) return;
    m_fraction = std::clamp(fraction, 0.0, 1.0);
    updateProgressText();
}

void GptqPane::updateProgressText()
{
    m_progress->setValue(int(m_fraction * m_progress->maximum()));
    const int total = m_layers->rowCount();
    const int done = m_layers->finished();
    QString text;
    if (m_state == State::Idle && total == 0) {
        text = tr("Not started");
    } else if (m_state == State::Finished || m_state == State::Idle) {
        text = tr("%1 of %2 layers quantized").arg(done).arg(total);
    } else if (m_current.isEmpty()) {
        text = tr("Preparing (calibration windows, layers GPTQ does not touch)…");
    } else {
        text = tr("Layer %1/%2 %3 · block %4/%5 · column %6/%7")
                   .arg(std::max(0, m_currentIndex) + 1)
                   .arg(total)
                   .arg(m_current)
                   .arg(std::min(m_block.blocks, m_block.block + (m_block.column > 0 ? 1 : 0)))
                   .arg(m_block.blocks)
                   .arg(m_block.column)
                   .arg(m_block.cols);
    }
    m_progress->setFormat(text + QStringLiteral("  (%p%)"));
}

double GptqPane::activeSeconds() const
{
    if (!m_clock.isValid()) return 0;
    const qint64 paused = m_pausedMs + (m_pausedSince.isValid() ? m_pausedSince.elapsed() : 0);
    return double(m_clock.elapsed() - paused) / 1000.0;
}

void GptqPane::updateClock()
{
    // A pause takes effect when the worker reaches the gate; step mode pauses it from there.
    if (m_gate && (m_state == State::Pausing || m_state == State::Running) && m_gate->isHolding()) {
        if (!m_pausedSince.isValid()) m_pausedSince.start();
        setState(State::Paused);
        m_status->setText(tr("Paused after %1 of %2 layers. Resume goes on; Cancel keeps the "
                             "finished layers.")
                              .arg(m_layers->finished())
                              .arg(m_layers->rowCount()));
    }
    if (!m_clock.isValid()) return;
    const double seconds = activeSeconds();
    QString text = tr("Elapsed %1").arg(durationText(seconds));
    if (m_state == State::Paused)
        text += tr(" · paused");
    else if (m_state == State::Pausing)
        text += tr(" · pausing at the next block…");
    else if (m_state == State::Running && m_fraction > 0.02 && seconds > 0.5)
        text += tr(" · ETA %1").arg(durationText(seconds * (1 - m_fraction) / m_fraction));
    else if (m_state == State::Cancelling)
        text += tr(" · cancelling…");
    m_clockLabel->setText(text);
}

// ---------------------------------------------------------------------------------------------
// After the run

void GptqPane::onRowActivated(const QModelIndex& index)
{
    if (!index.isValid()) return;
    const auto& rows = m_layers->rows();
    const auto& row = rows[std::size_t(index.row())];
    const QString name = QString::fromStdString(row.plan.tensor);
    if (m_result) {
        m_session->setQuantizedModel(m_result);
        m_session->setShowQuantized(row.status == GptqLayerModel::LayerStatus::Done);
    }
    m_session->selectTensor(name);
}

void GptqPane::evaluate()
{
    const auto model = m_session->model();
    const auto quantized = m_result;
    if (!model || !quantized) return;
    const GptqEvalRequest request = evalRequestFromControls();
    m_sideJob = true;
    updateEnabled();
    m_resultLabel->setText(tr("Evaluating…"));
    JobRunner::Work<ql::EvalResult> work =
        [model, quantized, request](const ql::ProgressFn& progress) -> ql::Result<ql::EvalResult> {
        auto tokenizer = ql::Tokenizer::create(*model);
        if (!tokenizer) return tokenizer.error();
        auto text = ql::readTextFile(request.textFile);
        if (!text) return text.error();
        const auto windows =
            ql::makeLlamaCppChunks(**tokenizer, *text, request.ctx, request.chunks);
        if (windows.empty())
            return ql::makeError(ql::ErrorCode::InvalidArgument,
                                 request.textFile + ": too short for one window of " +
                                     std::to_string(request.ctx) + " tokens");
        auto reference = ql::LlamaModel::create(*model);
        if (!reference) return reference.error();
        auto q = quantizedLlama(*model, *quantized);
        if (!q) return q.error();
        ql::LlamaLogitsSource ref(*reference), src(*q);
        return ql::evaluate(src, windows, &ref, progress);
    };
    m_jobs->run(kEvalTag, this, std::move(work), [this, quantized](ql::Result<ql::EvalResult> r) {
        m_sideJob = false;
        updateEnabled();
        if (!r) {
            const QString message = QString::fromStdString(r.error().message);
            m_resultLabel->setText(tr("Evaluation failed: %1").arg(message.toHtmlEscaped()));
            emit evaluationFinished(false, message);
            return;
        }
        m_eval = *r;
        QString what = quantized->partial ? tr("partial model (%1 of %2 layers GPTQ)")
                                                .arg(m_layers->finished())
                                                .arg(m_layers->rowCount())
                                          : tr("quantized model");
        m_resultLabel->setText(
            tr("<b>PPL %1</b> ± %2 (unquantized %3) · KL mean %4, p99 %5 · same top %6 · "
               "%7 tokens — %8")
                .arg(r->ppl, 0, 'f', 4)
                .arg(r->pplStdError, 0, 'f', 4)
                .arg(r->referencePpl.value_or(0), 0, 'f', 4)
                .arg(r->kl ? r->kl->mean : 0, 0, 'g', 4)
                .arg(r->kl ? r->kl->p99 : 0, 0, 'g', 4)
                .arg(human::percent(r->kl ? r->kl->sameTop : 0, 3))
                .arg(human::count(r->tokens))
                .arg(what));
        emit evaluationFinished(true, {});
    });
}

void GptqPane::showExportDialog()
{
    QString suggestion = QFileInfo(m_session->modelPath()).completeBaseName() +
                         (m_result && m_result->partial ? QStringLiteral("-gptq-partial.gguf")
                                                        : QStringLiteral("-gptq.gguf"));
    const QString path =
        QFileDialog::getSaveFileName(this, tr("Export GGUF"), suggestion, tr("GGUF (*.gguf)"));
    if (!path.isEmpty()) exportGguf(path);
}

void GptqPane::exportGguf(const QString& path)
{
    const auto model = m_session->model();
    const auto quantized = m_result;
    if (!model || !quantized) {
        emit exportFinished(false, tr("Nothing to export"));
        return;
    }
    m_sideJob = true;
    updateEnabled();
    m_resultLabel->setText(tr("Writing %1…").arg(QDir::toNativeSeparators(path)));
    JobRunner::Work<ql::GgufWriteReport> work =
        [model, quantized, file = path.toStdString()](
            const ql::ProgressFn& progress) -> ql::Result<ql::GgufWriteReport> {
        // writeGguf writes "<path>.tmp-<pid>" and renames it over `path` when complete.
        return ql::writeGguf(*model, *quantized, file, {}, progress);
    };
    m_jobs->run(kExportTag, this, std::move(work), [this, path](ql::Result<ql::GgufWriteReport> r) {
        m_sideJob = false;
        updateEnabled();
        const QString message =
            r ? tr("Wrote %1 (%2)").arg(QDir::toNativeSeparators(path), human::bytes(r->fileBytes))
              : tr("Could not write %1: %2")
                    .arg(QDir::toNativeSeparators(path), QString::fromStdString(r.error().message));
        m_resultLabel->setText(message.toHtmlEscaped());
        emit exportFinished(bool(r), message);
    });
}

void GptqPane::browseText(QLineEdit* target)
{
    const QString file = QFileDialog::getOpenFileName(this, tr("Choose Text"),
                                                      QFileInfo(target->text()).absolutePath(),
                                                      tr("Text (*.txt);;All files (*)"));
    if (!file.isEmpty()) target->setText(file);
}
