#include "calibrationpane.h"

#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QMessageBox>
#include <QProgressBar>
#include <QPushButton>
#include <QRegularExpressionValidator>
#include <QSpinBox>
#include <QVBoxLayout>

#include <optional>

#include "appsession.h"
#include "calib/calibrate.h"
#include "calibrationstate.h"
#include "format.h"
#include "jobrunner.h"
#include "model/llama.h"
#include "model/llama_runner.h"
#include "model/tokenizer.h"
#include "session/session.h"

namespace {

const QString kCalibrateTag = QStringLiteral("calibrate");
const QString kSessionTag = QStringLiteral("session");

// A finished calibration and where it ran.
struct CalibrationRun {
    ql::CalibrationResult result;
    ql::DeviceInfo device;        // free/total memory as the run ended
    std::uint64_t peakBytes = 0;  // the GPU runner's peak memory
    // Why the GPU could not run it (out of memory, a driver error): nothing was calibrated, and
    // the pane offers to run it on the CPU.
    std::string gpuFailure;
};

// On the worker: the GPU when there is one and `cpuOnly` is false (the CUDA runner in float32,
// which matches the CPU reference to rounding; weights streamed block by block when the model
// does not fit), else LlamaModel on the CPU. The progress text names the GPU and the memory the
// runner holds.
ql::Result<CalibrationRun> runCalibration(const ql::Model& model,
                                          const ql::CalibrationConfig& config,
                                          const ql::ProgressFn& progress, bool cpuOnly)
{
    auto llama = ql::LlamaModel::create(model);
    if (!llama) return llama.error();
    auto tokenizer = ql::Tokenizer::create(model);
    if (!tokenizer) return tokenizer.error();
    CalibrationRun run;
    auto backend = ql::createBackend(cpuOnly ? ql::BackendKind::Cpu : ql::BackendKind::Auto);
    if (backend && (*backend)->device().isGpu) {
        auto runner = ql::createLlamaRunner(**backend, *llama, ql::Precision::Float32);
        if (runner) {
            const ql::ModelRunner& r0 = **runner;
            auto withMemory = [&](double fraction, std::string_view what) {
                const std::string line =
                    std::string(what) + " · " + r0.device().name + ", " +
                    human::bytes(r0.memoryBytes()).toStdString() + " in use" +
                    (r0.streamsWeights() ? ", weights streamed block by block" : "");
                return ql::reportProgress(progress, fraction, line);
            };
            auto r = ql::calibrate(**runner, **tokenizer, config, withMemory);
            if (r) {
                run.result = std::move(r).value();
                run.device = (*runner)->device();
                run.peakBytes = (*runner)->peakMemoryBytes();
                return run;
            }
            if (r.error().code == ql::ErrorCode::Cancelled) return r.error();
            run.gpuFailure = r.error().message;
        } else {
            run.gpuFailure = runner.error().message;
        }
        run.device = (*backend)->device();
        return run;
    }
    run.device = ql::createCpuBackend()->device();
    auto r = ql::calibrate(*llama, **tokenizer, config, progress, run.device.name);
    if (!r) return r.error();
    run.result = std::move(r).value();
    return run;
}

QString dataDir()
{
    const QString fromEnv = qEnvironmentVariable("QUANTLENS_DATA");
    if (!fromEnv.isEmpty()) return fromEnv;
    return QStringLiteral(QL_DEFAULT_DATA_DIR);
}

QString hessianName(ql::HessianPrecision p)
{
    switch (p) {
        case ql::HessianPrecision::None: return QStringLiteral("none");
        case ql::HessianPrecision::Float32: return QStringLiteral("f32");
        case ql::HessianPrecision::Float64: return QStringLiteral("f64");
    }
    return {};
}

QString durationText(double seconds)
{
    if (!(seconds >= 0) || seconds > 360000) return QStringLiteral("—");
    if (seconds < 10) return QObject::tr("%1 s").arg(seconds, 0, 'f', 1);
    const int s = int(seconds + 0.5);
    if (s < 60) return QObject::tr("%1 s").arg(s);
    return QObject::tr("%1 min %2 s").arg(s / 60).arg(s % 60, 2, 10, QLatin1Char('0'));
}

struct OpenedSession {
    ql::SessionData data;
    std::optional<ql::ModelIdentity> current;  // the open model's identity, when one is open
};

}  // namespace

QString CalibrationPane::defaultTextFile()
{
    const QString path = dataDir() + QStringLiteral("/text/calibration/tiny.txt");
    return QFileInfo::exists(path) ? QFileInfo(path).absoluteFilePath() : QString();
}

