#include "mainwindow.h"

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QDir>
#include <QDockWidget>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QLabel>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QProgressBar>
#include <QScrollArea>
#include <QSettings>
#include <QStatusBar>
#include <QTimer>
#include <QToolBar>
#include <QToolButton>
#include <QTreeView>

#include "activationspane.h"
#include "appsession.h"
#include "calibrationpane.h"
#include "calibrationstate.h"
#include "exportdialog.h"
#include "generatepane.h"
#include "gptqpane.h"
#include "gridpane.h"
#include "jobrunner.h"
#include "format.h"
#include "icons.h"
#include "layoutpane.h"
#include "metadatapane.h"
#include "modeltree.h"
#include "sessioncontroller.h"
#include "smoothquantpane.h"
#include "weightspane.h"

namespace {

constexpr int kStateVersion = 7;  // 5: GPTQ Run, 6: SmoothQuant, 7: Layout docks
constexpr int kMaxRecentFiles = 10;
const char* kRecentKey = "recentFiles";

QString modelFileFilter()
{
    return QObject::tr(
        "Models (*.gguf *.bin *.safetensors);;GGUF (*.gguf);;"
        "safetensors (*.safetensors);;llama2.c checkpoints (*.bin);;All files (*)");
}

// Tall panes scroll inside their dock instead of imposing their full height as the dock's
// minimum: without this the tabbed bottom docks pushed the window past 1400 × 900.
QScrollArea* scrollable(QWidget* pane)
{
    auto* area = new QScrollArea;
    area->setWidget(pane);
    area->setWidgetResizable(true);
    area->setFrameShape(QFrame::NoFrame);
    return area;
}

}  // namespace

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent), m_session(new AppSession(this))
{
    setObjectName(QStringLiteral("MainWindow"));
    setWindowIcon(icons::app());
    setAcceptDrops(true);
    setDockNestingEnabled(true);

    m_weightsPane = new WeightsPane(m_session, this);
    m_weightsPane->setObjectName(QStringLiteral("weightsPane"));
    setCentralWidget(m_weightsPane);

    createDocks();
    createActions();
    createStatusBar();

    connect(m_session, &AppSession::modelLoaded, this, &MainWindow::onModelLoaded);
    connect(m_session, &AppSession::modelClosed, this, &MainWindow::onModelClosed);
    connect(m_session, &AppSession::loadStarted, this, &MainWindow::onLoadStarted);
    connect(m_session, &AppSession::loadFinished, this, &MainWindow::onLoadFinished);
    connect(m_session, &AppSession::errorOccurred, this, &MainWindow::onError);
    connect(m_session, &AppSession::warningsOccurred, this, &MainWindow::onWarnings);
    connect(m_session, &AppSession::busyChanged, this, &MainWindow::onBusyChanged);
    connect(m_session, &AppSession::progress, this, &MainWindow::onProgress);
    connect(m_session, &AppSession::deviceChanged, this, &MainWindow::onDeviceChanged);

    resize(1400, 900);
    resizeDocks({m_treeDock}, {440}, Qt::Horizontal);
    resizeDocks({m_activationsDock}, {360}, Qt::Vertical);
    m_defaultState = saveState(kStateVersion);
    readSettings();
    updateTitle();
    m_modelTree->view()->setFocus();
    m_session->detectDevice();
}

MainWindow::~MainWindow() = default;

// ---------------------------------------------------------------------------------------------
// Construction

