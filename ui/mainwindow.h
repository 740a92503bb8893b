// The main window: menus, dock layout, status bar and settings around the panes. It owns the
// AppSession; panes observe the session and know nothing of each other or of this window.
// Window geometry, dock state, splitter positions and recent files persist in QSettings.
#pragma once

#include <QMainWindow>
#include <QStringList>

class AppSession;
class MetadataPane;
class ActivationsPane;
class CalibrationPane;
class CalibrationState;
class GridPane;
class GeneratePane;
class GptqPane;
class LayoutPane;
class ModelTree;
class QAction;
class QDockWidget;
class SmoothQuantPane;
class QLabel;
class QMenu;
class QProgressBar;
class QTimer;
class QToolButton;
class SessionController;
class WeightsPane;

class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(QWidget* parent = nullptr);
    ~MainWindow() override;

    AppSession* session() const { return m_session; }
    ModelTree* modelTree() const { return m_modelTree; }
    WeightsPane* weightsPane() const { return m_weightsPane; }
    MetadataPane* metadataPane() const { return m_metadataPane; }
    GptqPane* gptqPane() const { return m_gptqPane; }
    QDockWidget* gptqDock() const { return m_gptqDock; }
    SessionController* sessionFile() const { return m_sessionFile; }
    LayoutPane* layoutPane() const { return m_layoutPane; }

    // After a model loads, select its first attention or linear weight (on by default).
    void setAutoSelectTensor(bool on) { m_autoSelect = on; }
    QStringList recentFiles() const;

public slots:
    void openPath(const QString& path);
    void showOpenDialog();
    void showOpenFolderDialog();
    // File ▸ Export…: the open model with the session's layout (else *=q4_k), non-modal.
    void showExportDialog();

protected:
    void closeEvent(QCloseEvent* event) override;
    void dragEnterEvent(QDragEnterEvent* event) override;
    void dropEvent(QDropEvent* event) override;

private:
    void createActions();
    void addSessionActions(QMenu* file);
    void createDocks();
    void createStatusBar();
    void readSettings();
    void writeSettings();
    void resetLayout();
    void updateRecentMenu();
    void addRecentFile(const QString& openedPath);
    void updateTitle();

    void onModelLoaded();
    void onModelClosed();
    void onLoadStarted(const QString& path);
    void onLoadFinished(const QString& path, bool ok);
    void onError(const QString& title, const QString& message);
    void onWarnings(const QStringList& warnings);
    void onBusyChanged(bool busy);
    void onProgress(double fraction, const QString& text);
    void onDeviceChanged();
    void showAbout();

    AppSession* m_session;
    ModelTree* m_modelTree = nullptr;
    WeightsPane* m_weightsPane = nullptr;
    MetadataPane* m_metadataPane = nullptr;
    QDockWidget* m_treeDock = nullptr;
    QDockWidget* m_metadataDock = nullptr;
    CalibrationState* m_calibration = nullptr;
    CalibrationPane* m_calibrationPane = nullptr;
    ActivationsPane* m_activationsPane = nullptr;
    GridPane* m_gridPane = nullptr;
    QDockWidget* m_calibrationDock = nullptr;
    QDockWidget* m_activationsDock = nullptr;
    QDockWidget* m_gridDock = nullptr;
    SmoothQuantPane* m_smoothQuantPane = nullptr;
    QDockWidget* m_smoothQuantDock = nullptr;
    GeneratePane* m_generatePane = nullptr;
    QDockWidget* m_generateDock = nullptr;
    GptqPane* m_gptqPane = nullptr;
    QDockWidget* m_gptqDock = nullptr;
    LayoutPane* m_layoutPane = nullptr;
    QDockWidget* m_layoutDock = nullptr;

    QMenu* m_recentMenu = nullptr;
    QAction* m_closeAction = nullptr;
    SessionController* m_sessionFile = nullptr;
    QProgressBar* m_progress = nullptr;
    QToolButton* m_cancelButton = nullptr;
    QTimer* m_showProgress = nullptr;
    QLabel* m_deviceLabel = nullptr;
    QByteArray m_defaultState;
    bool m_autoSelect = true;
};
