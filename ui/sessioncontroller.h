// SessionController: File ▸ Save Session… / Open Session… (core/session, an HDF5 file). A session
// holds the model's path and hash, the calibration shown (CalibrationState), the layout, the last
// quantization and evaluations (kept as read: the GUI does not edit them yet) and the view state
// as /view key/values:
//   selected_tensor   the tensor the panes show
//   histogram_bins, outlier_rule ("median:5" | "std:3"), histogram_log ("0" | "1")
//   docks_visible     object names of the visible dock widgets, comma-separated
//   window_geometry, window_state   QMainWindow::saveGeometry / saveState, base64
// Reading and writing run as "session-file" jobs on the JobRunner (hashing the model included).
// Opening a session opens its model when it is not the one open, checks the model file against
// the stored hash, and restores calibration, layout and view; a changed model file is reported
// in a message box and everything else is still restored. The time from the request to the
// restored view is shown in the status bar (restoreMilliseconds()).
#pragma once

#include <QElapsedTimer>
#include <QObject>
#include <QString>

#include <optional>

#include "session/session.h"

class AppSession;
class CalibrationState;
class QMainWindow;

class SessionController : public QObject {
    Q_OBJECT
public:
    SessionController(QMainWindow* window, AppSession* session, CalibrationState* calibration);

    // The layout of the session (empty when none was opened or saved with one).
    QString layoutText() const { return m_layout; }
    void setLayoutText(const QString& text) { m_layout = text; }
    bool isBusy() const { return m_busy; }
    // Milliseconds from openSession() to the restored view, for the last session opened.
    qint64 restoreMilliseconds() const { return m_restoreMs; }
    // The view state as it would be saved now.
    std::vector<std::pair<std::string, std::string>> viewState() const;

public slots:
    void saveSession(const QString& path);
    void openSession(const QString& path);
    void showSaveDialog();
    void showOpenDialog();

signals:
    void sessionSaved(bool ok, const QString& message);
    // ok: the session was read and what could be restored was; message: what the status says.
    void sessionOpened(bool ok, const QString& message);
    // The model file differs from the one the session was made with (also shown in a box).
    void modelChanged(const QString& message);

private:
    void onModelReady(const QString& path, bool ok);
    void checkIdentity();
    void restore(const QString& identityProblem);
    void restoreView(const ql::SessionData& data);
    void finishOpen(bool ok, const QString& message);
    void warn(const QString& objectName, const QString& title, const QString& text,
              const QString& details);

    QMainWindow* m_window;
    AppSession* m_session;
    CalibrationState* m_calibration;
    QString m_layout;
    // What the GUI does not show yet, kept from the session opened for the same model.
    std::optional<ql::SessionQuantization> m_quantization;
    std::vector<ql::SessionEvaluation> m_evaluations;
    std::string m_keptForModel;

    bool m_busy = false;
    QString m_openPath;                       // the session being opened
    std::optional<ql::SessionData> m_opened;  // read, waiting for its model
    QString m_waitingForModel;                // the model path AppSession is opening for it
    QElapsedTimer m_restoreTimer;
    qint64 m_restoreMs = -1;
};