void MainWindow::createDocks()
{
    m_modelTree = new ModelTree(m_session, this);
    m_treeDock = new QDockWidget(tr("Model"), this);
    m_treeDock->setObjectName(QStringLiteral("modelDock"));
    m_treeDock->setWidget(m_modelTree);
    addDockWidget(Qt::LeftDockWidgetArea, m_treeDock);

    m_metadataPane = new MetadataPane(m_session, this);
    m_metadataDock = new QDockWidget(tr("Metadata"), this);
    m_metadataDock->setObjectName(QStringLiteral("metadataDock"));
    m_metadataDock->setWidget(m_metadataPane);
    addDockWidget(Qt::LeftDockWidgetArea, m_metadataDock);
    tabifyDockWidget(m_treeDock, m_metadataDock);

    m_calibration = new CalibrationState(this);
    m_calibrationPane = new CalibrationPane(m_session, m_session->jobs(), m_calibration, this);
    m_calibrationDock = new QDockWidget(tr("Calibration"), this);
    m_calibrationDock->setObjectName(QStringLiteral("calibrationDock"));
    m_calibrationDock->setWidget(scrollable(m_calibrationPane));
    addDockWidget(Qt::LeftDockWidgetArea, m_calibrationDock);
    tabifyDockWidget(m_treeDock, m_calibrationDock);

    m_activationsPane = new ActivationsPane(m_session, m_session->jobs(), m_calibration, this);
    m_activationsDock = new QDockWidget(tr("Activations"), this);
    m_activationsDock->setObjectName(QStringLiteral("activationsDock"));
    m_activationsDock->setWidget(scrollable(m_activationsPane));
    addDockWidget(Qt::BottomDockWidgetArea, m_activationsDock);

    m_gridPane = new GridPane(m_session, m_session->jobs(), m_calibration, this);
    m_gridDock = new QDockWidget(tr("Quantization Grids"), this);
    m_gridDock->setObjectName(QStringLiteral("gridDock"));
    m_gridDock->setWidget(scrollable(m_gridPane));
    addDockWidget(Qt::BottomDockWidgetArea, m_gridDock);
    tabifyDockWidget(m_activationsDock, m_gridDock);

    m_generatePane = new GeneratePane(m_session, this);
    m_smoothQuantPane = new SmoothQuantPane(m_session, m_session->jobs(), m_calibration, this);
    m_smoothQuantDock = new QDockWidget(tr("SmoothQuant"), this);
    m_smoothQuantDock->setObjectName(QStringLiteral("smoothQuantDock"));
    m_smoothQuantDock->setWidget(scrollable(m_smoothQuantPane));
    addDockWidget(Qt::BottomDockWidgetArea, m_smoothQuantDock);
    tabifyDockWidget(m_gridDock, m_smoothQuantDock);

    m_generateDock = new QDockWidget(tr("Try the Model"), this);
    m_generateDock->setObjectName(QStringLiteral("generateDock"));
    m_generateDock->setWidget(m_generatePane);
    addDockWidget(Qt::BottomDockWidgetArea, m_generateDock);
    tabifyDockWidget(m_gridDock, m_generateDock);

    m_gptqPane = new GptqPane(m_session, m_session->jobs(), m_calibration, this);
    m_gptqDock = new QDockWidget(tr("GPTQ Run"), this);
    m_gptqDock->setObjectName(QStringLiteral("gptqDock"));
    m_gptqDock->setWidget(scrollable(m_gptqPane));
    addDockWidget(Qt::BottomDockWidgetArea, m_gptqDock);
    tabifyDockWidget(m_generateDock, m_gptqDock);
    m_layoutPane = new LayoutPane(m_session, m_session->jobs(), this);
    m_layoutDock = new QDockWidget(tr("Layout"), this);
    m_layoutDock->setObjectName(QStringLiteral("layoutDock"));
    m_layoutDock->setWidget(scrollable(m_layoutPane));
    addDockWidget(Qt::BottomDockWidgetArea, m_layoutDock);
    tabifyDockWidget(m_generateDock, m_layoutDock);
    m_treeDock->raise();
    m_gridDock->raise();
}

