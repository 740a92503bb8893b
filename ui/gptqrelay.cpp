#include "gptqrelay.h"

#include <QTimer>

#include <atomic>
#include <mutex>

#include "util/pause_gate.h"

class GptqRelay::Sink : public ql::GptqObserver {
public:
    Sink(GptqRelay* relay, std::shared_ptr<ql::PauseGate> gate)
        : m_relay(relay), m_gate(std::move(gate))
    {
    }

    void runStarted(const ql::GptqRunStart& e) override { push(e); }
    void layerStarted(const ql::GptqLayerStart& e) override { push(e); }
    void layerProgress(const ql::GptqLayerProgress& e) override { push(e); }
    void dampRaised(const ql::GptqDampRaise& e) override { push(e); }
    void layerFinished(const ql::GptqLayerDone& e) override
    {
        push(e);
        if (m_step && m_gate) m_gate->pause();
    }

    GptqEventBatch take()
    {
        std::lock_guard lock(m_mutex);
        GptqEventBatch batch;
        batch.swap(m_queue);
        m_scheduled = false;
        return batch;
    }

    void detach()
    {
        std::lock_guard lock(m_mutex);
        m_relay = nullptr;
    }

    std::atomic_bool m_step{false};

private:
    void push(GptqEvent event)
    {
        std::lock_guard lock(m_mutex);
        if (std::holds_alternative<ql::GptqLayerProgress>(event) && !m_queue.empty() &&
            std::holds_alternative<ql::GptqLayerProgress>(m_queue.back()))
            m_queue.back() = std::move(event);
        else
            m_queue.push_back(std::move(event));
        // Posted under the mutex: the relay cannot be destroyed in between (detach waits).
        if (m_relay && !m_scheduled) {
            m_scheduled = true;
            QMetaObject::invokeMethod(m_relay, &GptqRelay::deliver, Qt::QueuedConnection);
        }
    }

    std::mutex m_mutex;
    GptqRelay* m_relay;        // guarded by m_mutex; null once the relay is gone
    GptqEventBatch m_queue;    // guarded by m_mutex
    bool m_scheduled = false;  // guarded by m_mutex: a delivery is on its way
    std::shared_ptr<ql::PauseGate> m_gate;
};

GptqRelay::GptqRelay(std::shared_ptr<ql::PauseGate> gate, QObject* parent)
    : QObject(parent), m_sink(std::make_shared<Sink>(this, std::move(gate)))
{
    qRegisterMetaType<GptqEventBatch>();
}

GptqRelay::~GptqRelay()
{
    m_sink->detach();
}

std::shared_ptr<ql::GptqObserver> GptqRelay::observer() const
{
    return m_sink;
}

void GptqRelay::setStepMode(bool on)
{
    m_sink->m_step = on;
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
    GptqEventBatch batch = m_sink->take();
    if (batch.empty()) return;
    m_sinceLast.start();
    ++m_deliveries;
    emit eventsReady(batch);
}
