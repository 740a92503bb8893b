// Weight statistics for the weight explorer and `quantlens-cli inspect`: moments, a value
// histogram, per-output-row and per-input-column abs-max, outlier channels and a downsampled
// |W| heatmap. Computed in one cancellable pass over the dequantized tensor; widgets only draw
// what this returns. A cache keyed by (model path, tensor, options) avoids recomputation.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct Histogram {
    double lo = 0.0;  // left edge of bin 0
    double hi = 0.0;  // right edge of the last bin
    std::vector<std::uint64_t> counts;
    double binWidth() const { return counts.empty() ? 0.0 : (hi - lo) / counts.size(); }
};

// Values in [lo, hi]; a value equal to hi falls in the last bin; values outside are not counted.
Histogram computeHistogram(std::span<const float> values, int bins, double lo, double hi);

enum class OutlierMode { MedianMultiple, StdMultiple };
struct OutlierRule {
    OutlierMode mode = OutlierMode::MedianMultiple;
    double k = 5.0;  // channel is an outlier when absMax > k*median(absMax) or > mean + k*std
    bool operator==(const OutlierRule&) const = default;
};

struct OutlierChannels {
    double threshold = 0.0;
    std::vector<std::int32_t> indices;  // channels above the threshold, by descending abs-max
};
OutlierChannels findOutlierChannels(std::span<const float> channelAbsMax, const OutlierRule& rule);

struct Heatmap {
    int rows = 0;  // downsampled size
    int cols = 0;
    std::vector<float> values;  // row-major rows*cols, max |w| of each cell
};

struct TensorStatsOptions {
    int histogramBins = 256;
    int heatmapMaxRows = 256;
    int heatmapMaxCols = 256;
    OutlierRule outliers;
    bool operator==(const TensorStatsOptions&) const = default;
};

struct TensorStats {
    std::string tensorName;
    std::int64_t count = 0;      // finite values: every statistic below is over these
    std::int64_t nonFinite = 0;  // NaN and +-Inf values, counted here and left out elsewhere
    double min = 0, max = 0, mean = 0, std = 0;
    double kurtosis = 0;  // excess kurtosis (0 for a Gaussian)
    double absMax = 0;
    std::vector<float> rowAbsMax;  // per output row (size rows())
    std::vector<float> colAbsMax;  // per input column (size cols())
    OutlierChannels rowOutliers;
    OutlierChannels colOutliers;
    double outlierShare = 0;  // share of weights with |w - mean| > k * std (k from the rule)
    Histogram histogram;      // over [min, max]; around the value when min == max
    Heatmap heatmap;
};

// Statistics of already-decoded values with a given 2-D shape (rows x cols).
Result<TensorStats> computeTensorStats(std::span<const float> values, std::int64_t rows,
                                       std::int64_t cols, const TensorStatsOptions& options,
                                       const ProgressFn& progress = {});
// Dequantizes, then computes.
Result<TensorStats> computeTensorStats(const Model& model, const TensorInfo& tensor,
                                       const TensorStatsOptions& options,
                                       const ProgressFn& progress = {});

// Thread-safe cache of computed statistics (least recently used entries dropped past capacity).
class TensorStatsCache {
public:
    explicit TensorStatsCache(std::size_t capacity = 64) : m_capacity(capacity) {}
    std::shared_ptr<const TensorStats> find(const std::string& modelPath, const std::string& tensor,
                                            const TensorStatsOptions& options) const;
    void insert(const std::string& modelPath, const TensorStatsOptions& options,
                std::shared_ptr<const TensorStats> stats);
    void clear();

private:
    struct Entry {
        TensorStatsOptions options;
        std::shared_ptr<const TensorStats> stats;
        std::uint64_t lastUse = 0;
    };
    mutable std::mutex m_mutex;
    mutable std::uint64_t m_clock = 0;
    std::size_t m_capacity;
    mutable std::unordered_map<std::string, Entry> m_entries;  // key: model path + '\n' + tensor
};

}  // namespace ql
