#include "sessioncontroller.h"

#include <QAbstractButton>
#include <QDir>
#include <QDockWidget>
#include <QFileDialog>
#include <QFileInfo>
#include <QMainWindow>
#include <QMessageBox>
#include <QSettings>
#include <QStatusBar>

#include "appsession.h"
#include "calibrationstate.h"
#include "jobrunner.h"

namespace {

// Not CalibrationPane's "session": a job with the same tag would cancel the other one.
const QString kSessionTag = QStringLiteral("session-file");
constexpr int kViewStateVersion = 1;  // QMainWindow::saveState's version in window_state

const char* kSelected = "selected_tensor";
const char* kBins = "histogram_bins";
const char* kOutlierRule = "outlier_rule";
const char* kHistogramLog = "histogram_log";
const char* kDocks = "docks_visible";
const char* kGeometry = "window_geometry";
const char* kState = "window_state";

QString fileFilter()
{
    return QObject::tr("QuantLens sessions (*.qlsession *.h5);;All files (*)");
}

bool samePath(const QString& a, const QString& b)
{
    if (a.isEmpty() || b.isEmpty()) return false;
    const QString ca = QFileInfo(a).canonicalFilePath();
    const QString cb = QFileInfo(b).canonicalFilePath();
    return ca.isEmpty() || cb.isEmpty() ? QDir::cleanPath(a) == QDir::cleanPath(b) : ca == cb;
}

QString text(const std::string* value)
{
    return value ? QString::fromStdString(*value) : QString();
}

QByteArray base64(const std::string* value)
{
    return value ? QByteArray::fromBase64(QByteArray::fromStdString(*value)) : QByteArray();
}

}  // namespace

SessionController::SessionController(QMainWindow* window, AppSession* session,
                                     CalibrationState* calibration)
    : QObject(window), m_window(window), m_session(session), m_calibration(calibration)
{
    connect(m_session, &AppSession::loadFinished, this, &SessionController::onModelReady);
}

std::vector<std::pair<std::string, std::string>> SessionController::viewState() const
{
    std::vector<std::pair<std::string, std::string>> view;
    const ql::TensorStatsOptions& o = m_session->statsOptions();
    view.emplace_back(kSelected, m_session->selectedTensor().toStdString());
    view.emplace_back(kBins, std::to_string(o.histogramBins));
    view.emplace_back(kOutlierRule,
                      (o.outliers.mode == ql::OutlierMode::StdMultiple ? "std:" : "median:") +
                          QString::number(o.outliers.k).toStdString());
    if (auto* log = m_window->findChild<QAbstractButton*>(QStringLiteral("histogramLogCheck")))
        view.emplace_back(kHistogramLog, log->isChecked() ? "1" : "0");
    QStringList docks;
    for (const QDockWidget* dock : m_window->findChildren<QDockWidget*>())
        if (dock->isVisible() && !dock->objectName().isEmpty()) docks << dock->objectName();
    view.emplace_back(kDocks, docks.join(QLatin1Char(',')).toStdString());
    view.emplace_back(kGeometry, m_window->saveGeometry().toBase64().toStdString());
    view.emplace_back(kState, m_window->saveState(kViewStateVersion).toBase64().toStdString());
    return view;
}

void SessionController::showSaveDialog()
{
    QSettings settings;
    const QString dir =
        settings.value(QStringLiteral("lastSessionDirectory"), QDir::homePath()).toString();
    QString path = QFileDialog::getSaveFileName(m_window, tr("Save Session"), dir, fileFilter());
    if (path.isEmpty()) return;
    if (QFileInfo(path).suffix().isEmpty()) path += QStringLiteral(".qlsession");
    settings.setValue(QStringLiteral("lastSessionDirectory"), QFileInfo(path).absolutePath());
    saveSession(path);
}

void SessionController::showOpenDialog()
{
    QSettings settings;
    const QString dir =
        settings.value(QStringLiteral("lastSessionDirectory"), QDir::homePath()).toString();
    const QString path =
        QFileDialog::getOpenFileName(m_window, tr("Open Session"), dir, fileFilter());
    if (path.isEmpty()) return;
    settings.setValue(QStringLiteral("lastSessionDirectory"), QFileInfo(path).absolutePath());
    openSession(path);
}