CalibrationPane::CalibrationPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
                                 QWidget* parent)
    : QWidget(parent), m_session(session), m_jobs(jobs), m_state(state)
{
    // Text files.
    auto* filesBox = new QGroupBox(tr("Calibration text"), this);
    m_files = new QListWidget(filesBox);
    m_files->setObjectName(QStringLiteral("calibrationFiles"));
    m_files->setSelectionMode(QAbstractItemView::ExtendedSelection);
    m_files->setMinimumHeight(60);
    m_addFiles = new QPushButton(tr("Add…"), filesBox);
    m_removeFiles = new QPushButton(tr("Remove"), filesBox);
    auto* fileButtons = new QHBoxLayout;
    fileButtons->addWidget(m_addFiles);
    fileButtons->addWidget(m_removeFiles);
    fileButtons->addStretch(1);
    auto* filesLayout = new QVBoxLayout(filesBox);
    filesLayout->addWidget(m_files);
    filesLayout->addLayout(fileButtons);
    if (const QString text = defaultTextFile(); !text.isEmpty()) m_files->addItem(text);

    // Parameters.
    auto* paramsBox = new QGroupBox(tr("Windows"), this);
    m_samples = new QSpinBox(paramsBox);
    m_samples->setObjectName(QStringLiteral("calibrationSamples"));
    m_samples->setRange(1, 100000);
    m_samples->setValue(32);
    m_samples->setToolTip(tr("Number of token windows run through the model"));
    m_seqLen = new QSpinBox(paramsBox);
    m_seqLen->setObjectName(QStringLiteral("calibrationSeqLen"));
    m_seqLen->setRange(2, 32768);
    m_seqLen->setValue(256);
    m_seqLen->setToolTip(tr("Tokens per window (the first is BOS)"));
    m_seed = new QLineEdit(QStringLiteral("0"), paramsBox);
    m_seed->setValidator(
        new QRegularExpressionValidator(QRegularExpression(QStringLiteral("[0-9]{1,19}")), m_seed));
    m_seed->setToolTip(
        tr("Seed of the window offsets (std::mt19937_64): a seed gives the same "
           "windows on every machine"));
    m_consecutive = new QCheckBox(tr("Consecutive windows"), paramsBox);
    m_consecutive->setToolTip(
        tr("Take windows one after another from the start of the text "
           "instead of at seeded random offsets"));
    m_hessian = new QComboBox(paramsBox);
    m_hessian->addItem(tr("none"), int(ql::HessianPrecision::None));
    m_hessian->addItem(tr("f32"), int(ql::HessianPrecision::Float32));
    m_hessian->addItem(tr("f64"), int(ql::HessianPrecision::Float64));
    m_hessian->setCurrentIndex(1);
    m_hessian->setToolTip(
        tr("Accumulate the Hessian XᵀX per probe for GPTQ (channels² values "
           "each); none saves memory when only activation statistics are "
           "wanted"));
    auto* form = new QFormLayout(paramsBox);
    form->addRow(tr("Samples:"), m_samples);
    form->addRow(tr("Sequence length:"), m_seqLen);
    form->addRow(tr("Seed:"), m_seed);
    form->addRow(QString(), m_consecutive);
    form->addRow(tr("Hessian:"), m_hessian);

    // Run.
    m_run = new QPushButton(tr("Run calibration"), this);
    m_run->setObjectName(QStringLiteral("calibrationRun"));
    m_cancel = new QPushButton(tr("Cancel"), this);
    m_cancel->setObjectName(QStringLiteral("calibrationCancel"));
    auto* runButtons = new QHBoxLayout;
    runButtons->addWidget(m_run, 1);
    runButtons->addWidget(m_cancel);
    m_progress = new QProgressBar(this);
    m_progress->setObjectName(QStringLiteral("calibrationProgress"));
    m_progress->setRange(0, 1000);
    m_progress->setValue(0);
    m_progress->setTextVisible(false);
    m_progressText = new QLabel(this);
    m_progressText->setObjectName(QStringLiteral("calibrationProgressText"));
    m_progressText->setWordWrap(true);

    // Session.
    auto* sessionBox = new QGroupBox(tr("Session"), this);
    m_save = new QPushButton(tr("Save Session…"), sessionBox);
    m_open = new QPushButton(tr("Open Session…"), sessionBox);
    auto* sessionButtons = new QHBoxLayout(sessionBox);
    sessionButtons->addWidget(m_open);
    sessionButtons->addWidget(m_save);

    m_summary = new QLabel(this);
    m_summary->setObjectName(QStringLiteral("calibrationSummary"));
    m_summary->setWordWrap(true);
    m_summary->setTextFormat(Qt::RichText);
    m_summary->setAlignment(Qt::AlignTop | Qt::AlignLeft);

    auto* layout = new QVBoxLayout(this);
    layout->setContentsMargins(6, 6, 6, 6);
    layout->addWidget(filesBox, 1);
    layout->addWidget(paramsBox);
    layout->addLayout(runButtons);
    layout->addWidget(m_progress);
    layout->addWidget(m_progressText);
    layout->addWidget(m_summary);
    layout->addWidget(sessionBox);
    layout->addStretch(0);

    connect(m_addFiles, &QPushButton::clicked, this, &CalibrationPane::addFiles);
    connect(m_removeFiles, &QPushButton::clicked, this, &CalibrationPane::removeFiles);
    connect(m_files, &QListWidget::itemSelectionChanged, this, &CalibrationPane::updateEnabled);
    connect(m_run, &QPushButton::clicked, this, &CalibrationPane::run);
    connect(m_cancel, &QPushButton::clicked, this, &CalibrationPane::cancel);
    connect(m_save, &QPushButton::clicked, this, &CalibrationPane::showSaveDialog);
    connect(m_open, &QPushButton::clicked, this, &CalibrationPane::showOpenDialog);
    connect(m_session, &AppSession::modelLoaded, this, &CalibrationPane::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, &CalibrationPane::onModelClosed);
    connect(m_jobs, &JobRunner::progress, this, &CalibrationPane::onJobProgress);
    connect(m_state, &CalibrationState::calibrationChanged, this,
            &CalibrationPane::onCalibrationChanged);

    onCalibrationChanged();
    updateEnabled();
}