void MainWindow::createActions()
{
    QMenu* file = menuBar()->addMenu(tr("&File"));
    QAction* open =
        file->addAction(icons::openModel(), tr("&Open Model…"), this, &MainWindow::showOpenDialog);
    open->setShortcut(QKeySequence::Open);
    open->setToolTip(tr("Open a GGUF file, a safetensors file or a llama2.c checkpoint"));
    QAction* openFolder = file->addAction(icons::openFolder(), tr("Open &Folder…"), this,
                                          &MainWindow::showOpenFolderDialog);
    openFolder->setShortcut(QKeySequence(tr("Ctrl+Shift+O")));
    openFolder->setToolTip(tr("Open a Hugging Face model folder (config.json + safetensors)"));
    m_recentMenu = file->addMenu(tr("Open &Recent"));
    file->addSeparator();
    m_closeAction = file->addAction(tr("&Close Model"), m_session, &AppSession::closeModel);
    m_closeAction->setShortcut(QKeySequence::Close);
    m_closeAction->setEnabled(false);
    addSessionActions(file);
    file->addSeparator();
    QAction* quit = file->addAction(tr("&Quit"), this, &QWidget::close);
    quit->setShortcut(QKeySequence::Quit);

    QMenu* view = menuBar()->addMenu(tr("&View"));
    view->addAction(m_treeDock->toggleViewAction());
    view->addAction(m_metadataDock->toggleViewAction());
    view->addAction(m_calibrationDock->toggleViewAction());
    view->addAction(m_activationsDock->toggleViewAction());
    view->addAction(m_gridDock->toggleViewAction());
    view->addAction(m_smoothQuantDock->toggleViewAction());
    view->addAction(m_generateDock->toggleViewAction());
    view->addAction(m_gptqDock->toggleViewAction());
    view->addAction(m_layoutDock->toggleViewAction());
    view->addSeparator();
    view->addAction(tr("&Reset Layout"), this, &MainWindow::resetLayout);

    QMenu* quantize = menuBar()->addMenu(tr("&Quantize"));
    QAction* gptq = quantize->addAction(tr("&GPTQ Run…"), this, [this] {
        m_gptqDock->show();
        m_gptqDock->raise();
    });
    gptq->setToolTip(tr("Run GPTQ over the model and watch it layer by layer"));
    quantize->addSeparator();
    quantize->addAction(m_gptqDock->toggleViewAction());

    QMenu* help = menuBar()->addMenu(tr("&Help"));
    help->addAction(tr("&About QuantLens"), this, &MainWindow::showAbout);
    help->addAction(tr("About &Qt"), qApp, &QApplication::aboutQt);

    QToolBar* toolbar = addToolBar(tr("Main"));
    toolbar->setObjectName(QStringLiteral("mainToolBar"));
    toolbar->setMovable(false);
    toolbar->setToolButtonStyle(Qt::ToolButtonTextBesideIcon);
    toolbar->setIconSize(QSize(18, 18));
    toolbar->addAction(open);
    toolbar->addAction(openFolder);

    updateRecentMenu();
}

// Sessions and exports (issue 8): SessionController and ExportDialog do the work.
void MainWindow::addSessionActions(QMenu* file)
{
    m_sessionFile = new SessionController(this, m_session, m_calibration);
    file->addSeparator();
    QAction* openSession =
        file->addAction(tr("Open &Session…"), m_sessionFile, &SessionController::showOpenDialog);
    openSession->setObjectName(QStringLiteral("openSessionAction"));
    openSession->setToolTip(tr("Open a session: its model, calibration, layout and view"));
    QAction* saveSession =
        file->addAction(tr("&Save Session…"), m_sessionFile, &SessionController::showSaveDialog);
    saveSession->setObjectName(QStringLiteral("saveSessionAction"));
    saveSession->setShortcut(QKeySequence::Save);
    QAction* exportModel = file->addAction(tr("&Export…"), this, &MainWindow::showExportDialog);
    exportModel->setObjectName(QStringLiteral("exportAction"));
    exportModel->setShortcut(QKeySequence(tr("Ctrl+E")));
    exportModel->setToolTip(tr("Write the quantized model as GGUF or Hugging Face safetensors"));
    for (QAction* a : {saveSession, exportModel}) {
        a->setEnabled(false);
        connect(m_session, &AppSession::modelLoaded, a, [a] { a->setEnabled(true); });
        connect(m_session, &AppSession::modelClosed, a, [a] { a->setEnabled(false); });
    }
}

