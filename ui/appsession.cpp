#include "appsession.h"

#include <QFileInfo>

#include <string>

#include "io/model_loader.h"
#include "jobrunner.h"
#include "quant/ggml_dequant.h"

namespace {

const QString kLoadTag = QStringLiteral("load");
const QString kStatsTag = QStringLiteral("stats");
const QString kHistogramTag = QStringLiteral("histogram");
const QString kOutliersTag = QStringLiteral("outliers");
const QString kDeviceTag = QStringLiteral("device");

// Maps a sub-step's [0,1] onto [from, to] of the whole job, naming the step when core does not.
ql::ProgressFn subProgress(const ql::ProgressFn& progress, double from, double to, std::string what)
{
    return [progress, from, to, what = std::move(what)](double f, std::string_view text) {
        return ql::reportProgress(progress, from + (to - from) * f, text.empty() ? what : text);
    };
}

bool sameExceptBins(ql::TensorStatsOptions a, const ql::TensorStatsOptions& b)
{
    a.histogramBins = b.histogramBins;
    return a == b;
}

QString errorText(const ql::Error& error)
{
    return QStringLiteral("%1 (%2)").arg(QString::fromStdString(error.message),
                                         QString::fromUtf8(ql::errorCodeName(error.code)));
}

}  // namespace

struct AppSession::DecodedTensor {
    std::string name;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::vector<float> values;
};

struct AppSession::StatsOutput {
    std::shared_ptr<const ql::TensorStats> stats;
    std::shared_ptr<const DecodedTensor> decoded;
};

AppSession::AppSession(QObject* parent)
    : QObject(parent),
      m_jobs(new JobRunner(this)),
      m_cache(std::make_shared<ql::TensorStatsCache>())
{
    qRegisterMetaType<std::shared_ptr<const ql::TensorStats>>();
    connect(m_jobs, &JobRunner::busyChanged, this, &AppSession::busyChanged);
    connect(m_jobs, &JobRunner::progress, this,
            [this](const QString& tag, double fraction, const QString& text) {
                QString what = text;
                if (what.isEmpty()) {
                    if (tag == kLoadTag)
                        what = tr("Opening model");
                    else if (tag == kDeviceTag)
                        what = tr("Detecting compute device");
                    else
                        what = tr("Computing statistics");
                }
                emit progress(fraction, what);
            });
    m_device.name = "CPU";
}

AppSession::~AppSession()
{
    // Join the worker before the members its jobs were started from go away.
    delete m_jobs;
    m_jobs = nullptr;
}

QString AppSession::modelPath() const
{
    return m_model ? QString::fromStdString(m_model->path) : QString();
}

QString AppSession::modelDisplayName() const
{
    if (!m_model) return {};
    if (auto name = m_model->metadata.getString("general.name"); name && !name->empty())
        return QString::fromStdString(*name);
    return QFileInfo(modelPath()).fileName();
}

const ql::TensorInfo* AppSession::selectedTensorInfo() const
{
    if (!m_model || m_selected.isEmpty()) return nullptr;
    return m_model->find(m_selected.toStdString());
}

void AppSession::openModel(const QString& path)
{
    using ModelPtr = std::shared_ptr<const ql::Model>;
    m_loadingPath = path;
    emit loadStarted(path);
    m_jobs->run<ModelPtr>(
        kLoadTag, this,
        [file = path.toStdString()](const ql::ProgressFn& progress) -> ql::Result<ModelPtr> {
            auto model = ql::openModel(file, progress);
            if (!model) return model.error();
            return ModelPtr(std::make_shared<ql::Model>(std::move(model).value()));
        },
        [this, path](ql::Result<ModelPtr> result) {
            m_loadingPath.clear();
            if (!result) {
                if (result.error().code != ql::ErrorCode::Cancelled) {
                    const QString what = errorText(result.error());
                    // Core's messages usually name the file already.
                    emit errorOccurred(tr("Could not open %1").arg(QFileInfo(path).fileName()),
                                       what.contains(path) ? what : path + "\n\n" + what);
                }
                emit loadFinished(path, false);
                return;
            }
            // The old model goes only now that the new one is good.
            m_jobs->cancel(kStatsTag);
            m_jobs->cancel(kHistogramTag);
            m_jobs->cancel(kOutliersTag);
            resetSelection();
            m_quantized.reset();
            m_model = std::move(result).value();
            emit modelLoaded();
            if (!m_model->warnings.empty()) {
                QStringList warnings;
                for (const auto& w : m_model->warnings) warnings << QString::fromStdString(w);
                emit warningsOccurred(warnings);
            }
            emit loadFinished(path, true);
        });
}

