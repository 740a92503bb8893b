#include "calibrationstate.h"

CalibrationState::CalibrationState(QObject* parent) : QObject(parent) {}

void CalibrationState::setResult(std::shared_ptr<const ql::CalibrationResult> result,
                                 const QString& source)
{
    m_result = std::move(result);
    m_source = m_result ? source : QString();
    emit calibrationChanged();
}

void CalibrationState::clear()
{
    if (!m_result) return;
    m_result.reset();
    m_source.clear();
    emit calibrationChanged();
}