ql::CalibrationConfig CalibrationPane::configFromControls() const
{
    ql::CalibrationConfig config;
    for (int i = 0; i < m_files->count(); ++i)
        config.textFiles.push_back(m_files->item(i)->text().toStdString());
    config.samples = m_samples->value();
    config.seqLen = m_seqLen->value();
    config.seed = m_seed->text().toULongLong();
    config.consecutive = m_consecutive->isChecked();
    config.hessian = ql::HessianPrecision(m_hessian->currentData().toInt());
    return config;
}

void CalibrationPane::setControls(const ql::CalibrationConfig& config)
{
    m_files->clear();
    for (const std::string& file : config.textFiles) m_files->addItem(QString::fromStdString(file));
    m_samples->setValue(config.samples);
    m_seqLen->setValue(config.seqLen);
    m_seed->setText(QString::number(config.seed));
    m_consecutive->setChecked(config.consecutive);
    m_hessian->setCurrentIndex(m_hessian->findData(int(config.hessian)));
    updateEnabled();
}

void CalibrationPane::run()
{
    startCalibration(configFromControls());
}

void CalibrationPane::startCalibration(const ql::CalibrationConfig& config, bool cpuOnly)
{
    const std::shared_ptr<const ql::Model> model = m_session->model();
    if (!model) {
        emit calibrationFinished(false, tr("No model is open"));
        return;
    }
    if (config.textFiles.empty()) {
        emit calibrationFinished(false, tr("Add at least one text file"));
        return;
    }
    m_plannedTokens = qint64(config.samples) * config.seqLen;
    m_elapsed.start();
    setRunning(true);
    m_progress->setValue(0);
    m_progressText->setText(tr("Preparing the model…"));

    DeviceActivity activity;
    activity.job = tr("calibrating");
    activity.device = m_session->device();
    m_session->setDeviceActivity(activity);
    JobRunner::Work<CalibrationRun> work = [model, config,
                                            cpuOnly](const ql::ProgressFn& progress) {
        return runCalibration(*model, config, progress, cpuOnly);
    };
    m_jobs->run(
        kCalibrateTag, this, std::move(work), [this, config](ql::Result<CalibrationRun> run) {
            setRunning(false);
            DeviceActivity done;
            if (run) {
                done.device = run->device;
                done.peakBytes = run->peakBytes;
            }
            m_session->setDeviceActivity(done);
            if (run && !run->gpuFailure.empty()) {
                // Nothing was lost: the session is as it was. The user decides whether the (much
                // slower) CPU should do it.
                const QString why = QString::fromStdString(run->gpuFailure);
                m_progress->setValue(0);
                m_progressText->setText(tr("The GPU could not calibrate: %1").arg(why));
                const auto answer = QMessageBox::question(
                    this, tr("Calibration"),
                    tr("%1 could not run the calibration:\n\n%2\n\nContinue on the CPU? It is "
                       "slower; the results are the same to float rounding.")
                        .arg(QString::fromStdString(run->device.name), why),
                    QMessageBox::Yes | QMessageBox::No, QMessageBox::Yes);
                if (answer == QMessageBox::Yes) {
                    startCalibration(config, true);
                    return;
                }
                emit calibrationFinished(false, tr("The GPU failed: %1").arg(why));
                return;
            }
            if (!run) {
                const bool cancelled = run.error().code == ql::ErrorCode::Cancelled;
                const QString message = QString::fromStdString(run.error().message);
                m_progress->setValue(0);
                m_progressText->setText(cancelled ? tr("Cancelled; nothing was changed.")
                                                  : tr("Failed: %1").arg(message));
                emit calibrationFinished(false, message);
                return;
            }
            m_progress->setValue(m_progress->maximum());
            ql::CalibrationResult& result = run->result;
            const double seconds = result.seconds;
            const double rate = seconds > 0 ? double(result.tokens) / seconds : 0;
            QString text = tr("Done on %1: %2 tokens in %3 (%4 tokens/s)")
                               .arg(QString::fromStdString(result.device))
                               .arg(human::count(result.tokens))
                               .arg(durationText(seconds))
                               .arg(human::number(rate, 3));
            m_progressText->setText(text);
            m_progressText->setToolTip(text);
            m_state->setResult(std::make_shared<const ql::CalibrationResult>(std::move(result)),
                               tr("calibration run"));
            emit calibrationFinished(true, {});
        });
}