void AppSession::closeModel()
{
    if (!m_model) return;
    m_jobs->cancel(kStatsTag);
    m_jobs->cancel(kHistogramTag);
    m_jobs->cancel(kOutliersTag);
    resetSelection();
    m_model.reset();
    m_quantized.reset();
    emit modelClosed();
}

void AppSession::resetSelection()
{
    ++m_statsSerial;
    m_selected.clear();
    m_stats.reset();
    m_baseStats.reset();
    m_decoded.reset();
    m_statsPending = false;
}

void AppSession::selectTensor(const QString& name)
{
    if (!m_model || name == m_selected) return;
    if (!name.isEmpty() && !m_model->find(name.toStdString())) return;
    resetSelection();
    m_selected = name;
    emit tensorSelected(name);
    requestStats(StatsChange::Selection);
}

bool AppSession::selectedIsQuantized() const
{
    if (!m_showQuantized || !m_quantized || m_selected.isEmpty()) return false;
    const ql::TensorQuantization* t = m_quantized->find(m_selected.toStdString());
    return t && !t->report.unfinished;
}

void AppSession::setQuantizedModel(std::shared_ptr<const ql::QuantizedModel> model)
{
    if (model == m_quantized) return;
    const bool wasQuantized = selectedIsQuantized();
    m_quantized = std::move(model);
    ++m_quantizedSerial;
    emit quantizedModelChanged();
    if (wasQuantized || selectedIsQuantized()) {
        // The drawn values change: decode again.
        m_decoded.reset();
        m_baseStats.reset();
        requestStats(StatsChange::Selection);
    }
}

void AppSession::setShowQuantized(bool on)
{
    if (on == m_showQuantized) return;
    const bool wasQuantized = selectedIsQuantized();
    m_showQuantized = on;
    emit quantizedModelChanged();
    if (wasQuantized != selectedIsQuantized()) {
        m_decoded.reset();
        m_baseStats.reset();
        requestStats(StatsChange::Selection);
    }
}

void AppSession::setHistogramBins(int bins)
{
    ql::TensorStatsOptions options = m_options;
    options.histogramBins = bins;
    setStatsOptions(options);
}

void AppSession::setOutlierRule(const ql::OutlierRule& rule)
{
    ql::TensorStatsOptions options = m_options;
    options.outliers = rule;
    setStatsOptions(options);
}

void AppSession::setStatsOptions(const ql::TensorStatsOptions& options)
{
    if (options == m_options) return;
    const bool onlyBins = sameExceptBins(options, m_options);
    const bool onlyOutliers = options.histogramBins == m_options.histogramBins &&
                              options.heatmapMaxRows == m_options.heatmapMaxRows &&
                              options.heatmapMaxCols == m_options.heatmapMaxCols;
    m_options = options;
    emit statsOptionsChanged();
    requestStats(onlyBins       ? StatsChange::Bins
                 : onlyOutliers ? StatsChange::Outliers
                                : StatsChange::Selection);
}

void AppSession::cancelAll()
{
    m_jobs->cancelAll();
}

void AppSession::recomputeStats()
{
    if (m_stats || m_statsPending) return;
    requestStats(StatsChange::Selection);
}

void AppSession::acceptStats(std::shared_ptr<const ql::TensorStats> stats)
{
    m_stats = stats;
    m_baseStats = stats;
    m_baseOptions = m_options;
    m_statsPending = false;
    emit statsReady(std::move(stats));
}

