// CalibrationState: the calibration the GUI currently shows, shared by the calibration and
// activation panes. It holds an immutable ql::CalibrationResult (a finished run or one read from a
// session file) and announces replacements; panes observe it and never call each other.
#pragma once

#include <QObject>
#include <QString>

#include <memory>

#include "calib/calibration.h"

class CalibrationState : public QObject {
    Q_OBJECT
public:
    explicit CalibrationState(QObject* parent = nullptr);

    std::shared_ptr<const ql::CalibrationResult> result() const { return m_result; }
    bool hasResult() const { return m_result != nullptr; }
    // Where the result came from: "calibration run" or the session file's path.
    QString source() const { return m_source; }

public slots:
    void setResult(std::shared_ptr<const ql::CalibrationResult> result, const QString& source);
    void clear();

signals:
    void calibrationChanged();

private:
    std::shared_ptr<const ql::CalibrationResult> m_result;
    QString m_source;
};