void CalibrationPane::cancel()
{
    m_jobs->cancel(kCalibrateTag);
}

void CalibrationPane::onJobProgress(const QString& tag, double fraction, const QString& text)
{
    if (tag != kCalibrateTag || !m_running) return;
    m_progress->setValue(int(std::clamp(fraction, 0.0, 1.0) * m_progress->maximum()));
    const double seconds = m_elapsed.elapsed() / 1000.0;
    QString line = text;
    if (fraction > 0.001 && seconds > 0.2) {
        const double rate = fraction * double(m_plannedTokens) / seconds;
        const double eta = seconds * (1 - fraction) / fraction;
        line +=
            tr(" — %1 tokens/s, about %2 left").arg(human::number(rate, 3)).arg(durationText(eta));
    }
    m_progressText->setText(line);
}

void CalibrationPane::setRunning(bool running)
{
    m_running = running;
    m_progress->setTextVisible(false);
    updateEnabled();
}

void CalibrationPane::updateEnabled()
{
    const bool model = m_session->hasModel();
    const bool idle = !m_running && !m_sessionBusy;
    m_run->setEnabled(model && idle && m_files->count() > 0);
    m_cancel->setEnabled(m_running);
    m_addFiles->setEnabled(!m_running);
    m_removeFiles->setEnabled(!m_running && !m_files->selectedItems().isEmpty());
    m_save->setEnabled(idle && model && m_state->hasResult());
    m_open->setEnabled(idle);
}

void CalibrationPane::onModelLoaded()
{
    // A calibration belongs to the model that produced it.
    m_state->clear();
    updateEnabled();
}

void CalibrationPane::onModelClosed()
{
    cancel();
    m_state->clear();
    updateEnabled();
}

void CalibrationPane::onCalibrationChanged()
{
    const auto result = m_state->result();
    if (!result) {
        m_summary->setText(tr("<i>No calibration yet.</i>"));
    } else {
        const ql::CalibrationConfig& c = result->config;
        m_summary->setText(
            tr("<b>Current calibration</b> (%1)<br>%2 probes · %3 tokens · %4 × %5 %6 windows · "
               "seed %7 · Hessian %8 · %9 on %10")
                .arg(m_state->source().toHtmlEscaped())
                .arg(result->probes.size())
                .arg(human::count(result->tokens))
                .arg(c.samples)
                .arg(c.seqLen)
                .arg(c.consecutive ? tr("consecutive") : tr("random"))
                .arg(c.seed)
                .arg(hessianName(c.hessian))
                .arg(durationText(result->seconds))
                .arg(QString::fromStdString(result->device).toHtmlEscaped()));
    }
    updateEnabled();
}

void CalibrationPane::addFiles()
{
    const QStringList files = QFileDialog::getOpenFileNames(
        this, tr("Add Calibration Text"), QFileInfo(defaultTextFile()).absolutePath(),
        tr("Text (*.txt);;All files (*)"));
    for (const QString& file : files)
        if (m_files->findItems(file, Qt::MatchExactly).isEmpty()) m_files->addItem(file);
    updateEnabled();
}

