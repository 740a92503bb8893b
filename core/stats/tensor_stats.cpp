// Weight statistics in two sweeps over the decoded tensor, each split into chunks of whole rows
// that a few threads take from an atomic counter.
//
// Sweep 1 gathers what needs no global figure: min/max, per-row and per-column abs-max, the
// heatmap cells, and the moments. Moments are exact-ish without a second read of memory: each
// row (hot in L1) gets its own mean and central sums M2..M4 in double, and rows are merged with
// the pairwise update of Chan et al. / Pébay, so neither a large mean nor a long tensor loses
// precision the way raw power sums would. Chunk moments are merged in chunk order, so the result
// does not depend on the thread count. Sweep 2 needs min/max and mean/std: the histogram over
// [min, max] and the share of weights beyond k std. NaN and Inf are counted apart and left out.
//
// Only the calling thread calls `progress` (it may touch UI state); it also does a share of the
// work. Per-thread partials (column maxima, heatmap, histogram) are combined at the end; maxima
// and integer counts do not depend on the merge order.
#include "stats/tensor_stats.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <numeric>
#include <thread>

#include "quant/ggml_dequant.h"

namespace ql {
namespace {

// Central moments of a set: count, mean and sums of (x - mean)^2, ^3, ^4.
struct Moments {
    double n = 0, mean = 0, m2 = 0, m3 = 0, m4 = 0;

    void merge(const Moments& b)
    {
        if (b.n == 0) return;
        if (n == 0) {
            *this = b;
            return;
        }
        const double na = n, nb = b.n, nn = na + nb;
        const double delta = b.mean - mean, d2 = delta * delta;
        const double m4n = m4 + b.m4 +
                           d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (nn * nn * nn) +
                           6.0 * d2 * (na * na * b.m2 + nb * nb * m2) / (nn * nn) +
                           4.0 * delta * (na * b.m3 - nb * m3) / nn;
        const double m3n = m3 + b.m3 + d2 * delta * na * nb * (na - nb) / (nn * nn) +
                           3.0 * delta * (na * b.m2 - nb * m2) / nn;
        m2 = m2 + b.m2 + d2 * na * nb / nn;
        m3 = m3n;
        m4 = m4n;
        mean += delta * nb / nn;
        n = nn;
    }
};

// Bin of `x` in `counts.size()` bins of width w over [lo, hi]: bin i holds lo + i*w <= x <
// lo + (i+1)*w, the last bin also everything up to hi. -1 outside [lo, hi] and for NaN.
// The first guess multiplies by 1/w; the fix-ups make it agree with the edges exactly.
struct Binner {
    double lo, hi, width, inverse;
    int bins;

    Binner(double lo_, double hi_, int bins_) : lo(lo_), hi(hi_), bins(bins_)
    {
        width = bins > 0 ? (hi - lo) / bins : 0.0;
        inverse = width > 0 ? 1.0 / width : 0.0;
    }
    int operator()(double x) const
    {
        if (!(x >= lo && x <= hi) || bins <= 0) return -1;
        if (!(width > 0)) return bins - 1;  // lo == hi: the value equals hi
        double guess = (x - lo) * inverse;
        int i = guess >= bins ? bins - 1 : int(guess);
        while (i > 0 && x < lo + i * width) --i;
        while (i < bins - 1 && x >= lo + (i + 1) * width) ++i;
        return i;
    }
};

// Runs fn(threadIndex, chunk) for every chunk in [0, chunks) on up to `threads` threads; the
// calling thread (index 0) works too and reports progress in [p0, p1]. False when cancelled.
template <class Fn>
bool forEachChunk(std::int64_t chunks, unsigned threads, const ProgressFn& progress, double p0,
                  double p1, std::string_view what, Fn&& fn)
{
    std::atomic<std::int64_t> next{0}, done{0};
    std::atomic<bool> cancelled{false};
    auto work = [&](unsigned index, bool reports) {
        for (std::int64_t c; !cancelled.load(std::memory_order_relaxed) &&
                             (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
            fn(index, c);
            const std::int64_t d = done.fetch_add(1, std::memory_order_relaxed) + 1;
            // p1 itself is the caller's to report: a stop asked for once every chunk is done
            // would throw finished work away.
            if (reports && d < chunks &&
                !reportProgress(progress, p0 + (p1 - p0) * double(d) / double(chunks), what))
                cancelled = true;
        }
    };
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) {
        try {
            pool.emplace_back(work, i, false);
        } catch (const std::system_error&) {
            break;
        }
    }
    if (!reportProgress(progress, p0, what)) cancelled = true;
    work(0, true);
    for (std::thread& t : pool) t.join();
    return !cancelled;
}

unsigned threadsFor(std::int64_t chunks)
{
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    return unsigned(std::clamp<std::int64_t>(chunks, 1, hw));
}

Error cancelledError(std::string_view what)
{
    return makeError(ErrorCode::Cancelled, std::string(what) + " was cancelled");
}

double median(std::vector<float> v)
{
    if (v.empty()) return 0.0;
    const std::size_t mid = v.size() / 2;
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(mid), v.end());
    const double upper = v[mid];
    if (v.size() % 2) return upper;
    const double lower = *std::max_element(v.begin(), v.begin() + std::ptrdiff_t(mid));
    return 0.5 * (lower + upper);
}

// Per-thread partial results of sweep 1.
struct SweepOnePartial {
    std::vector<float> colAbsMax;
    std::vector<float> heat;
    float min = std::numeric_limits<float>::infinity();
    float max = -std::numeric_limits<float>::infinity();
    std::int64_t nonFinite = 0;
};

// Per-thread partial results of sweep 2.
struct SweepTwoPartial {
    std::vector<std::uint64_t> counts;
    std::int64_t beyond = 0;
};

}  // namespace

