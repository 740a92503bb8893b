// Accumulators are plain sums (double for the per-channel moments) so that merge() is exact and
// the CPU and GPU paths can be compared. The Hessian uses Eigen's rank update (X^T X).
#include "calib/activation_stats.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

#include "util/serial_threads.h"

namespace ql {

std::uint64_t SymmetricHistogram::total() const
{
    std::uint64_t n = 0;
    for (auto c : counts) n += c;
    return n;
}

ActivationStats::ActivationStats(std::int32_t channels, HessianPrecision hessian, int histogramBins,
                                 int topK)
    : m_channels(channels),
      m_topK(topK),
      m_absMax(channels, 0.0f),
      m_sumAbs(channels, 0.0),
      m_sumSq(channels, 0.0),
      m_hessianPrecision(hessian)
{
    m_hist.counts.assign(std::max(2, histogramBins + (histogramBins & 1)), 0);
    if (hessian == HessianPrecision::Float32)
        m_hessianF32.assign(static_cast<std::size_t>(channels) * channels, 0.0f);
    else if (hessian == HessianPrecision::Float64)
        m_hessianF64.assign(static_cast<std::size_t>(channels) * channels, 0.0);
}

void ActivationStats::growRange(double needed)
{
    if (m_hist.range == 0) {
        // First data: a power of two at or above the needed range keeps doubling exact.
        m_hist.range = std::exp2(std::ceil(std::log2(std::max(needed, 1e-30))));
        return;
    }
    const std::size_t n = m_hist.counts.size();
    while (m_hist.range < needed) {
        // Double the range: the old bins occupy the middle half; merge pairs into it.
        std::vector<std::uint64_t> next(n, 0);
        for (std::size_t i = 0; i < n; ++i) next[n / 4 + i / 2] += m_hist.counts[i];
        m_hist.counts.swap(next);
        m_hist.range *= 2;
    }
}

void ActivationStats::pushTop(const TopActivation& a)
{
    if (m_topK <= 0) return;
    auto absLess = [](const TopActivation& x, const TopActivation& y) {
        return std::fabs(x.value) > std::fabs(y.value);
    };
    if (static_cast<int>(m_top.size()) == m_topK &&
        std::fabs(a.value) <= std::fabs(m_top.back().value))
        return;
    m_top.insert(std::upper_bound(m_top.begin(), m_top.end(), a, absLess), a);
    if (static_cast<int>(m_top.size()) > m_topK) m_top.pop_back();
}

void ActivationStats::add(std::span<const float> x, std::int64_t tokens, std::int32_t sample,
                          std::int32_t firstPosition)
{
    assert(x.size() == static_cast<std::size_t>(tokens) * m_channels);
    const std::int32_t c = m_channels;
    float batchMax = 0;
    for (std::int64_t t = 0; t < tokens; ++t) {
        const float* row = x.data() + t * c;
        for (std::int32_t j = 0; j < c; ++j) {
            float a = std::fabs(row[j]);
            if (!(a <= std::numeric_limits<float>::max())) continue;  // NaN/inf skipped
            m_absMax[j] = std::max(m_absMax[j], a);
            m_sumAbs[j] += a;
            m_sumSq[j] += static_cast<double>(row[j]) * row[j];
            batchMax = std::max(batchMax, a);
        }
    }
    if (batchMax > m_hist.range) growRange(batchMax);
    const std::size_t n = m_hist.counts.size();
    const double scale = n / (2 * m_hist.range);
    // With topK == 0 the list stays empty (and has no back() to read).
    float topFloor = m_topK > 0 && static_cast<int>(m_top.size()) == m_topK
                         ? std::fabs(m_top.back().value)
                         : -1.0f;
    for (std::int64_t t = 0; t < tokens; ++t) {
        const float* row = x.data() + t * c;
        for (std::int32_t j = 0; j < c; ++j) {
            float v = row[j];
            if (!std::isfinite(v)) continue;
            // At range 0 every finite value is zero (any other would have set the range); zero
            // is in the middle bin at every range, so later growth leaves it in place.
            const auto bin = m_hist.range > 0
                                 ? static_cast<std::int64_t>((v + m_hist.range) * scale)
                                 : static_cast<std::int64_t>(n / 2);
            m_hist.counts[std::clamp<std::int64_t>(bin, 0, n - 1)]++;
            if (m_topK > 0 && std::fabs(v) > topFloor) {
                pushTop({v, j, sample, firstPosition + static_cast<std::int32_t>(t)});
                if (static_cast<int>(m_top.size()) == m_topK)
                    topFloor = std::fabs(m_top.back().value);
            }
        }
    }
    if (m_hessianPrecision != HessianPrecision::None && tokens > 0) {
        const SerialThreads serial(double(tokens) * c * c < kSerialMacs);
        using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        Eigen::Map<const RowMat> X(x.data(), tokens, c);
        if (m_hessianPrecision == HessianPrecision::Float32) {
            Eigen::Map<Eigen::MatrixXf> H(m_hessianF32.data(), c, c);
            H.noalias() += X.transpose() * X;
        } else {
            Eigen::Map<Eigen::MatrixXd> H(m_hessianF64.data(), c, c);
            Eigen::MatrixXd Xd = X.cast<double>();
            H.noalias() += Xd.transpose() * Xd;
        }
    }
    m_tokens += tokens;
}

Status ActivationStats::merge(const ActivationStats& other)
{
    if (other.m_channels != m_channels || other.m_hist.counts.size() != m_hist.counts.size() ||
        other.m_hessianPrecision != m_hessianPrecision)
        return makeError(ErrorCode::InvalidArgument,
                         "cannot merge activation statistics of different shape");
    for (std::int32_t j = 0; j < m_channels; ++j) {
        m_absMax[j] = std::max(m_absMax[j], other.m_absMax[j]);
        m_sumAbs[j] += other.m_sumAbs[j];
        m_sumSq[j] += other.m_sumSq[j];
    }
    // Bring both histograms to the larger range (ranges are powers of two, so this is exact).
    SymmetricHistogram theirs = other.m_hist;
    if (theirs.range > m_hist.range) growRange(theirs.range);
    const std::size_t n = theirs.counts.size();
    while (theirs.range > 0 && theirs.range < m_hist.range) {
        std::vector<std::uint64_t> next(n, 0);
        for (std::size_t i = 0; i < n; ++i) next[n / 4 + i / 2] += theirs.counts[i];
        theirs.counts.swap(next);
        theirs.range *= 2;
    }
    // (At range 0 their counts are zeros in the middle bin, which is right at any range.)
    for (std::size_t i = 0; i < n; ++i) m_hist.counts[i] += theirs.counts[i];
    for (const auto& a : other.m_top) pushTop(a);
    for (std::size_t i = 0; i < m_hessianF32.size(); ++i) m_hessianF32[i] += other.m_hessianF32[i];
    for (std::size_t i = 0; i < m_hessianF64.size(); ++i) m_hessianF64[i] += other.m_hessianF64[i];
    m_tokens += other.m_tokens;
    return {};
}

std::vector<double> ActivationStats::channelMeanAbs() const
{
    std::vector<double> out(m_channels, 0.0);
    if (m_tokens > 0)
        for (std::int32_t j = 0; j < m_channels; ++j) out[j] = m_sumAbs[j] / m_tokens;
    return out;
}

std::vector<double> ActivationStats::channelMeanSquare() const
{
    std::vector<double> out(m_channels, 0.0);
    if (m_tokens > 0)
        for (std::int32_t j = 0; j < m_channels; ++j) out[j] = m_sumSq[j] / m_tokens;
    return out;
}

std::vector<double> ActivationStats::hessian() const
{
    if (m_hessianPrecision == HessianPrecision::Float64) return m_hessianF64;
    return std::vector<double>(m_hessianF32.begin(), m_hessianF32.end());
}

ActivationStats ActivationStats::fromParts(std::int32_t channels, std::int64_t tokens,
                                           std::vector<float> absMax, std::vector<double> sumAbs,
                                           std::vector<double> sumSq, SymmetricHistogram hist,
                                           std::vector<TopActivation> top,
                                           HessianPrecision precision, std::vector<double> hessian,
                                           int topK)
{
    ActivationStats s;
    s.m_channels = channels;
    s.m_tokens = tokens;
    s.m_topK = topK;
    s.m_absMax = std::move(absMax);
    s.m_sumAbs = std::move(sumAbs);
    s.m_sumSq = std::move(sumSq);
    s.m_hist = std::move(hist);
    s.m_top = std::move(top);
    s.m_hessianPrecision = precision;
    if (precision == HessianPrecision::Float32)
        s.m_hessianF32.assign(hessian.begin(), hessian.end());
    else if (precision == HessianPrecision::Float64)
        s.m_hessianF64 = std::move(hessian);
    return s;
}

ActivationStats ActivationStats::fromParts(std::int32_t channels, std::int64_t tokens,
                                           std::vector<float> absMax, std::vector<double> sumAbs,
                                           std::vector<double> sumSq, SymmetricHistogram hist,
                                           std::vector<TopActivation> top,
                                           std::vector<float> hessianF32, int topK)
{
    ActivationStats s =
        fromParts(channels, tokens, std::move(absMax), std::move(sumAbs), std::move(sumSq),
                  std::move(hist), std::move(top), HessianPrecision::Float32, {}, topK);
    s.m_hessianF32 = std::move(hessianF32);
    return s;
}

const char* rangeMethodName(RangeMethod method)
{
    switch (method) {
        case RangeMethod::MinMax: return "min-max";
        case RangeMethod::Percentile999: return "percentile 99.9";
        case RangeMethod::Percentile9999: return "percentile 99.99";
        case RangeMethod::Mse: return "MSE-optimal";
        case RangeMethod::Entropy: return "entropy (KL)";
    }
    return "?";
}

namespace {

// |x| histogram: bins over [0, range], folded from the symmetric one.
std::vector<double> foldAbs(const SymmetricHistogram& hist)
{
    const std::size_t n = hist.counts.size(), half = n / 2;
    std::vector<double> abs(half, 0.0);
    for (std::size_t i = 0; i < half; ++i)
        abs[i] = double(hist.counts[half + i]) + double(hist.counts[half - 1 - i]);
    return abs;
}

double clippedShareAt(const std::vector<double>& abs, std::size_t edge, double total)
{
    double beyond = 0;
    for (std::size_t i = edge; i < abs.size(); ++i) beyond += abs[i];
    return total > 0 ? beyond / total : 0;
}

double klDivergence(const std::vector<double>& p, const std::vector<double>& q)
{
    double ps = 0, qs = 0;
    for (double v : p) ps += v;
    for (double v : q) qs += v;
    if (ps <= 0 || qs <= 0) return std::numeric_limits<double>::infinity();
    double kl = 0;
    for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] <= 0) continue;
        double pi = p[i] / ps, qi = q[i] / qs;
        if (qi <= 0) qi = 1e-12;  // smoothing: P has mass Q cannot express
        kl += pi * std::log(pi / qi);
    }
    return kl;
}

}  // namespace

