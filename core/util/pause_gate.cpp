#include "util/pause_gate.h"

#include <chrono>

namespace ql {

void PauseGate::pause()
{
    std::lock_guard lock(m_mutex);
    m_paused = true;
}

void PauseGate::resume()
{
    {
        std::lock_guard lock(m_mutex);
        m_paused = false;
    }
    m_changed.notify_all();
}

void PauseGate::cancel()
{
    {
        std::lock_guard lock(m_mutex);
        m_cancelled = true;
    }
    m_changed.notify_all();
}

bool PauseGate::isPaused() const
{
    std::lock_guard lock(m_mutex);
    return m_paused;
}

bool PauseGate::isCancelled() const
{
    std::lock_guard lock(m_mutex);
    return m_cancelled;
}

bool PauseGate::pass(const std::function<bool()>& stillWanted)
{
    std::unique_lock lock(m_mutex);
    while (m_paused && !m_cancelled) {
        m_holding.store(true);
        m_changed.wait_for(lock, std::chrono::milliseconds(50));
        if (stillWanted) {
            lock.unlock();
            const bool wanted = stillWanted();
            lock.lock();
            if (!wanted) {
                m_holding.store(false);
                return false;
            }
        }
    }
    m_holding.store(false);
    return !m_cancelled;
}

}  // namespace ql
