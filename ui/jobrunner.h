// JobRunner: the one worker thread that runs core jobs for the GUI (after RenderDoc's
// AsyncInvoke). Every job has a tag. Submitting a job drops a queued job with the same tag and
// cancels a running one through its ProgressFn (which then returns false), so moving the
// selection across 200 tensors runs at most two jobs, not 200. A job's result travels back to
// the UI thread by value and reaches `onDone` only when the receiving object still exists
// (QPointer) and the job is still the newest with its tag; stale results are dropped silently.
// A job cancelled by cancel()/cancelAll() delivers ErrorCode::Cancelled so its caller can stop
// waiting. Everything the job reads must be copied into it: jobs never touch widgets.
//
// All public functions and all signals belong to the UI thread.
#pragma once

#include <QHash>
#include <QObject>
#include <QPointer>
#include <QString>
#include <QThread>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "util/progress.h"
#include "util/result.h"

class JobRunner : public QObject {
    Q_OBJECT
public:
    template <class T>
    using Work = std::function<ql::Result<T>(const ql::ProgressFn&)>;

    explicit JobRunner(QObject* parent = nullptr);
    ~JobRunner() override;  // cancels everything and joins the worker

    // Queue `work` under `tag`. `onDone(ql::Result<T>)` runs on the UI thread while `context`
    // lives, unless a newer job with the same tag superseded this one.
    template <class T, class Done>
    void run(const QString& tag, QObject* context, Work<T> work, Done onDone);

    // Drop the queued job with this tag and cancel the running one.
    void cancel(const QString& tag);
    void cancelAll();

    bool isBusy() const { return m_outstanding > 0; }
    // Jobs with this tag waiting to start: never more than one.
    int queuedCount(const QString& tag) const;
    QString currentTag() const { return m_currentTag; }

signals:
    void jobStarted(const QString& tag);
    void jobFinished(const QString& tag);
    // Throttled to a few updates a second; text is what the core job reported.
    void progress(const QString& tag, double fraction, const QString& text);
    void busyChanged(bool busy);

private:
    using Deliver = std::function<void()>;  // runs on the UI thread
    struct Job {
        QString tag;
        quint64 id = 0;
        std::shared_ptr<std::atomic_bool> cancelled;
        std::function<Deliver(const ql::ProgressFn&)> body;  // runs on the worker
        Deliver onCancelled;                                 // runs on the UI thread
    };

    void submit(Job job);
    void workerLoop();
    void jobDone(const QString& tag, quint64 id, const Deliver& deliver);
    void dropQueued(const std::function<bool(const Job&)>& which);
    void setOutstanding(int n);

    QThread* m_thread = nullptr;
    mutable std::mutex m_mutex;
    std::condition_variable m_wake;
    std::deque<Job> m_queue;                            // guarded by m_mutex
    QString m_runningTag;                               // guarded by m_mutex
    std::shared_ptr<std::atomic_bool> m_runningCancel;  // guarded by m_mutex
    bool m_stop = false;                                // guarded by m_mutex

    // UI-thread state.
    quint64 m_nextId = 1;
    QHash<QString, quint64> m_latest;  // newest job id per tag
    int m_outstanding = 0;             // submitted, neither dropped nor finished
    QString m_currentTag;
};

template <class T, class Done>
void JobRunner::run(const QString& tag, QObject* context, Work<T> work, Done onDone)
{
    QPointer<QObject> guard(context);
    Job job;
    job.tag = tag;
    job.body = [work = std::move(work), guard, onDone](const ql::ProgressFn& progress) -> Deliver {
        auto result = std::make_shared<ql::Result<T>>(work(progress));
        return [result, guard, onDone]() {
            if (guard) onDone(std::move(*result));
        };
    };
    job.onCancelled = [guard, onDone]() {
        if (guard) onDone(ql::Result<T>(ql::makeError(ql::ErrorCode::Cancelled, "cancelled")));
    };
    submit(std::move(job));
}
