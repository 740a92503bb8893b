// AppSession: the central object of the GUI. It holds the open model, the selected tensor, the
// statistics options and the statistics of the selection; panes observe its signals and call its
// slots, never each other. All core work (opening a model, decoding, statistics, the compute
// device) runs on the JobRunner it owns; a failed job reports an error and leaves the session as
// it was (opening a corrupt file does not close the current model).
//
// Statistics: a new selection runs the "stats" job (decode + ql::computeTensorStats). The decoded
// values of the selected tensor are kept, so a new bin count only re-bins them in core ("histogram"
// job, ql::computeHistogram over the same [min, max]) and a new outlier rule recomputes the
// statistics from them ("outliers" job) without decoding again. Results are cached per
// (model, tensor, options) in a ql::TensorStatsCache.
//
// A quantized model (a GPTQ run's result, finished or partial) can be handed to the session for
// inspection: while showQuantized() is on, the statistics of a tensor it quantized are those of
// the values it decodes to (cached under their own key), so every weight view shows them.
#pragma once

#include <QObject>
#include <QString>
#include <QStringList>

#include <memory>
#include <vector>

#include "compute/backend.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "stats/tensor_stats.h"

class JobRunner;

// What a compute device is doing for the GUI: the job running on it, or what the last one held.
struct DeviceActivity {
    QString job;                  // "calibrating" while a job runs on `device`, else empty
    ql::DeviceInfo device;        // where the running or last job ran (free/total at its end)
    std::uint64_t peakBytes = 0;  // the last finished job's peak device memory (GPU runners)
};

Q_DECLARE_METATYPE(std::shared_ptr<const ql::TensorStats>)

class AppSession : public QObject {
    Q_OBJECT
public:
    explicit AppSession(QObject* parent = nullptr);
    ~AppSession() override;

    JobRunner* jobs() const { return m_jobs; }

    std::shared_ptr<const ql::Model> model() const { return m_model; }
    bool hasModel() const { return m_model != nullptr; }
    QString modelPath() const;
    QString modelDisplayName() const;  // general.name, else the file or folder name
    bool isLoading() const { return !m_loadingPath.isEmpty(); }

    QString selectedTensor() const { return m_selected; }
    const ql::TensorInfo* selectedTensorInfo() const;
    // Statistics of the selected tensor for the current options; null while computing.
    std::shared_ptr<const ql::TensorStats> stats() const { return m_stats; }
    bool statsPending() const { return m_statsPending; }
    const ql::TensorStatsOptions& statsOptions() const { return m_options; }

    std::shared_ptr<const ql::QuantizedModel> quantizedModel() const { return m_quantized; }
    bool showQuantized() const { return m_showQuantized; }
    // Whether the statistics of the selected tensor are (or will be) of its quantized values.
    bool selectedIsQuantized() const;

    const ql::DeviceInfo& device() const { return m_device; }  // detected: where jobs will run
    const DeviceActivity& deviceActivity() const { return m_activity; }

public slots:
    void openModel(const QString& path);
    void closeModel();
    void selectTensor(const QString& name);
    // The quantized model to inspect (null: none); it must be the open model's.
    void setQuantizedModel(std::shared_ptr<const ql::QuantizedModel> model);
    void setShowQuantized(bool on);
    void setHistogramBins(int bins);
    void setOutlierRule(const ql::OutlierRule& rule);
    void setStatsOptions(const ql::TensorStatsOptions& options);
    void cancelAll();
    // Computes the selected tensor's statistics again after they failed or were cancelled.
    void recomputeStats();
    void detectDevice();  // runs createBackend(Auto) on the worker; emits deviceChanged
    // Jobs that run on a device say so when they start and end; emits deviceChanged.
    void setDeviceActivity(const DeviceActivity& activity);

signals:
    void loadStarted(const QString& path);
    void loadFinished(const QString& path, bool ok);
    void modelLoaded();
    void modelClosed();
    void tensorSelected(const QString& name);
    void quantizedModelChanged();  // the model or showQuantized changed
    void statsOptionsChanged();
    void statsRequested(const QString& tensor);  // computation started: show a busy state
    void statsReady(std::shared_ptr<const ql::TensorStats> stats);
    void statsFailed(const QString& tensor, const QString& message);
    void busyChanged(bool busy);
    void progress(double fraction, const QString& text);
    void errorOccurred(const QString& title, const QString& message);
    void warningsOccurred(const QStringList& warnings);
    void deviceChanged();

private:
    enum class StatsChange { Selection, Bins, Outliers };
    struct DecodedTensor;
    struct StatsOutput;
    void requestStats(StatsChange change);
    void resetSelection();
    void acceptStats(std::shared_ptr<const ql::TensorStats> stats);

    JobRunner* m_jobs = nullptr;
    std::shared_ptr<const ql::Model> m_model;
    QString m_loadingPath;
    QString m_selected;
    ql::TensorStatsOptions m_options;
    std::shared_ptr<const ql::TensorStats> m_stats;
    // The last statistics of the selected tensor and their options, kept while new ones compute
    // so that a new bin count only re-bins.
    std::shared_ptr<const ql::TensorStats> m_baseStats;
    ql::TensorStatsOptions m_baseOptions;
    quint64 m_statsSerial = 0;  // results of older requests are ignored
    bool m_statsPending = false;
    std::shared_ptr<const DecodedTensor> m_decoded;  // values of the selected tensor, if kept
    std::shared_ptr<ql::TensorStatsCache> m_cache;
    std::shared_ptr<const ql::QuantizedModel> m_quantized;
    bool m_showQuantized = false;
    quint64 m_quantizedSerial = 0;  // distinguishes quantized models in the statistics cache
    ql::DeviceInfo m_device;
    DeviceActivity m_activity;
};