void MainWindow::showExportDialog()
{
    if (!m_session->hasModel()) return;
    auto* dialog =
        new ExportDialog(m_session->model(), m_calibration->result(), m_session->jobs(), this);
    dialog->setAttribute(Qt::WA_DeleteOnClose);
    dialog->setLayoutText(m_sessionFile->layoutText());
    dialog->show();
}

void MainWindow::createStatusBar()
{
    m_progress = new QProgressBar(this);
    m_progress->setObjectName(QStringLiteral("jobProgress"));
    m_progress->setRange(0, 1000);
    m_progress->setFixedWidth(260);
    m_progress->setMaximumHeight(16);
    m_progress->setTextVisible(true);
    m_progress->setFormat(QStringLiteral("%p%"));
    m_progress->hide();
    m_showProgress = new QTimer(this);
    m_showProgress->setSingleShot(true);
    m_showProgress->setInterval(300);
    connect(m_showProgress, &QTimer::timeout, this, [this] {
        m_progress->show();
        m_cancelButton->show();
    });

    m_cancelButton = new QToolButton(this);
    m_cancelButton->setObjectName(QStringLiteral("cancelJobButton"));
    m_cancelButton->setIcon(icons::cancel());
    m_cancelButton->setAutoRaise(true);
    m_cancelButton->setToolTip(tr("Cancel the running job (loading or statistics)"));
    m_cancelButton->hide();
    connect(m_cancelButton, &QToolButton::clicked, m_session, &AppSession::cancelAll);

    m_deviceLabel = new QLabel(tr("Device: detecting…"), this);
    m_deviceLabel->setObjectName(QStringLiteral("deviceLabel"));
    m_deviceLabel->setToolTip(
        tr("Where QuantLens computes: the GPU when built with CUDA and one is "
           "present, else the CPU"));

    statusBar()->addPermanentWidget(m_progress);
    statusBar()->addPermanentWidget(m_cancelButton);
    statusBar()->addPermanentWidget(m_deviceLabel);
    statusBar()->showMessage(tr("Ready"));
}

// ---------------------------------------------------------------------------------------------
// Settings

void MainWindow::readSettings()
{
    QSettings settings;
    settings.beginGroup(QStringLiteral("mainWindow"));
    const QByteArray geometry = settings.value(QStringLiteral("geometry")).toByteArray();
    if (!geometry.isEmpty()) restoreGeometry(geometry);
    restoreState(settings.value(QStringLiteral("state")).toByteArray(), kStateVersion);
    settings.endGroup();
    m_weightsPane->restoreSettings(settings);
    m_metadataPane->restoreSettings(settings);
}

void MainWindow::writeSettings()
{
    QSettings settings;
    settings.beginGroup(QStringLiteral("mainWindow"));
    settings.setValue(QStringLiteral("geometry"), saveGeometry());
    settings.setValue(QStringLiteral("state"), saveState(kStateVersion));
    settings.endGroup();
    m_weightsPane->saveSettings(settings);
    m_metadataPane->saveSettings(settings);
}

void MainWindow::resetLayout()
{
    restoreState(m_defaultState, kStateVersion);
    m_treeDock->show();
    m_metadataDock->show();
    m_treeDock->raise();
}

void MainWindow::closeEvent(QCloseEvent* event)
{
    writeSettings();
    m_session->cancelAll();
    event->accept();
}

QStringList MainWindow::recentFiles() const
{
    return QSettings().value(kRecentKey).toStringList();
}