Histogram computeHistogram(std::span<const float> values, int bins, double lo, double hi)
{
    Histogram h;
    h.lo = lo;
    h.hi = hi;
    if (bins <= 0 || !(lo <= hi)) return h;
    h.counts.assign(std::size_t(bins), 0);
    const Binner bin(lo, hi, bins);
    constexpr std::int64_t kChunk = 1 << 16;
    const std::int64_t n = std::int64_t(values.size());
    const std::int64_t chunks = (n + kChunk - 1) / kChunk;
    const unsigned threads = threadsFor(chunks);
    std::vector<std::vector<std::uint64_t>> partial(threads, std::vector<std::uint64_t>(bins, 0));
    forEachChunk(chunks, threads, {}, 0, 1, {}, [&](unsigned t, std::int64_t c) {
        std::uint64_t* counts = partial[t].data();
        const std::int64_t end = std::min(n, (c + 1) * kChunk);
        for (std::int64_t i = c * kChunk; i < end; ++i) {
            const int b = bin(values[std::size_t(i)]);
            if (b >= 0) ++counts[b];
        }
    });
    for (const auto& p : partial)
        for (int b = 0; b < bins; ++b) h.counts[std::size_t(b)] += p[std::size_t(b)];
    return h;
}

OutlierChannels findOutlierChannels(std::span<const float> channelAbsMax, const OutlierRule& rule)
{
    OutlierChannels out;
    if (channelAbsMax.empty()) return out;
    if (rule.mode == OutlierMode::MedianMultiple) {
        out.threshold =
            rule.k * median(std::vector<float>(channelAbsMax.begin(), channelAbsMax.end()));
    } else {
        Moments m;
        for (float v : channelAbsMax) m.merge(Moments{1, v, 0, 0, 0});
        out.threshold = m.mean + rule.k * std::sqrt(m.m2 / m.n);
    }
    for (std::size_t i = 0; i < channelAbsMax.size(); ++i)
        if (double(channelAbsMax[i]) > out.threshold) out.indices.push_back(std::int32_t(i));
    std::stable_sort(out.indices.begin(), out.indices.end(), [&](std::int32_t a, std::int32_t b) {
        return channelAbsMax[std::size_t(a)] > channelAbsMax[std::size_t(b)];
    });
    return out;
}

