#include "jobrunner.h"

#include <QElapsedTimer>

#include <algorithm>
#include <vector>

JobRunner::JobRunner(QObject* parent) : QObject(parent)
{
    m_thread = QThread::create([this] { workerLoop(); });
    m_thread->setObjectName(QStringLiteral("QuantLens job worker"));
    m_thread->start();
}

JobRunner::~JobRunner()
{
    {
        std::lock_guard lock(m_mutex);
        m_stop = true;
        m_queue.clear();
        if (m_runningCancel) m_runningCancel->store(true);
    }
    m_wake.notify_all();
    m_thread->wait();
    delete m_thread;
}

int JobRunner::queuedCount(const QString& tag) const
{
    std::lock_guard lock(m_mutex);
    return int(std::count_if(m_queue.begin(), m_queue.end(),
                             [&tag](const Job& job) { return job.tag == tag; }));
}

void JobRunner::submit(Job job)
{
    job.id = m_nextId++;
    job.cancelled = std::make_shared<std::atomic_bool>(false);
    const QString tag = job.tag;
    m_latest[tag] = job.id;
    int dropped = 0;
    {
        std::lock_guard lock(m_mutex);
        for (auto it = m_queue.begin(); it != m_queue.end();) {
            if (it->tag == tag) {
                it = m_queue.erase(it);
                ++dropped;
            } else {
                ++it;
            }
        }
        if (m_runningCancel && m_runningTag == tag) m_runningCancel->store(true);
        m_queue.push_back(std::move(job));
    }
    m_wake.notify_one();
    setOutstanding(m_outstanding + 1 - dropped);
}

void JobRunner::dropQueued(const std::function<bool(const Job&)>& which)
{
    std::vector<Job> dropped;
    {
        std::lock_guard lock(m_mutex);
        for (auto it = m_queue.begin(); it != m_queue.end();) {
            if (which(*it)) {
                dropped.push_back(std::move(*it));
                it = m_queue.erase(it);
            } else {
                ++it;
            }
        }
        if (m_runningCancel && which(Job{m_runningTag, 0, {}, {}, {}}))
            m_runningCancel->store(true);
    }
    setOutstanding(m_outstanding - int(dropped.size()));
    // Outside the lock: a callback may submit new work.
    for (const Job& job : dropped)
        if (m_latest.value(job.tag) == job.id) job.onCancelled();
}

void JobRunner::cancel(const QString& tag)
{
    dropQueued([&tag](const Job& job) { return job.tag == tag; });
}

void JobRunner::cancelAll()
{
    dropQueued([](const Job&) { return true; });
}

void JobRunner::setOutstanding(int n)
{
    const bool wasBusy = m_outstanding > 0;
    m_outstanding = n;
    if (wasBusy != (n > 0)) emit busyChanged(n > 0);
}

void JobRunner::jobDone(const QString& tag, quint64 id, const Deliver& deliver)
{
    if (m_currentTag == tag) m_currentTag.clear();
    const bool newest = m_latest.value(tag) == id;
    // Count the job as finished before delivering, so onDone sees an accurate isBusy().
    setOutstanding(m_outstanding - 1);
    if (newest) deliver();
    emit jobFinished(tag);
}

void JobRunner::workerLoop()
{
    for (;;) {
        Job job;
        {
            std::unique_lock lock(m_mutex);
            m_wake.wait(lock, [this] { return m_stop || !m_queue.empty(); });
            if (m_stop) return;
            job = std::move(m_queue.front());
            m_queue.pop_front();
            m_runningTag = job.tag;
            m_runningCancel = job.cancelled;
        }
        const QString tag = job.tag;
        QMetaObject::invokeMethod(
            this,
            [this, tag] {
                m_currentTag = tag;
                emit jobStarted(tag);
            },
            Qt::QueuedConnection);

        // Progress may be reported from several threads at once (parallel decoding): the
        // throttle is a lock-free compare-exchange on the time of the last report.
        auto cancelled = job.cancelled;
        auto clock = std::make_shared<QElapsedTimer>();
        clock->start();
        auto lastReport = std::make_shared<std::atomic<qint64>>(-1000);
        ql::ProgressFn report = [this, tag, cancelled, clock, lastReport](double fraction,
                                                                          std::string_view what) {
            if (cancelled->load()) return false;
            const qint64 now = clock->elapsed();
            qint64 last = lastReport->load();
            if (now - last >= 100 && lastReport->compare_exchange_strong(last, now)) {
                const QString text = QString::fromUtf8(what.data(), qsizetype(what.size()));
                QMetaObject::invokeMethod(
                    this, [this, tag, fraction, text] { emit progress(tag, fraction, text); },
                    Qt::QueuedConnection);
            }
            return !cancelled->load();
        };

        Deliver deliver = job.body(report);
        job.body = nullptr;  // release captured inputs (a model, decoded values) on the worker

        {
            std::lock_guard lock(m_mutex);
            m_runningTag.clear();
            m_runningCancel.reset();
        }
        const quint64 id = job.id;
        QMetaObject::invokeMethod(
            this, [this, tag, id, deliver] { jobDone(tag, id, deliver); }, Qt::QueuedConnection);
    }
}
