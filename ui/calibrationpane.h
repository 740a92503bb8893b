// The calibration pane: which text runs through the model and how (files, samples, sequence
// length, seed, window placement, Hessian precision), and the run itself. The parameters are
// copied into a ql::CalibrationConfig before the "calibrate" job starts on the JobRunner; the job
// builds the forward model and tokenizer and calls ql::calibrate, on a GPU runner when a GPU is
// present (falling back to the CPU if it fails), and the pane says which device ran it; the
// status bar shows the device while the job runs (AppSession::deviceActivity). Only a finished run
// replaces CalibrationState's result, so a cancelled or failed run leaves the previous one
// untouched. Sessions are written and read on the worker too ("session" job); reading one checks
// that the open model is the one it was made with.
#pragma once

#include <QElapsedTimer>
#include <QWidget>

#include "calib/calibration.h"

class AppSession;
class CalibrationState;
class JobRunner;
class QCheckBox;
class QComboBox;
class QLabel;
class QListWidget;
class QProgressBar;
class QPushButton;
class QSpinBox;
class QLineEdit;

class CalibrationPane : public QWidget {
    Q_OBJECT
public:
    CalibrationPane(AppSession* session, JobRunner* jobs, CalibrationState* state,
                    QWidget* parent = nullptr);

    // The parameters the controls describe (what Run would start).
    ql::CalibrationConfig configFromControls() const;
    void setControls(const ql::CalibrationConfig& config);
    bool isRunning() const { return m_running; }

    // The default calibration text: $QUANTLENS_DATA or the built-in data folder's tiny.txt.
    static QString defaultTextFile();

public slots:
    // On the GPU when there is one, unless cpuOnly; a GPU failure asks whether to use the CPU.
    void startCalibration(const ql::CalibrationConfig& config, bool cpuOnly = false);
    void run();  // from the controls
    void cancel();
    void saveSession(const QString& path);
    void openSession(const QString& path);

signals:
    void calibrationFinished(bool ok, const QString& message);
    void sessionSaved(bool ok, const QString& message);

private:
    void onModelLoaded();
    void onModelClosed();
    void onJobProgress(const QString& tag, double fraction, const QString& text);
    void onCalibrationChanged();
    void addFiles();
    void removeFiles();
    void showSaveDialog();
    void showOpenDialog();
    void setRunning(bool running);
    void updateEnabled();

    AppSession* m_session;
    JobRunner* m_jobs;
    CalibrationState* m_state;
    bool m_running = false;
    bool m_sessionBusy = false;
    QElapsedTimer m_elapsed;
    qint64 m_plannedTokens = 0;

    QListWidget* m_files = nullptr;
    QPushButton* m_addFiles = nullptr;
    QPushButton* m_removeFiles = nullptr;
    QSpinBox* m_samples = nullptr;
    QSpinBox* m_seqLen = nullptr;
    QLineEdit* m_seed = nullptr;
    QCheckBox* m_consecutive = nullptr;
    QComboBox* m_hessian = nullptr;
    QPushButton* m_run = nullptr;
    QPushButton* m_cancel = nullptr;
    QPushButton* m_save = nullptr;
    QPushButton* m_open = nullptr;
    QProgressBar* m_progress = nullptr;
    QLabel* m_progressText = nullptr;
    QLabel* m_summary = nullptr;
};