Result<TensorStats> computeTensorStats(std::span<const float> values, std::int64_t rows,
                                       std::int64_t cols, const TensorStatsOptions& options,
                                       const ProgressFn& progress)
{
    if (rows < 1 || cols < 1 || std::int64_t(values.size()) / rows != cols ||
        std::int64_t(values.size()) % rows != 0)
        return makeError(ErrorCode::InvalidArgument,
                         "statistics of " + std::to_string(values.size()) +
                             " values cannot have the shape " + std::to_string(rows) + " x " +
                             std::to_string(cols));
    if (options.histogramBins < 1 || options.histogramBins > (1 << 24) ||
        options.heatmapMaxRows < 1 || options.heatmapMaxCols < 1)
        return makeError(ErrorCode::InvalidArgument,
                         "statistics need at least one histogram bin (at most 2^24) and a heatmap "
                         "of at least 1 x 1");
    if (!(options.outliers.k >= 0) || !std::isfinite(options.outliers.k))
        return makeError(ErrorCode::InvalidArgument, "the outlier factor k must be >= 0");

    try {
        TensorStats s;
        const int hr = int(std::min<std::int64_t>(rows, options.heatmapMaxRows));
        const int hc = int(std::min<std::int64_t>(cols, options.heatmapMaxCols));
        // Cell of row r is r*hr/rows: cells cover contiguous, near-equal ranges.
        std::vector<std::int32_t> colCell(std::size_t(cols), 0);
        for (std::int64_t c = 0; c < cols; ++c)
            colCell[std::size_t(c)] = std::int32_t(c * hc / cols);

        const std::int64_t rowsPerChunk = std::max<std::int64_t>(1, (1 << 16) / cols);
        const std::int64_t chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        const unsigned threads = threadsFor(chunks);

        s.rowAbsMax.assign(std::size_t(rows), 0.0f);
        std::vector<Moments> chunkMoments(static_cast<std::size_t>(chunks));
        std::vector<SweepOnePartial> one(threads);
        for (auto& p : one) {
            p.colAbsMax.assign(std::size_t(cols), 0.0f);
            p.heat.assign(std::size_t(hr) * std::size_t(hc), 0.0f);
        }

        const bool done1 = forEachChunk(
            chunks, threads, progress, 0.0, 0.6, "Statistics", [&](unsigned t, std::int64_t chunk) {
                SweepOnePartial& p = one[t];
                Moments& cm = chunkMoments[std::size_t(chunk)];
                float* col = p.colAbsMax.data();
                const std::int32_t* cell = colCell.data();
                const std::int64_t r1 = std::min(rows, (chunk + 1) * rowsPerChunk);
                for (std::int64_t r = chunk * rowsPerChunk; r < r1; ++r) {
                    const float* row = values.data() + r * cols;
                    float* heat = p.heat.data() + std::size_t(r * hr / rows) * std::size_t(hc);
                    double sum = 0;
                    std::int64_t n = 0;
                    float rowMax = 0, mn = p.min, mx = p.max;
                    for (std::int64_t c = 0; c < cols; ++c) {
                        const float x = row[c];
                        if (!std::isfinite(x)) {
                            ++p.nonFinite;
                            continue;
                        }
                        const float a = std::fabs(x);
                        sum += x;
                        ++n;
                        rowMax = std::max(rowMax, a);
                        mn = std::min(mn, x);
                        mx = std::max(mx, x);
                        col[c] = std::max(col[c], a);
                        float& h = heat[cell[c]];
                        h = std::max(h, a);
                    }
                    p.min = mn;
                    p.max = mx;
                    s.rowAbsMax[std::size_t(r)] = rowMax;
                    if (n == 0) continue;
                    Moments m;
                    m.n = double(n);
                    m.mean = sum / double(n);
                    for (std::int64_t c = 0; c < cols; ++c) {
                        const float x = row[c];
                        if (!std::isfinite(x)) continue;
                        const double d = double(x) - m.mean, d2 = d * d;
                        m.m2 += d2;
                        m.m3 += d2 * d;
                        m.m4 += d2 * d2;
                    }
                    cm.merge(m);
                }
            });
        if (!done1) return cancelledError("computing statistics");

        Moments total;
        for (const Moments& m : chunkMoments) total.merge(m);
        s.colAbsMax.assign(std::size_t(cols), 0.0f);
        s.heatmap.rows = hr;
        s.heatmap.cols = hc;
        s.heatmap.values.assign(std::size_t(hr) * std::size_t(hc), 0.0f);
        double mn = std::numeric_limits<double>::infinity(), mx = -mn;
        for (const SweepOnePartial& p : one) {
            for (std::int64_t c = 0; c < cols; ++c)
                s.colAbsMax[std::size_t(c)] =
                    std::max(s.colAbsMax[std::size_t(c)], p.colAbsMax[std::size_t(c)]);
            for (std::size_t i = 0; i < p.heat.size(); ++i)
                s.heatmap.values[i] = std::max(s.heatmap.values[i], p.heat[i]);
            mn = std::min(mn, double(p.min));
            mx = std::max(mx, double(p.max));
            s.nonFinite += p.nonFinite;
        }
        one.clear();
        one.shrink_to_fit();

        s.count = std::int64_t(total.n);
        if (s.count > 0) {
            s.min = mn;
            s.max = mx;
            s.mean = total.mean;
            s.std = std::sqrt(total.m2 / total.n);
            s.kurtosis = total.m2 > 0 ? total.n * total.m4 / (total.m2 * total.m2) - 3.0 : 0.0;
            s.absMax = std::max(std::fabs(mn), std::fabs(mx));
        }
        s.rowOutliers = findOutlierChannels(s.rowAbsMax, options.outliers);
        s.colOutliers = findOutlierChannels(s.colAbsMax, options.outliers);

        // A constant tensor gets a range around its value, so that the value sits mid-histogram.
        double lo = s.min, hi = s.max;
        if (!(hi > lo)) {
            const double half = 0.5 * std::max(1.0, std::fabs(lo));
            lo -= half;
            hi += half;
        }
        const Binner bin(lo, hi, options.histogramBins);
        const double beyond = options.outliers.k * s.std;
        std::vector<SweepTwoPartial> two(threads);
        for (auto& p : two) p.counts.assign(std::size_t(options.histogramBins), 0);
        const bool done2 = forEachChunk(
            chunks, threads, progress, 0.6, 1.0, "Statistics", [&](unsigned t, std::int64_t chunk) {
                SweepTwoPartial& p = two[t];
                const std::int64_t e0 = chunk * rowsPerChunk * cols;
                const std::int64_t e1 = std::min(rows, (chunk + 1) * rowsPerChunk) * cols;
                for (std::int64_t i = e0; i < e1; ++i) {
                    const double x = values[std::size_t(i)];
                    if (!std::isfinite(x)) continue;
                    if (const int b = bin(x); b >= 0) ++p.counts[std::size_t(b)];
                    if (std::fabs(x - s.mean) > beyond) ++p.beyond;
                }
            });
        if (!done2) return cancelledError("computing statistics");

        s.histogram.lo = lo;
        s.histogram.hi = hi;
        s.histogram.counts.assign(std::size_t(options.histogramBins), 0);
        std::int64_t beyondCount = 0;
        for (const SweepTwoPartial& p : two) {
            for (std::size_t b = 0; b < p.counts.size(); ++b) s.histogram.counts[b] += p.counts[b];
            beyondCount += p.beyond;
        }
        s.outlierShare = s.count > 0 ? double(beyondCount) / double(s.count) : 0.0;
        reportProgress(progress, 1.0, "Statistics");
        return s;
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory computing statistics of a " +
                                                     std::to_string(rows) + " x " +
                                                     std::to_string(cols) + " tensor");
    }
}

