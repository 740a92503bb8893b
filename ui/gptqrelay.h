// GptqRelay: carries a GPTQ run's events (quant/gptq_observer.h) from the job worker to the UI
// thread. The worker side only appends to a queue under a mutex; consecutive layerProgress events
// are merged (only the newest counts), every other event is kept. The UI side is woken by a queued
// call and hands the batch on through eventsReady() at most ~30 times a second, so a fast run
// cannot flood the event loop and a slow one still shows every block.
//
// Step mode pauses the run's gate after each finished layer (on the worker, so no layer slips
// through before the UI reacts): the user watches GPTQ one layer at a time.
#pragma once

#include <QElapsedTimer>
#include <QObject>

#include <atomic>
#include <memory>
#include <mutex>
#include <variant>
#include <vector>

#include "quant/gptq_observer.h"

namespace ql {
class PauseGate;
}

using GptqEvent = std::variant<ql::GptqRunStart, ql::GptqLayerStart, ql::GptqLayerProgress,
                               ql::GptqDampRaise, ql::GptqLayerDone>;
using GptqEventBatch = std::vector<GptqEvent>;
Q_DECLARE_METATYPE(GptqEventBatch)

class GptqRelay : public QObject, public ql::GptqObserver {
    Q_OBJECT
public:
    explicit GptqRelay(std::shared_ptr<ql::PauseGate> gate, QObject* parent = nullptr);

    static constexpr int kMinIntervalMs = 33;  // ~30 deliveries a second at most

    void setStepMode(bool on) { m_step = on; }
    bool stepMode() const { return m_step; }
    int deliveries() const { return m_deliveries; }

    // Worker side.
    void runStarted(const ql::GptqRunStart& e) override;
    void layerStarted(const ql::GptqLayerStart& e) override;
    void layerProgress(const ql::GptqLayerProgress& e) override;
    void dampRaised(const ql::GptqDampRaise& e) override;
    void layerFinished(const ql::GptqLayerDone& e) override;

public slots:
    void flushNow();  // UI thread: deliver whatever is queued (at the end of a run)

signals:
    void eventsReady(const GptqEventBatch& events);

private:
    void push(GptqEvent event);
    void deliver();

    std::shared_ptr<ql::PauseGate> m_gate;
    std::atomic_bool m_step{false};
    std::mutex m_mutex;
    GptqEventBatch m_queue;     // guarded by m_mutex
    bool m_scheduled = false;   // guarded by m_mutex: a delivery is on its way
    QElapsedTimer m_sinceLast;  // UI thread
    int m_deliveries = 0;       // UI thread
};
