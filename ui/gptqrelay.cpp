#include "gptqrelay.h"

#include <QTimer>

#include "util/pause_gate.h"

GptqRelay::GptqRelay(std::shared_ptr<ql::PauseGate> gate, QObject* parent)
    : QObject(parent), m_gate(std::move(gate))
{
    qRegisterMetaType<GptqEventBatch>();
}

void GptqRelay::runStarted(const ql::GptqRunStart& e)
{
    push(e);
}

void GptqRelay::layerStarted(const ql::GptqLayerStart& e)
{
    push(e);
}

void GptqRelay::layerProgress(const ql::GptqLayerProgress& e)
{
    push(e);
}

void GptqRelay::dampRaised(const ql::GptqDampRaise& e)
{
    push(e);
}

void GptqRelay::layerFinished(const ql::GptqLayerDone& e)
{
    push(e);
    if (m_step && m_gate) m_gate->pause();
}

void GptqRelay::push(GptqEvent event)
{
    bool schedule = false;
    {
        std::lock_guard lock(m_mutex);
        if (std::holds_alternative<ql::GptqLayerProgress>(event) && !m_queue.empty() &&
            std::holds_alternative<ql::GptqLayerProgress>(m_queue.back()))
            m_queue.back() = std::move(event);
        else
            m_queue.push_back(std::move(event));
        schedule = !m_scheduled;
        m_scheduled = true;
    }
    if (schedule) QMetaObject::invokeMethod(this, &GptqRelay::deliver, Qt::QueuedConnection);
}

void GptqRelay::deliver()
{
    if (m_sinceLast.isValid() && m_sinceLast.elapsed() < kMinIntervalMs) {
        QTimer::singleShot(int(kMinIntervalMs - m_sinceLast.elapsed()), this, &GptqRelay::deliver);
        return;
    }
    flushNow();
}

void GptqRelay::flushNow()
{
    GptqEventBatch batch;
    {
        std::lock_guard lock(m_mutex);
        batch.swap(m_queue);
        m_scheduled = false;
    }
    if (batch.empty()) return;
    m_sinceLast.start();
    ++m_deliveries;
    emit eventsReady(batch);
}