Result<TensorStats> computeTensorStats(const Model& model, const TensorInfo& tensor,
                                       const TensorStatsOptions& options,
                                       const ProgressFn& progress)
{
    auto part = [&](double p0, double p1) -> ProgressFn {
        if (!progress) return {};
        return [&progress, p0, p1](double f, std::string_view what) {
            return progress(p0 + (p1 - p0) * f, what);
        };
    };
    auto values = dequantizeTensor(model, tensor, part(0.0, 0.4));
    if (!values) return values.error();
    auto stats = computeTensorStats(*values, tensor.rows(), tensor.cols(), options, part(0.4, 1.0));
    if (!stats) {
        Error e = stats.error();
        e.message = tensor.name + ": " + e.message;
        return e;
    }
    stats->tensorName = tensor.name;
    return stats;
}

// --- cache ------------------------------------------------------------------------------------

std::shared_ptr<const TensorStats> TensorStatsCache::find(const std::string& modelPath,
                                                          const std::string& tensor,
                                                          const TensorStatsOptions& options) const
{
    std::lock_guard lock(m_mutex);
    auto it = m_entries.find(modelPath + '\n' + tensor);
    if (it == m_entries.end() || !(it->second.options == options)) return nullptr;
    it->second.lastUse = ++m_clock;
    return it->second.stats;
}

void TensorStatsCache::insert(const std::string& modelPath, const TensorStatsOptions& options,
                              std::shared_ptr<const TensorStats> stats)
{
    if (!stats) return;
    std::lock_guard lock(m_mutex);
    Entry& e = m_entries[modelPath + '\n' + stats->tensorName];
    e.options = options;
    e.stats = std::move(stats);
    e.lastUse = ++m_clock;
    while (m_entries.size() > m_capacity) {  // capacity 0 keeps nothing
        auto oldest = m_entries.begin();
        for (auto it = m_entries.begin(); it != m_entries.end(); ++it)
            if (it->second.lastUse < oldest->second.lastUse) oldest = it;
        m_entries.erase(oldest);
    }
}

void TensorStatsCache::clear()
{
    std::lock_guard lock(m_mutex);
    m_entries.clear();
}

}  // namespace ql