void CalibrationPane::removeFiles()
{
    qDeleteAll(m_files->selectedItems());
    updateEnabled();
}

void CalibrationPane::showSaveDialog()
{
    const QString path = QFileDialog::getSaveFileName(this, tr("Save Session"), QString(),
                                                      tr("QuantLens sessions (*.qlsession *.h5)"));
    if (!path.isEmpty()) saveSession(path);
}

void CalibrationPane::showOpenDialog()
{
    const QString path = QFileDialog::getOpenFileName(
        this, tr("Open Session"), QString(), tr("QuantLens sessions (*.qlsession *.h5);;All (*)"));
    if (!path.isEmpty()) openSession(path);
}

void CalibrationPane::saveSession(const QString& path)
{
    const auto model = m_session->model();
    const auto result = m_state->result();
    if (!model || !result) {
        emit sessionSaved(false, tr("Nothing to save"));
        return;
    }
    m_sessionBusy = true;
    updateEnabled();
    m_progressText->setText(tr("Saving the session…"));
    JobRunner::Work<bool> work = [model, result, path = path.toStdString()](
                                     const ql::ProgressFn& progress) -> ql::Result<bool> {
        auto identity = ql::identifyModel(*model, progress);
        if (!identity) return identity.error();
        ql::SessionData data;
        data.model = std::move(identity).value();
        data.calibration = *result;
        // writeSession writes a temporary file and renames it: no half-written session.
        if (ql::Status status = ql::writeSession(path, data, progress); !status)
            return status.error();
        return true;
    };
    m_jobs->run(kSessionTag, this, std::move(work), [this, path](ql::Result<bool> saved) {
        m_sessionBusy = false;
        updateEnabled();
        const QString message = saved ? tr("Saved %1").arg(QDir::toNativeSeparators(path))
                                      : tr("Could not save %1: %2")
                                            .arg(QDir::toNativeSeparators(path),
                                                 QString::fromStdString(saved.error().message));
        m_progressText->setText(message);
        if (!saved && saved.error().code != ql::ErrorCode::Cancelled)
            QMessageBox::warning(this, tr("Save Session"), message);
        emit sessionSaved(bool(saved), message);
    });
}

void CalibrationPane::openSession(const QString& path)
{
    const auto model = m_session->model();
    m_sessionBusy = true;
    updateEnabled();
    m_progressText->setText(tr("Reading the session…"));
    JobRunner::Work<OpenedSession> work =
        [model,
         path = path.toStdString()](const ql::ProgressFn& progress) -> ql::Result<OpenedSession> {
        auto data = ql::readSession(path, progress);
        if (!data) return data.error();
        OpenedSession opened;
        opened.data = std::move(data).value();
        if (model) {
            auto identity = ql::identifyModel(*model, progress);
            if (!identity) return identity.error();
            opened.current = std::move(identity).value();
        }
        return opened;
    };
    m_jobs->run(kSessionTag, this, std::move(work), [this, path](ql::Result<OpenedSession> opened) {
        m_sessionBusy = false;
        updateEnabled();
        if (!opened) {
            const QString message = QString::fromStdString(opened.error().message);
            m_progressText->setText(tr("Could not open the session: %1").arg(message));
            if (opened.error().code != ql::ErrorCode::Cancelled)
                QMessageBox::warning(
                    this, tr("Open Session"),
                    tr("Could not open %1:\n%2").arg(QDir::toNativeSeparators(path), message));
            return;
        }
        if (!opened->data.calibration) {
            m_progressText->setText(tr("The session holds no calibration."));
            return;
        }
        if (!opened->current) {
            QMessageBox::information(this, tr("Open Session"),
                                     tr("No model is open. The session was made with %1.")
                                         .arg(QString::fromStdString(opened->data.model.path)));
        } else if (ql::Status same = ql::checkModelIdentity(opened->data.model, *opened->current);
                   !same) {
            const auto answer = QMessageBox::question(
                this, tr("Model Changed"),
                tr("This session was made with a different model file:\n%1\n\nShow its "
                   "calibration anyway?")
                    .arg(QString::fromStdString(same.error().message)));
            if (answer != QMessageBox::Yes) {
                m_progressText->setText(tr("Session not loaded: the model changed."));
                return;
            }
        }
        setControls(opened->data.calibration->config);
        m_progressText->setText(tr("Opened %1").arg(QDir::toNativeSeparators(path)));
        m_state->setResult(
            std::make_shared<const ql::CalibrationResult>(std::move(*opened->data.calibration)),
            QFileInfo(path).fileName());
    });
}