void AppSession::requestStats(StatsChange change)
{
    const ql::TensorInfo* info = selectedTensorInfo();
    if (!info) return;
    const quint64 serial = ++m_statsSerial;
    m_stats.reset();
    // The quantized values of the tensor, when those are shown: their own cache key.
    std::shared_ptr<const ql::QuantizedModel> quantized;
    std::string cacheKey = m_model->path;
    if (selectedIsQuantized()) {
        quantized = m_quantized;
        cacheKey += "#quantized-" + std::to_string(m_quantizedSerial);
    }

    if (auto cached = m_cache->find(cacheKey, info->name, m_options)) {
        m_jobs->cancel(kStatsTag);
        m_jobs->cancel(kHistogramTag);
        m_jobs->cancel(kOutliersTag);
        acceptStats(std::move(cached));
        return;
    }

    // Re-binning needs statistics of this tensor that differ only in the bin count; a new
    // outlier rule needs the decoded values; anything else decodes again.
    std::shared_ptr<const ql::TensorStats> previous;
    QString tag = kStatsTag;
    if (change == StatsChange::Bins && m_baseStats && sameExceptBins(m_baseOptions, m_options)) {
        previous = m_baseStats;
        tag = kHistogramTag;
    } else if (change == StatsChange::Outliers && m_decoded) {
        tag = kOutliersTag;
    }
    for (const QString& other : {kStatsTag, kHistogramTag, kOutliersTag})
        if (other != tag) m_jobs->cancel(other);

    m_statsPending = true;
    emit statsRequested(m_selected);

    auto work = [model = m_model, tensor = *info, options = m_options, decoded = m_decoded,
                 previous, quantized, cacheKey,
                 cache = m_cache](const ql::ProgressFn& progress) -> ql::Result<StatsOutput> {
        std::shared_ptr<const DecodedTensor> values = decoded;
        if (!values) {
            auto data = quantized
                            ? ql::dequantizedWeights(*quantized, tensor.name)
                            : ql::dequantizeTensor(*model, tensor,
                                                   subProgress(progress, 0.0, 0.6, "Decoding"));
            if (!data) return data.error();
            auto d = std::make_shared<DecodedTensor>();
            d->name = tensor.name;
            d->rows = tensor.rows();
            d->cols = tensor.cols();
            d->values = std::move(data).value();
            values = std::move(d);
        }
        std::shared_ptr<ql::TensorStats> stats;
        if (previous) {
            stats = std::make_shared<ql::TensorStats>(*previous);
            // Same range as core chose for the statistics ([min, max], or around a constant).
            stats->histogram = ql::computeHistogram(values->values, options.histogramBins,
                                                    previous->histogram.lo, previous->histogram.hi);
        } else {
            auto computed = ql::computeTensorStats(
                values->values, values->rows, values->cols, options,
                subProgress(progress, decoded ? 0.0 : 0.6, 1.0, "Computing statistics"));
            if (!computed) return computed.error();
            stats = std::make_shared<ql::TensorStats>(std::move(computed).value());
        }
        if (!ql::reportProgress(progress, 1.0, "Statistics done"))
            return ql::makeError(ql::ErrorCode::Cancelled, "cancelled");
        stats->tensorName = tensor.name;
        cache->insert(cacheKey, options, stats);
        return StatsOutput{std::move(stats), std::move(values)};
    };

    const QString tensorName = m_selected;
    m_jobs->run<StatsOutput>(
        tag, this, std::move(work), [this, serial, tensorName](ql::Result<StatsOutput> result) {
            if (serial != m_statsSerial) return;  // superseded
            if (!result) {
                m_statsPending = false;
                const ql::Error& e = result.error();
                emit statsFailed(tensorName, e.code == ql::ErrorCode::Cancelled ? tr("Cancelled")
                                                                                : errorText(e));
                return;
            }
            m_decoded = result->decoded;
            acceptStats(result->stats);
        });
}

void AppSession::setDeviceActivity(const DeviceActivity& activity)
{
    m_activity = activity;
    emit deviceChanged();
}

void AppSession::detectDevice()
{
    m_jobs->run<ql::DeviceInfo>(
        kDeviceTag, this,
        [](const ql::ProgressFn&) -> ql::Result<ql::DeviceInfo> {
            auto backend = ql::createBackend(ql::BackendKind::Auto);
            if (!backend) return backend.error();
            return (*backend)->device();
        },
        [this](ql::Result<ql::DeviceInfo> result) {
            if (result)
                m_device = *result;
            else
                m_device.name = "CPU";
            emit deviceChanged();
        });
}