double quantizationMse(const SymmetricHistogram& hist, double clip, int bits)
{
    const double total = double(hist.total());
    if (total == 0 || clip <= 0) return 0;
    const double qmax = std::exp2(bits - 1) - 1;
    const double step = clip / qmax;
    const double w = hist.binWidth();
    double err = 0;
    for (std::size_t i = 0; i < hist.counts.size(); ++i) {
        if (!hist.counts[i]) continue;
        double v = hist.binCenter(i);
        double q = std::clamp(std::nearbyint(v / step), -qmax, qmax) * step;
        // Values spread over the bin add w^2/12 when inside the range (rounding error dominates
        // there only when the step is below the bin width).
        double inBin = std::fabs(v) < clip ? std::min(w * w, step * step) / 12.0 : 0.0;
        err += hist.counts[i] * ((v - q) * (v - q) + inBin);
    }
    return err / total;
}

std::vector<ActivationRange> computeActivationRanges(const SymmetricHistogram& hist, int bits)
{
    std::vector<ActivationRange> out;
    const std::vector<double> abs = foldAbs(hist);
    double total = 0;
    for (double v : abs) total += v;
    const double w = hist.binWidth();
    if (total == 0 || abs.empty()) return out;
    std::size_t lastNonZero = 0;
    for (std::size_t i = 0; i < abs.size(); ++i)
        if (abs[i] > 0) lastNonZero = i;

    auto make = [&](RangeMethod m, std::size_t edge) {
        ActivationRange r;
        r.method = m;
        r.clip = edge * w;
        r.mse = quantizationMse(hist, r.clip, bits);
        r.clippedShare = clippedShareAt(abs, edge, total);
        out.push_back(r);
    };
    make(RangeMethod::MinMax, lastNonZero + 1);
    for (auto [m, p] : {std::pair{RangeMethod::Percentile999, 0.999},
                        std::pair{RangeMethod::Percentile9999, 0.9999}}) {
        double acc = 0;
        std::size_t edge = abs.size();
        for (std::size_t i = 0; i < abs.size(); ++i) {
            acc += abs[i];
            if (acc >= p * total) {
                edge = i + 1;
                break;
            }
        }
        make(m, edge);
    }
    {  // MSE-optimal: scan clip edges.
        std::size_t best = lastNonZero + 1;
        double bestErr = std::numeric_limits<double>::infinity();
        for (std::size_t e = 1; e <= lastNonZero + 1; ++e) {
            double err = quantizationMse(hist, e * w, bits);
            if (err < bestErr) {
                bestErr = err;
                best = e;
            }
        }
        make(RangeMethod::Mse, best);
    }
    {  // Entropy: TensorRT-style search for the clip minimizing KL(P || Q) over the |x| histogram.
        const std::size_t levels = static_cast<std::size_t>(std::exp2(bits - 1));
        std::size_t best = lastNonZero + 1;
        double bestKl = std::numeric_limits<double>::infinity();
        for (std::size_t i = std::min(levels, lastNonZero + 1); i <= lastNonZero + 1; ++i) {
            std::vector<double> p(abs.begin(), abs.begin() + i);
            for (std::size_t k = i; k < abs.size(); ++k) p[i - 1] += abs[k];
            std::vector<double> q(i, 0.0);
            // Merge the first i bins into `levels` chunks and spread each chunk's mass over the
            // bins that were non-empty.
            for (std::size_t l = 0; l < levels; ++l) {
                std::size_t lo = l * i / levels, hi = (l + 1) * i / levels;
                if (hi <= lo) continue;
                double mass = 0;
                std::size_t nonEmpty = 0;
                for (std::size_t k = lo; k < hi; ++k) {
                    mass += abs[k];
                    nonEmpty += abs[k] > 0;
                }
                if (!nonEmpty) continue;
                for (std::size_t k = lo; k < hi; ++k)
                    if (abs[k] > 0) q[k] = mass / nonEmpty;
            }
            double kl = klDivergence(p, q);
            if (kl < bestKl) {
                bestKl = kl;
                best = i;
            }
        }
        make(RangeMethod::Entropy, best);
    }
    return out;
}

}  // namespace ql