void MainWindow::addRecentFile(const QString& openedPath)
{
    const QString path = QFileInfo(openedPath).absoluteFilePath();
    QStringList files = recentFiles();
    files.removeAll(path);
    files.prepend(path);
    while (files.size() > kMaxRecentFiles) files.removeLast();
    QSettings().setValue(kRecentKey, files);
    updateRecentMenu();
}

void MainWindow::updateRecentMenu()
{
    m_recentMenu->clear();
    const QStringList files = recentFiles();
    for (int i = 0; i < files.size(); ++i) {
        const QString& path = files[i];
        QAction* action = m_recentMenu->addAction(
            QStringLiteral("&%1  %2").arg(i + 1).arg(QFileInfo(path).fileName()));
        action->setToolTip(path);
        action->setStatusTip(path);
        connect(action, &QAction::triggered, this, [this, path] { openPath(path); });
    }
    if (!files.isEmpty()) {
        m_recentMenu->addSeparator();
        m_recentMenu->addAction(tr("Clear Menu"), this, [this] {
            QSettings().remove(kRecentKey);
            updateRecentMenu();
        });
    }
    m_recentMenu->setEnabled(!files.isEmpty());
}

// ---------------------------------------------------------------------------------------------
// Opening

void MainWindow::openPath(const QString& path)
{
    if (path.isEmpty()) return;
    m_session->openModel(QFileInfo(path).absoluteFilePath());
}

void MainWindow::showOpenDialog()
{
    QSettings settings;
    const QString dir =
        settings.value(QStringLiteral("lastDirectory"), QDir::homePath()).toString();
    const QString path =
        QFileDialog::getOpenFileName(this, tr("Open Model"), dir, modelFileFilter());
    if (path.isEmpty()) return;
    settings.setValue(QStringLiteral("lastDirectory"), QFileInfo(path).absolutePath());
    openPath(path);
}

void MainWindow::showOpenFolderDialog()
{
    QSettings settings;
    const QString dir =
        settings.value(QStringLiteral("lastDirectory"), QDir::homePath()).toString();
    const QString path = QFileDialog::getExistingDirectory(
        this, tr("Open Hugging Face Model Folder"), dir, QFileDialog::ShowDirsOnly);
    if (path.isEmpty()) return;
    settings.setValue(QStringLiteral("lastDirectory"), QFileInfo(path).absolutePath());
    openPath(path);
}

void MainWindow::dragEnterEvent(QDragEnterEvent* event)
{
    const QList<QUrl> urls = event->mimeData()->urls();
    if (!urls.isEmpty() && urls.first().isLocalFile()) event->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* event)
{
    const QList<QUrl> urls = event->mimeData()->urls();
    if (urls.isEmpty() || !urls.first().isLocalFile()) return;
    event->acceptProposedAction();
    openPath(urls.first().toLocalFile());
}

// ---------------------------------------------------------------------------------------------
// Session events

void MainWindow::onLoadStarted(const QString& path)
{
    statusBar()->showMessage(tr("Opening %1…").arg(QFileInfo(path).fileName()));
}

void MainWindow::onLoadFinished(const QString& path, bool ok)
{
    if (ok) {
        addRecentFile(path);
    } else {
        statusBar()->showMessage(tr("Could not open %1").arg(QFileInfo(path).fileName()), 8000);
    }
}

void MainWindow::onModelLoaded()
{
    const auto model = m_session->model();
    m_closeAction->setEnabled(true);
    updateTitle();
    statusBar()->showMessage(tr("Opened %1: %2 tensors, %3 parameters, %4")
                                 .arg(m_session->modelDisplayName())
                                 .arg(model->tensors.size())
                                 .arg(human::count(model->totalParameters()))
                                 .arg(human::bytes(model->totalBytes())));
    if (!m_autoSelect || !m_session->selectedTensor().isEmpty()) return;
    const ql::TensorInfo* first = model->find(ql::TensorRole::AttnQ, 0);
    for (const auto& t : model->tensors) {
        if (first) break;
        if (ql::isLinearWeight(t.role) && t.shape.size() == 2) first = &t;
    }
    if (!first && !model->tensors.empty()) first = &model->tensors.front();
    if (first) m_session->selectTensor(QString::fromStdString(first->name));
}

