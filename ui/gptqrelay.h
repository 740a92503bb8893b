// GptqRelay: carries a GPTQ run's events (quant/gptq_observer.h) from the job worker to the UI
// thread. The worker reports to the relay's observer(), a small object the job holds by
// shared_ptr: it only appends to a queue under a mutex (consecutive layerProgress events are
// merged, only the newest counts; every other event is kept) and wakes the relay with a queued
// call. The relay hands the batch on through eventsReady() at most ~30 times a second, so a fast
// run cannot flood the event loop and a slow one still shows every block. When the relay is
// destroyed first (its pane closed mid-run), the observer keeps working and delivers nothing.
//
// Step mode pauses the run's gate after each finished layer (on the worker, so no layer slips
// through before the UI reacts): the user watches GPTQ one layer at a time.
#pragma once

#include <QElapsedTimer>
#include <QObject>

#include <memory>
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

class GptqRelay : public QObject {
    Q_OBJECT
public:
    explicit GptqRelay(std::shared_ptr<ql::PauseGate> gate, QObject* parent = nullptr);
    ~GptqRelay() override;

    static constexpr int kMinIntervalMs = 33;  // ~30 deliveries a second at most

    // What the job reports to; safe to outlive the relay.
    std::shared_ptr<ql::GptqObserver> observer() const;
    void setStepMode(bool on);
    int deliveries() const { return m_deliveries; }

public slots:
    void flushNow();  // deliver whatever is queued (at the end of a run)

signals:
    void eventsReady(const GptqEventBatch& events);

private:
    class Sink;
    void deliver();

    std::shared_ptr<Sink> m_sink;
    QElapsedTimer m_sinceLast;
    int m_deliveries = 0;
};
