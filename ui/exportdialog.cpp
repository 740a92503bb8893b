#include "exportdialog.h"

#include <QComboBox>
#include <QCoreApplication>
#include <QDialogButtonBox>
#include <QDir>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QProgressBar>
#include <QPushButton>
#include <QTableView>
#include <QTimer>
#include <QVBoxLayout>

#include <algorithm>

#include "calib/calibration.h"
#include "export/gguf_writer.h"
#include "format.h"
#include "jobrunner.h"
#include "layout/layout.h"
#include "model/model.h"
#include "quant/format.h"
#include "quant/quantize_model.h"

namespace {

const QString kExportTag = QStringLiteral("export");

// Everything the job needs, copied from the widgets before it starts.
struct ExportRequest {
    ql::ExportTarget target = ql::ExportTarget::Gguf;
    ql::HfExportOptions options;
    std::string layout;
    std::string path;
};

struct ExportOutcome {
    QString path;
    std::uint64_t bytes = 0;
    double seconds = 0;
    QStringList lines;  // files, notes and warnings, for the status
};

ql::ExportTarget coreTarget(ExportDialog::Target t)
{
    switch (t) {
        case ExportDialog::Target::Gguf: return ql::ExportTarget::Gguf;
        case ExportDialog::Target::Gptq: return ql::ExportTarget::GptqSafetensors;
        default: return ql::ExportTarget::FakeQuantSafetensors;
    }
}

ql::HfExportOptions optionsFor(ExportDialog::Target t, bool requantize)
{
    ql::HfExportOptions o;
    o.producer = (QStringLiteral("QuantLens ") + QCoreApplication::applicationVersion())
                     .trimmed()
                     .toStdString();
    o.floatType =
        t == ExportDialog::Target::FakeQuantBF16 ? ql::TensorType::BF16 : ql::TensorType::F16;
    o.fallback = requantize ? ql::GptqFallback::Requantize : ql::GptqFallback::KeepFloat;
    return o;
}

// The plan a layout gives the model, with the checks the CLI runs before any work.
ql::Result<ql::LayoutPlan> planFor(const ql::Model& model, const std::string& spec,
                                   const ql::CalibrationResult* calibration,
                                   ql::Layout* layoutOut = nullptr)
{
    auto layout = ql::Layout::fromArgument(spec);
    if (!layout) return layout.error();
    auto plan = layout->resolve(model);
    if (!plan) return plan.error();
    if (auto ok = ql::checkMethodsAvailable(*layout, *plan); !ok) return ok.error();
    if (auto ok = ql::checkGptqCalibration(model, *plan, calibration); !ok) {
        ql::Error e = ok.error();
        if (!calibration) e.message += " (calibrate, or open a session with a calibration)";
        return e;
    }
    if (layoutOut) *layoutOut = std::move(layout).value();
    return plan;
}

ql::Result<ExportOutcome> runExport(const ql::Model& model,
                                    const ql::CalibrationResult* calibration,
                                    const ExportRequest& request, const ql::ProgressFn& progress)
{
    ql::Layout layout;
    auto plan = planFor(model, request.layout, calibration, &layout);
    if (!plan) return plan.error();
    ExportOutcome out;
    out.path = QString::fromStdString(request.path);
    if (request.target == ql::ExportTarget::Gguf) {
        ql::GgufExportOptions g;
        g.dequantType = request.options.ggufDequantType;
        g.producer = request.options.producer;
        auto r = ql::exportGguf(model, layout, request.path, calibration, g, progress);
        if (!r) return r.error();
        out.bytes = r->fileBytes;
        out.seconds = r->seconds;
        for (const auto& n : r->notes) out.lines << QString::fromStdString(n);
        for (const auto& w : r->warnings) out.lines << QObject::tr("warning: %1").arg(w.c_str());
        return out;
    }
    auto part = [&progress](double from, double to) -> ql::ProgressFn {
        return [progress, from, to](double f, std::string_view text) {
            return ql::reportProgress(progress, from + (to - from) * f, text);
        };
    };
    auto quantized = ql::quantizeModel(model, layout, calibration, part(0.0, 0.8));
    if (!quantized) return quantized.error();
    auto r =
        request.target == ql::ExportTarget::GptqSafetensors
            ? ql::writeGptqFolder(model, *quantized, request.path, request.options, part(0.8, 1.0))
            : ql::writeFakeQuantFolder(model, *quantized, request.path, request.options,
                                       part(0.8, 1.0));
    if (!r) return r.error();
    out.bytes = r->totalBytes;
    out.seconds = r->seconds + quantized->seconds;
    for (const auto& [name, bytes] : r->files)
        out.lines << QStringLiteral("%1  %2").arg(QString::fromStdString(name),
                                                  human::bytes(bytes));
    for (const auto& n : r->notes) out.lines << QString::fromStdString(n);
    for (const auto& w : r->warnings) out.lines << QObject::tr("warning: %1").arg(w.c_str());
    return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ExportIssueModel

void ExportIssueModel::setIssues(std::vector<ql::ExportIssue> issues)
{
    beginResetModel();
    m_issues = std::move(issues);
    endResetModel();
}

int ExportIssueModel::rowCount(const QModelIndex& parent) const
{
    return parent.isValid() ? 0 : int(m_issues.size());
}

int ExportIssueModel::columnCount(const QModelIndex& parent) const
{
    return parent.isValid() ? 0 : ColumnCount;
}

QVariant ExportIssueModel::data(const QModelIndex& index, int role) const
{
    if (!index.isValid() || index.row() >= int(m_issues.size())) return {};
    if (role != Qt::DisplayRole && role != Qt::ToolTipRole) return {};
    const ql::ExportIssue& issue = m_issues[std::size_t(index.row())];
    switch (index.column()) {
        case Tensor: return QString::fromStdString(issue.tensor);
        case Wanted: return QString::fromStdString(issue.wanted);
        case Problem: return QString::fromStdString(issue.problem);
        case Fallback: return QString::fromStdString(issue.fallback);
        default: return {};
    }
}

QVariant ExportIssueModel::headerData(int section, Qt::Orientation orientation, int role) const
{
    if (orientation != Qt::Horizontal || role != Qt::DisplayRole) return {};
    switch (section) {
        case Tensor: return tr("Tensor");
        case Wanted: return tr("Planned");
        case Problem: return tr("Cannot represent");
        case Fallback: return tr("Written as");
        default: return {};
    }
}

// ---------------------------------------------------------------------------------------------
// ExportDialog

ExportDialog::ExportDialog(std::shared_ptr<const ql::Model> model,
                           std::shared_ptr<const ql::CalibrationResult> calibration,
                           JobRunner* jobs, QWidget* parent)
    : QDialog(parent),
      m_model(std::move(model)),
      m_calibration(std::move(calibration)),
      m_jobs(jobs)
{
    setObjectName(QStringLiteral("exportDialog"));
    setWindowTitle(tr("Export Quantized Model"));

    m_target = new QComboBox(this);
    m_target->setObjectName(QStringLiteral("exportTarget"));
    m_target->addItem(tr("GGUF (llama.cpp)"));
    m_target->addItem(tr("GPTQ safetensors (Hugging Face)"));
    m_target->addItem(tr("Fake-quant safetensors, F16"));
    m_target->addItem(tr("Fake-quant safetensors, BF16"));

    m_fallback = new QComboBox(this);
    m_fallback->setObjectName(QStringLiteral("exportFallback"));
    m_fallback->addItem(tr("Keep decoded values as a float layer"));
    m_fallback->addItem(tr("Re-quantize with RTN to the checkpoint's format"));
    m_fallback->setToolTip(
        tr("GPTQ holds one INT format per checkpoint: what a layer in another format becomes"));

    m_layout = new QLineEdit(defaultLayout(), this);
    m_layout->setObjectName(QStringLiteral("exportLayout"));
    m_layout->setToolTip(tr("Layout rules as --layout takes them, e.g. \"*=q4_k; blk.0.*=q8_0\""));

    m_path = new QLineEdit(this);
    m_path->setObjectName(QStringLiteral("exportPath"));
    m_browse = new QPushButton(tr("Browse…"), this);
    auto* pathRow = new QHBoxLayout;
    pathRow->addWidget(m_path, 1);
    pathRow->addWidget(m_browse);

    auto* form = new QFormLayout;
    form->addRow(tr("&Target:"), m_target);
    form->addRow(tr("GPTQ &fallback:"), m_fallback);
    form->addRow(tr("&Layout:"), m_layout);
    auto* outputLabel = new QLabel(tr("&Output:"), this);
    outputLabel->setBuddy(m_path);
    form->addRow(outputLabel, pathRow);

    m_summary = new QLabel(this);
    m_summary->setObjectName(QStringLiteral("exportSummary"));
    m_summary->setWordWrap(true);
    m_summary->setTextInteractionFlags(Qt::TextSelectableByMouse);
    m_issues = new ExportIssueModel(this);
    m_table = new QTableView(this);
    m_table->setObjectName(QStringLiteral("exportIssues"));
    m_table->setModel(m_issues);
    m_table->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_table->setAlternatingRowColors(true);
    m_table->verticalHeader()->hide();
    m_table->horizontalHeader()->setStretchLastSection(true);
    m_table->horizontalHeader()->setSectionResizeMode(QHeaderView::Interactive);
    m_table->setWordWrap(false);
    m_table->verticalHeader()->setDefaultSectionSize(fontMetrics().height() + 8);
    m_notes = new QLabel(this);
    m_notes->setObjectName(QStringLiteral("exportNotes"));
    m_notes->setWordWrap(true);
    m_notes->setTextInteractionFlags(Qt::TextSelectableByMouse);

    m_progress = new QProgressBar(this);
    m_progress->setObjectName(QStringLiteral("exportProgress"));
    m_progress->setRange(0, 1000);
    m_progress->setValue(0);
    m_progress->setTextVisible(true);
    m_status = new QLabel(this);
    m_status->setObjectName(QStringLiteral("exportStatus"));
    m_status->setWordWrap(true);
    m_status->setTextInteractionFlags(Qt::TextSelectableByMouse);

    m_buttons = new QDialogButtonBox(this);
    m_export = m_buttons->addButton(tr("&Export"), QDialogButtonBox::AcceptRole);
    m_export->setObjectName(QStringLiteral("exportButton"));
    m_cancel = m_buttons->addButton(tr("&Cancel Export"), QDialogButtonBox::ActionRole);
    m_cancel->setObjectName(QStringLiteral("cancelExportButton"));
    m_buttons->addButton(QDialogButtonBox::Close);

    auto* layout = new QVBoxLayout(this);
    layout->addLayout(form);
    layout->addWidget(m_summary);
    layout->addWidget(m_table, 1);
    layout->addWidget(m_notes);
    layout->addWidget(m_progress);
    layout->addWidget(m_status);
    layout->addWidget(m_buttons);

    m_recheck = new QTimer(this);
    m_recheck->setSingleShot(true);
    m_recheck->setInterval(250);
    connect(m_recheck, &QTimer::timeout, this, &ExportDialog::refreshCompatibility);
    connect(m_target, &QComboBox::currentIndexChanged, this, &ExportDialog::onTargetChanged);
    connect(m_fallback, &QComboBox::currentIndexChanged, this, &ExportDialog::refreshCompatibility);
    connect(m_layout, &QLineEdit::textChanged, m_recheck, qOverload<>(&QTimer::start));
    connect(m_path, &QLineEdit::textEdited, this, [this] { m_pathEdited = true; });
    connect(m_path, &QLineEdit::textChanged, this, &ExportDialog::updateEnabled);
    connect(m_browse, &QPushButton::clicked, this, &ExportDialog::browse);
    connect(m_export, &QPushButton::clicked, this, &ExportDialog::startExport);
    connect(m_cancel, &QPushButton::clicked, this, &ExportDialog::cancelExport);
    connect(m_buttons, &QDialogButtonBox::rejected, this, &ExportDialog::reject);
    connect(m_jobs, &JobRunner::progress, this, &ExportDialog::onJobProgress);

    resize(860, 560);
    onTargetChanged();
    setExporting(false);
}

ExportDialog::~ExportDialog()
{
    if (m_exporting) m_jobs->cancel(kExportTag);
}

ExportDialog::Target ExportDialog::target() const
{
    return Target(m_target->currentIndex());
}

void ExportDialog::setTarget(Target target)
{
    m_target->setCurrentIndex(int(target));
}

QString ExportDialog::layoutText() const
{
    return m_layout->text().trimmed();
}

void ExportDialog::setLayoutText(const QString& text)
{
    m_layout->setText(text.trimmed().isEmpty() ? defaultLayout() : text.trimmed());
    refreshCompatibility();
}

QString ExportDialog::outputPath() const
{
    return m_path->text().trimmed();
}

void ExportDialog::setOutputPath(const QString& path)
{
    m_path->setText(path);
    m_pathEdited = true;
}

QString ExportDialog::checkMessage() const
{
    return m_summary->text();
}

QString ExportDialog::statusText() const
{
    return m_status->text();
}

QString ExportDialog::suggestedPath(Target target) const
{
    if (!m_model) return {};
    const QFileInfo source(QString::fromStdString(m_model->path));
    const QString dir = source.absolutePath();
    const QString stem = source.isDir() ? source.fileName() : source.completeBaseName();
    switch (target) {
        case Target::Gguf: return dir + QStringLiteral("/%1-quantized.gguf").arg(stem);
        case Target::Gptq: return dir + QStringLiteral("/%1-gptq").arg(stem);
        case Target::FakeQuantF16: return dir + QStringLiteral("/%1-fakequant-f16").arg(stem);
        case Target::FakeQuantBF16: return dir + QStringLiteral("/%1-fakequant-bf16").arg(stem);
    }
    return {};
}

void ExportDialog::onTargetChanged()
{
    if (!m_pathEdited) m_path->setText(suggestedPath(target()));
    m_fallback->setEnabled(target() == Target::Gptq && !m_exporting);
    refreshCompatibility();
}

void ExportDialog::browse()
{
    QString path;
    if (target() == Target::Gguf) {
        path = QFileDialog::getSaveFileName(this, tr("Export GGUF"), outputPath(),
                                            tr("GGUF (*.gguf)"));
    } else {
        path = QFileDialog::getExistingDirectory(this, tr("Export to Folder"), outputPath());
    }
    if (!path.isEmpty()) setOutputPath(path);
}

void ExportDialog::refreshCompatibility()
{
    m_recheck->stop();
    m_compat.reset();
    std::vector<ql::ExportIssue> issues;
    QStringList notes;
    if (!m_model) {
        m_summary->setText(tr("No model is open."));
    } else {
        // Metadata only (resolving rules, no weights read): cheap enough for the UI thread.
        const auto plan = planFor(*m_model, layoutText().toStdString(), m_calibration.get());
        auto compat = plan ? ql::checkExportCompatibility(
                                 coreTarget(target()), *m_model, *plan,
                                 optionsFor(target(), m_fallback->currentIndex() == 1))
                           : ql::Result<ql::ExportCompatibility>(plan.error());
        if (!compat) {
            m_summary->setText(
                tr("<b>Cannot export:</b> %1")
                    .arg(QString::fromStdString(compat.error().message).toHtmlEscaped()));
        } else {
            m_compat = std::move(compat).value();
            issues = m_compat->issues;
            m_summary->setText(
                issues.empty()
                    ? tr("%1 stores every tensor as planned.")
                          .arg(ql::exportTargetName(m_compat->target))
                    : tr("%1 cannot store %n tensor(s) as planned; the fallback taken for each:",
                         nullptr, int(issues.size()))
                          .arg(ql::exportTargetName(m_compat->target)));
            for (const auto& n : m_compat->notes) notes << QString::fromStdString(n);
            for (const auto& w : m_compat->warnings)
                notes << tr("Warning: %1").arg(QString::fromStdString(w));
            // The layout's own fallbacks, unless the check already names them (GGUF does).
            const bool named =
                !plan->fallbacks.empty() &&
                std::any_of(notes.begin(), notes.end(), [&](const QString& n) {
                    return n.startsWith(QString::fromStdString(plan->fallbacks.front().tensor) +
                                        QLatin1Char(':'));
                });
            if (!plan->fallbacks.empty() && !named) {
                const ql::LayoutFallback& f = plan->fallbacks.front();
                notes << tr("Layout: %n tensor(s) fall back before export, e.g. %1: %2 → %3 (%4)",
                            nullptr, int(plan->fallbacks.size()))
                             .arg(QString::fromStdString(f.tensor),
                                  QString::fromStdString(ql::formatToString(f.wanted)),
                                  QString::fromStdString(ql::formatToString(f.got)),
                                  QString::fromStdString(f.why));
            }
            for (const auto& w : plan->warnings)
                notes << tr("Layout: %1").arg(QString::fromStdString(w));
        }
    }
    m_issues->setIssues(std::move(issues));
    m_table->resizeColumnsToContents();
    // Per-tensor warnings can run to hundreds of lines: the label shows a few, the tooltip all.
    constexpr int kShownNotes = 5;
    QStringList shown = notes.mid(0, kShownNotes);
    if (notes.size() > kShownNotes)
        shown << tr("… and %n more (hover to see all)", nullptr, int(notes.size()) - kShownNotes);
    m_notes->setText(shown.join(QLatin1Char('\n')));
    m_notes->setToolTip(notes.join(QLatin1Char('\n')));
    m_notes->setVisible(!notes.isEmpty());
    updateEnabled();
}

void ExportDialog::startExport()
{
    refreshCompatibility();
    if (m_exporting || !m_model || !m_compat) return;
    const QString path = outputPath();
    if (path.isEmpty()) return;
    ExportRequest request;
    request.target = coreTarget(target());
    request.options = optionsFor(target(), m_fallback->currentIndex() == 1);
    request.layout = layoutText().toStdString();
    request.path = QDir::cleanPath(QFileInfo(path).absoluteFilePath()).toStdString();

    setExporting(true);
    m_progress->setValue(0);
    m_status->setText(tr("Exporting to %1…").arg(QDir::toNativeSeparators(path)));
    JobRunner::Work<ExportOutcome> work = [model = m_model, calibration = m_calibration,
                                           request](const ql::ProgressFn& progress) {
        return runExport(*model, calibration.get(), request, progress);
    };
    m_jobs->run(kExportTag, this, std::move(work), [this](ql::Result<ExportOutcome> done) {
        setExporting(false);
        QString message;
        if (done) {
            m_progress->setValue(1000);
            message = tr("Wrote %1 (%2, %3 s)")
                          .arg(QDir::toNativeSeparators(done->path), human::bytes(done->bytes))
                          .arg(done->seconds, 0, 'f', 2);
            m_status->setText(message + (done->lines.isEmpty()
                                             ? QString()
                                             : QStringLiteral("\n") + done->lines.join('\n')));
        } else if (done.error().code == ql::ErrorCode::Cancelled) {
            m_progress->setValue(0);
            message = tr("Export cancelled; nothing was written.");
            m_status->setText(message);
        } else {
            m_progress->setValue(0);
            message = tr("Export failed: %1").arg(QString::fromStdString(done.error().message));
            m_status->setText(message);
            auto* box = new QMessageBox(QMessageBox::Warning, tr("Export Failed"),
                                        tr("Export failed"), QMessageBox::Ok, this);
            box->setObjectName(QStringLiteral("exportErrorBox"));
            box->setInformativeText(QString::fromStdString(done.error().message));
            box->setAttribute(Qt::WA_DeleteOnClose);
            box->open();
        }
        emit exportFinished(bool(done), message);
    });
}

void ExportDialog::cancelExport()
{
    if (m_exporting) m_jobs->cancel(kExportTag);
}

void ExportDialog::reject()
{
    cancelExport();
    QDialog::reject();
}

void ExportDialog::onJobProgress(const QString& tag, double fraction, const QString& text)
{
    if (tag != kExportTag || !m_exporting) return;
    m_progress->setValue(int(std::clamp(fraction, 0.0, 1.0) * 1000));
    m_progress->setFormat(text.isEmpty() ? QStringLiteral("%p%") : text + QStringLiteral(" %p%"));
}

void ExportDialog::setExporting(bool exporting)
{
    m_exporting = exporting;
    m_progress->setFormat(QStringLiteral("%p%"));
    m_progress->setVisible(exporting);
    updateEnabled();
}

void ExportDialog::updateEnabled()
{
    const bool idle = !m_exporting;
    m_target->setEnabled(idle);
    m_fallback->setEnabled(idle && target() == Target::Gptq);
    m_layout->setEnabled(idle);
    m_path->setEnabled(idle);
    m_browse->setEnabled(idle);
    m_export->setEnabled(idle && m_model && m_compat && !outputPath().isEmpty());
    m_cancel->setEnabled(m_exporting);
}