void MainWindow::onModelClosed()
{
    m_closeAction->setEnabled(false);
    updateTitle();
    statusBar()->showMessage(tr("Model closed"), 5000);
}

void MainWindow::updateTitle()
{
    if (m_session->hasModel()) {
        setWindowTitle(tr("%1 — QuantLens").arg(m_session->modelDisplayName()));
        setWindowFilePath(m_session->modelPath());
    } else {
        setWindowTitle(tr("QuantLens"));
    }
}

void MainWindow::onError(const QString& title, const QString& message)
{
    // Non-modal: the session keeps running behind the message.
    auto* box = new QMessageBox(QMessageBox::Warning, title, title, QMessageBox::Ok, this);
    box->setObjectName(QStringLiteral("errorMessageBox"));
    box->setInformativeText(message);
    box->setStyleSheet(QStringLiteral("QLabel { min-width: 420px; }"));  // long paths wrap less
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}

void MainWindow::onWarnings(const QStringList& warnings)
{
    statusBar()->showMessage(
        tr("%n warning(s) while loading: %1", nullptr, int(warnings.size())).arg(warnings.first()),
        10000);
}

void MainWindow::onBusyChanged(bool busy)
{
    // Jobs that end within a moment do not flash the progress bar.
    if (busy) {
        m_progress->setValue(0);
        m_progress->setFormat(QStringLiteral("%p%"));
        m_showProgress->start();
    } else {
        m_showProgress->stop();
        m_progress->hide();
        m_cancelButton->hide();
    }
}

void MainWindow::onProgress(double fraction, const QString& text)
{
    m_progress->setValue(int(std::clamp(fraction, 0.0, 1.0) * 1000));
    m_progress->setFormat(text.isEmpty() ? QStringLiteral("%p%") : text + QStringLiteral(" %p%"));
    m_progress->setToolTip(text);
}

void MainWindow::onDeviceChanged()
{
    // The device of the running job, else of the last one, else the detected one.
    const DeviceActivity& a = m_session->deviceActivity();
    const ql::DeviceInfo& d = a.device.name.empty() ? m_session->device() : a.device;
    QString text = tr("Device: %1").arg(QString::fromStdString(d.name));
    if (!a.job.isEmpty()) {
        text += QStringLiteral(" — %1").arg(a.job);
    } else if (d.isGpu && d.totalMemory) {
        const std::uint64_t used = d.totalMemory > d.freeMemory ? d.totalMemory - d.freeMemory : 0;
        text += a.peakBytes ? tr(" (last job %1 peak; %2 of %3 in use)")
                                  .arg(human::bytes(a.peakBytes), human::bytes(used),
                                       human::bytes(d.totalMemory))
                            : QStringLiteral(" (%1)").arg(human::bytes(d.totalMemory));
    }
    m_deviceLabel->setText(text);
}

void MainWindow::showAbout()
{
    QMessageBox::about(
        this, tr("About QuantLens"),
        tr("<h3>QuantLens %1</h3><p>A workbench for LLM quantization: explore a model's weights, "
           "calibrate, quantize (RTN, GPTQ, AWQ) and measure the damage.</p>"
           "<p>Opens GGUF files, Hugging Face safetensors folders and llama2.c checkpoints.</p>"
           "<p>Compute device: %2</p><p>Built with Qt %3 and QCustomPlot.</p>")
            .arg(QCoreApplication::applicationVersion(),
                 QString::fromStdString(m_session->device().name),
                 QString::fromLatin1(qVersion())));
}