void SessionController::saveSession(const QString& path)
{
    const auto model = m_session->model();
    if (!model || m_busy) {
        emit sessionSaved(false, model ? tr("A session is being read or written")
                                       : tr("No model is open: nothing to save"));
        return;
    }
    // Everything the job writes is copied here; the job never reads the GUI.
    ql::SessionData data;
    if (const auto calibration = m_calibration->result()) data.calibration = *calibration;
    data.layout = m_layout.toStdString();
    if (m_keptForModel == model->path) {
        data.quantization = m_quantization;
        data.evaluations = m_evaluations;
    }
    data.view = viewState();

    m_busy = true;
    m_window->statusBar()->showMessage(tr("Saving the session…"));
    JobRunner::Work<bool> work = [model, data = std::move(data), file = path.toStdString()](
                                     const ql::ProgressFn& progress) mutable -> ql::Result<bool> {
        auto identity = ql::identifyModel(*model, progress);
        if (!identity) return identity.error();
        data.model = std::move(identity).value();
        // writeSession writes a temporary file and renames it: no half-written session.
        if (ql::Status status = ql::writeSession(file, data, progress); !status)
            return status.error();
        return true;
    };
    m_session->jobs()->run(kSessionTag, this, std::move(work), [this, path](ql::Result<bool> ok) {
        m_busy = false;
        const QString native = QDir::toNativeSeparators(path);
        QString message;
        if (ok) {
            message = tr("Saved session %1").arg(native);
        } else if (ok.error().code == ql::ErrorCode::Cancelled) {
            message = tr("Saving the session was cancelled; nothing was written");
        } else {
            message = tr("Could not save %1").arg(native);
            warn(QStringLiteral("sessionErrorBox"), tr("Save Session"), message,
                 QString::fromStdString(ok.error().message));
        }
        m_window->statusBar()->showMessage(message, 8000);
        emit sessionSaved(bool(ok), message);
    });
}

void SessionController::openSession(const QString& path)
{
    if (m_busy) {
        emit sessionOpened(false, tr("A session is being read or written"));
        return;
    }
    m_busy = true;
    m_openPath = path;
    m_opened.reset();
    m_waitingForModel.clear();
    m_restoreTimer.start();
    m_window->statusBar()->showMessage(tr("Opening session %1…").arg(QFileInfo(path).fileName()));
    JobRunner::Work<ql::SessionData> work =
        [file = path.toStdString()](const ql::ProgressFn& progress) {
            return ql::readSession(file, progress);
        };
    m_session->jobs()->run(
        kSessionTag, this, std::move(work), [this](ql::Result<ql::SessionData> data) {
            if (!data) {
                const QString message =
                    tr("Could not open session %1").arg(QDir::toNativeSeparators(m_openPath));
                if (data.error().code != ql::ErrorCode::Cancelled)
                    warn(QStringLiteral("sessionErrorBox"), tr("Open Session"), message,
                         QString::fromStdString(data.error().message));
                return finishOpen(false, message);
            }
            m_opened = std::move(data).value();
            const QString modelPath = QString::fromStdString(m_opened->model.path);
            if (m_session->hasModel() && samePath(m_session->modelPath(), modelPath))
                return checkIdentity();
            if (!QFileInfo::exists(modelPath)) {
                warn(QStringLiteral("sessionModelMissingBox"), tr("Model Not Found"),
                     tr("The session's model is missing"),
                     tr("%1 does not exist. The session's layout and window layout are restored; "
                        "open the model and the session again to see its calibration.")
                         .arg(QDir::toNativeSeparators(modelPath)));
                restoreView(*m_opened);
                m_layout = QString::fromStdString(m_opened->layout);
                return finishOpen(true, tr("Session opened without its model"));
            }
            m_waitingForModel = modelPath;
            m_session->openModel(modelPath);
        });
}

void SessionController::onModelReady(const QString& path, bool ok)
{
    if (m_waitingForModel.isEmpty() || path != m_waitingForModel) return;
    m_waitingForModel.clear();
    if (!ok) {
        // AppSession has reported why; the view that needs no model is still restored.
        if (m_opened) {
            restoreView(*m_opened);
            m_layout = QString::fromStdString(m_opened->layout);
        }
        return finishOpen(false, tr("Session opened, but its model could not be"));
    }
    checkIdentity();
}

