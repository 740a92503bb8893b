// PauseGate: lets another thread hold long core work at its next safe point and let it go again.
// The worker calls pass() between units of work (GPTQ: between lazy column blocks and between
// calibration windows); while the gate is paused, pass() blocks. It returns false as soon as the
// gate is cancelled or `stillWanted` (polled every 50 ms while held, e.g. the job's ProgressFn)
// says the work is no longer wanted, so a paused job can always be cancelled. pause(), resume()
// and cancel() may be called from any thread, before or during the work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>

namespace ql {

class PauseGate {
public:
    void pause();
    void resume();
    void cancel();  // final: pass() returns false from now on

    bool isPaused() const;
    bool isCancelled() const;
    // Whether a worker is blocked in pass() right now (the pause has taken effect).
    bool isHolding() const { return m_holding.load(); }

    // On the worker: true to go on, false when cancelled (or no longer wanted).
    bool pass(const std::function<bool()>& stillWanted = {});

private:
    mutable std::mutex m_mutex;
    std::condition_variable m_changed;
    bool m_paused = false;     // guarded by m_mutex
    bool m_cancelled = false;  // guarded by m_mutex
    std::atomic_bool m_holding{false};
};

}  // namespace ql