void SessionController::checkIdentity()
{
    const auto model = m_session->model();
    JobRunner::Work<ql::ModelIdentity> work = [model](const ql::ProgressFn& progress) {
        return ql::identifyModel(*model, progress);
    };
    m_session->jobs()->run(
        kSessionTag, this, std::move(work), [this](ql::Result<ql::ModelIdentity> current) {
            if (!m_opened) return finishOpen(false, tr("Session lost"));
            QString problem;
            if (!current) {
                problem = QString::fromStdString(current.error().message);
            } else if (ql::Status same = ql::checkModelIdentity(m_opened->model, *current); !same) {
                problem = QString::fromStdString(same.error().message);
            }
            restore(problem);
        });
}

void SessionController::restore(const QString& identityProblem)
{
    ql::SessionData& data = *m_opened;
    const std::string modelPath = m_session->model()->path;
    if (data.calibration) {
        m_calibration->setResult(
            std::make_shared<const ql::CalibrationResult>(std::move(*data.calibration)),
            QFileInfo(m_openPath).fileName());
    }
    m_layout = QString::fromStdString(data.layout);
    m_quantization = std::move(data.quantization);
    m_evaluations = std::move(data.evaluations);
    m_keptForModel = modelPath;
    restoreView(data);
    m_restoreMs = m_restoreTimer.elapsed();
    QString message =
        tr("Session %1 restored in %2 ms").arg(QFileInfo(m_openPath).fileName()).arg(m_restoreMs);
    if (!identityProblem.isEmpty()) {
        message += tr(" — the model file has changed");
        warn(QStringLiteral("modelChangedBox"), tr("Model Changed"),
             tr("The model file has changed since this session was saved"),
             tr("%1\n\nThe session's calibration, layout and view were restored, but statistics "
                "and results in it describe the old file.")
                 .arg(identityProblem));
        emit modelChanged(identityProblem);
    }
    finishOpen(true, message);
}

void SessionController::restoreView(const ql::SessionData& data)
{
    if (const QByteArray geometry = base64(data.viewValue(kGeometry)); !geometry.isEmpty())
        m_window->restoreGeometry(geometry);
    if (const QByteArray state = base64(data.viewValue(kState)); !state.isEmpty())
        m_window->restoreState(state, kViewStateVersion);
    if (const std::string* docks = data.viewValue(kDocks)) {
        const QStringList visible = QString::fromStdString(*docks).split(QLatin1Char(','));
        for (QDockWidget* dock : m_window->findChildren<QDockWidget*>())
            if (!dock->objectName().isEmpty())
                dock->setVisible(visible.contains(dock->objectName()));
    }
    if (const std::string* log = data.viewValue(kHistogramLog)) {
        if (auto* box = m_window->findChild<QAbstractButton*>(QStringLiteral("histogramLogCheck")))
            box->setChecked(*log == "1");
    }
    ql::TensorStatsOptions options = m_session->statsOptions();
    if (const int bins = text(data.viewValue(kBins)).toInt(); bins > 0)
        options.histogramBins = bins;
    if (const QString rule = text(data.viewValue(kOutlierRule)); !rule.isEmpty()) {
        const QStringList parts = rule.split(QLatin1Char(':'));
        bool ok = false;
        const double k = parts.value(1).toDouble(&ok);
        if (ok && k > 0) {
            options.outliers.mode = parts[0] == QLatin1String("std")
                                        ? ql::OutlierMode::StdMultiple
                                        : ql::OutlierMode::MedianMultiple;
            options.outliers.k = k;
        }
    }
    m_session->setStatsOptions(options);
    const QString selected = text(data.viewValue(kSelected));
    if (m_session->hasModel() && !selected.isEmpty()) m_session->selectTensor(selected);
}

void SessionController::finishOpen(bool ok, const QString& message)
{
    m_busy = false;
    m_opened.reset();
    m_window->statusBar()->showMessage(message, 15000);
    emit sessionOpened(ok, message);
}

void SessionController::warn(const QString& objectName, const QString& title, const QString& text,
                             const QString& details)
{
    // Non-modal: the session goes on behind the message.
    auto* box = new QMessageBox(QMessageBox::Warning, title, text, QMessageBox::Ok, m_window);
    box->setObjectName(objectName);
    box->setInformativeText(details);
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}
