// CPU reference ops (see cpu_ops.h for the numerics each one promises). The GEMMs are Eigen's,
// which parallelise through OpenMP; attention splits its work into (head, query tile) items on an
// OpenMP loop, each item doing two small GEMMs (scores = Q Kᵀ, out = P V) on the causal slice of
// the keys only. Nested inside that loop Eigen's GEMM runs single-threaded, as it must.
#include "compute/cpu_ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <numbers>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ql {

const char* ropeStyleName(RopeStyle style)
{
    switch (style) {
        case RopeStyle::AdjacentPairs: return "adjacent pairs";
        case RopeStyle::HalfSplit: return "half split (NeoX)";
    }
    return "?";
}

Result<RopeFrequencies> ropeFrequencies(const RopeParams& p)
{
    if (p.headDim <= 0 || p.headDim % 2 != 0)
        return makeError(ErrorCode::InvalidArgument,
                         "RoPE needs an even head dimension, not " + std::to_string(p.headDim));
    if (!(p.theta > 0) || !std::isfinite(p.theta))
        return makeError(ErrorCode::InvalidArgument,
                         "RoPE base (theta) must be positive, not " + std::to_string(p.theta));
    const std::int64_t half = p.headDim / 2;
    const double d = static_cast<double>(p.headDim);
    RopeFrequencies f;
    f.invFreq.resize(half);
    for (std::int64_t i = 0; i < half; ++i) f.invFreq[i] = std::pow(p.theta, -2.0 * i / d);

    const bool haveFactors = !p.freqFactors.empty();
    if (haveFactors && static_cast<std::int64_t>(p.freqFactors.size()) != half)
        return makeError(ErrorCode::Format, "rope_freqs has " +
                                                std::to_string(p.freqFactors.size()) +
                                                " entries, the head needs " + std::to_string(half));
    const std::string& type = p.scaling;
    const double factor = p.factor;
    if ((type == "linear" || type == "llama3" || type == "yarn") && !(factor > 0))
        return makeError(ErrorCode::Format,
                         "RoPE scaling factor must be positive, not " + std::to_string(factor));

    if (type.empty() || type == "dynamic") {
        // dynamic NTK only changes the base beyond the original context.
    } else if (type == "linear") {
        for (double& v : f.invFreq) v /= factor;
    } else if (type == "llama3") {
        if (!haveFactors) {
            const double old = static_cast<double>(p.originalContext);
            if (old <= 0 || !(p.highFreqFactor > p.lowFreqFactor) || !(p.lowFreqFactor > 0))
                return makeError(ErrorCode::Format,
                                 "llama3 RoPE scaling needs original_max_position_embeddings and "
                                 "high_freq_factor > low_freq_factor > 0");
            const double lowWavelen = old / p.lowFreqFactor;
            const double highWavelen = old / p.highFreqFactor;
            for (double& v : f.invFreq) {
                const double wavelen = 2 * std::numbers::pi / v;
                if (wavelen > lowWavelen) {
                    v /= factor;
                } else if (wavelen >= highWavelen) {
                    const double smooth =
                        (old / wavelen - p.lowFreqFactor) / (p.highFreqFactor - p.lowFreqFactor);
                    v = (1 - smooth) * v / factor + smooth * v;
                }
            }
        }
    } else if (type == "yarn") {
        const double old = static_cast<double>(p.originalContext);
        if (old <= 0)
            return makeError(ErrorCode::Format,
                             "yarn RoPE scaling needs original_max_position_embeddings");
        auto correctionDim = [&](double rotations) {
            return d * std::log(old / (rotations * 2 * std::numbers::pi)) / (2 * std::log(p.theta));
        };
        double low = std::max(0.0, std::floor(correctionDim(p.yarnBetaFast)));
        double high = std::min(d - 1, std::ceil(correctionDim(p.yarnBetaSlow)));
        if (low == high) high += 0.001;
        for (std::int64_t i = 0; i < half; ++i) {
            const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
            const double extrapolation = 1 - ramp;  // share of the unscaled frequency
            const double v = f.invFreq[i];
            f.invFreq[i] = v / factor * (1 - extrapolation) + v * extrapolation;
        }
        if (factor > 1) f.magnitude = 0.1 * std::log(factor) + 1.0;
    } else {
        return makeError(ErrorCode::Unsupported, "RoPE scaling \"" + type + "\" is not supported");
    }
    if (haveFactors)
        for (std::int64_t i = 0; i < half; ++i) {
            if (!(p.freqFactors[i] > 0))
                return makeError(ErrorCode::Format, "rope_freqs holds a non-positive factor");
            f.invFreq[i] /= p.freqFactors[i];
        }
    return f;
}

RopeTable makeRopeTable(const RopeFrequencies& freqs, std::int64_t firstPosition,
                        std::int64_t count)
{
    const auto half = static_cast<Eigen::Index>(freqs.invFreq.size());
    RopeTable t;
    t.style = freqs.style;
    t.firstPosition = firstPosition;
    t.cos.resize(count, half);
    t.sin.resize(count, half);
    for (std::int64_t r = 0; r < count; ++r)
        for (Eigen::Index i = 0; i < half; ++i) {
            const double angle = static_cast<double>(firstPosition + r) * freqs.invFreq[i];
            t.cos(r, i) = static_cast<float>(std::cos(angle) * freqs.magnitude);
            t.sin(r, i) = static_cast<float>(std::sin(angle) * freqs.magnitude);
        }
    return t;
}

namespace cpu {

namespace {
// When a parallel region is worth it. Forking and joining costs microseconds on idle cores, but
// on a loaded machine (shared developer boxes, ctest -j) every join waits for a descheduled thread:
// ~10 ms per region was measured on the 2-core development machine, which made stories260K 4x
// slower on two threads than on one. So only work of ~10 ms or more is split: elementwise loops
// from 4M elements, GEMMs and attention from 32M multiply-adds (Eigen alone would split a GEMM
// from 50k). Small models then run on one thread; large ones are parallel op by op.
constexpr Eigen::Index kParallelElements = 1 << 22;
constexpr double kParallelMacs = 1 << 25;

// Limits Eigen's GEMM (which asks omp_get_max_threads(), a per-thread setting) to one thread for
// the lifetime of the guard.
class SerialGemm {
public:
    explicit SerialGemm(bool serial)
    {
#ifdef _OPENMP
        if (serial && (m_saved = omp_get_max_threads()) > 1) omp_set_num_threads(1);
#endif
    }
    ~SerialGemm()
    {
#ifdef _OPENMP
        if (m_saved > 1) omp_set_num_threads(m_saved);
#endif
    }
    SerialGemm(const SerialGemm&) = delete;
    SerialGemm& operator=(const SerialGemm&) = delete;

private:
    int m_saved = 0;
};
}  // namespace

void rmsNorm(const Eigen::Ref<const MatrixXfRowMajor>& x,
             const Eigen::Ref<const Eigen::VectorXf>& weight, float eps,
             Eigen::Ref<MatrixXfRowMajor> out)
{
    assert(weight.size() == x.cols() && out.rows() == x.rows() && out.cols() == x.cols());
    const Eigen::Index rows = x.rows(), cols = x.cols();
#pragma omp parallel for if (rows * cols >= kParallelElements)
    for (Eigen::Index r = 0; r < rows; ++r) {
        double sumSq = 0;
        for (Eigen::Index c = 0; c < cols; ++c) sumSq += double(x(r, c)) * x(r, c);
        const float scale = static_cast<float>(1.0 / std::sqrt(sumSq / cols + double(eps)));
        for (Eigen::Index c = 0; c < cols; ++c) out(r, c) = weight[c] * (scale * x(r, c));
    }
}

void linear(const Eigen::Ref<const MatrixXfRowMajor>& x,
            const Eigen::Ref<const MatrixXfRowMajor>& w, const Eigen::VectorXf* bias,
            Eigen::Ref<MatrixXfRowMajor> y)
{
    assert(x.cols() == w.cols() && y.rows() == x.rows() && y.cols() == w.rows());
    const SerialGemm guard(double(x.rows()) * double(w.rows()) * double(w.cols()) < kParallelMacs);
    y.noalias() = x * w.transpose();
    if (bias) y.rowwise() += bias->transpose();
}

void applyRope(Eigen::Ref<MatrixXfRowMajor> x, std::int64_t heads, std::int64_t headDim,
               const RopeTable& table)
{
    assert(x.cols() == heads * headDim && table.cos.rows() >= x.rows() &&
           table.cos.cols() == headDim / 2);
    const std::int64_t half = headDim / 2;
    const bool adjacent = table.style == RopeStyle::AdjacentPairs;
    const Eigen::Index rows = x.rows();
#pragma omp parallel for if (rows * x.cols() >= kParallelElements)
    for (Eigen::Index r = 0; r < rows; ++r) {
        float* row = x.row(r).data();
        const float* c = table.cos.row(r).data();
        const float* s = table.sin.row(r).data();
        for (std::int64_t h = 0; h < heads; ++h) {
            float* head = row + h * headDim;
            for (std::int64_t i = 0; i < half; ++i) {
                float& a = adjacent ? head[2 * i] : head[i];
                float& b = adjacent ? head[2 * i + 1] : head[i + half];
                const float a0 = a, b0 = b;
                a = a0 * c[i] - b0 * s[i];
                b = a0 * s[i] + b0 * c[i];
            }
        }
    }
}

Status attention(const Eigen::Ref<const MatrixXfRowMajor>& q,
                 const Eigen::Ref<const MatrixXfRowMajor>& k,
                 const Eigen::Ref<const MatrixXfRowMajor>& v, std::int64_t heads,
                 std::int64_t kvHeads, std::int64_t headDim, std::int64_t firstPosition,
                 Eigen::Ref<MatrixXfRowMajor> out)
{
    const Eigen::Index T = q.rows(), S = k.rows();
    if (heads <= 0 || kvHeads <= 0 || headDim <= 0 || heads % kvHeads != 0)
        return makeError(ErrorCode::InvalidArgument, "attention: " + std::to_string(heads) +
                                                         " query heads cannot share " +
                                                         std::to_string(kvHeads) + " KV heads");
    if (q.cols() != heads * headDim || k.cols() != kvHeads * headDim || v.cols() != k.cols() ||
        v.rows() != S || out.rows() != T || out.cols() != q.cols() || firstPosition < 0 ||
        S < firstPosition + T)
        return makeError(ErrorCode::InvalidArgument,
                         "attention: inconsistent shapes (q " + std::to_string(T) + "x" +
                             std::to_string(q.cols()) + ", k " + std::to_string(S) + "x" +
                             std::to_string(k.cols()) + ", first position " +
                             std::to_string(firstPosition) + ")");
    const std::int64_t group = heads / kvHeads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(headDim));
    constexpr Eigen::Index kTile = 64;  // query rows per work item
    const Eigen::Index tiles = (T + kTile - 1) / kTile;
    const Eigen::Index items = heads * tiles;
    std::atomic<bool> outOfMemory = false;
    // Multiply-adds of Q Kᵀ and P V over the causal slice.
    const bool parallel = double(heads) * T * (2 * firstPosition + T) * headDim >= kParallelMacs;
    // The per-item GEMMs stay on one thread: nested in the parallel loop Eigen sees that by itself,
    // on the serial path it has to be told (its parallel GEMM spins on shared counters).
    const SerialGemm serialItems(!parallel);

#pragma omp parallel for schedule(dynamic) if (parallel)
    for (Eigen::Index item = 0; item < items; ++item) {
        if (outOfMemory.load(std::memory_order_relaxed)) continue;
        const Eigen::Index h = item / tiles, r0 = (item % tiles) * kTile;
        const Eigen::Index rows = std::min(kTile, T - r0);
        const Eigen::Index keys = firstPosition + r0 + rows;  // causal: nothing beyond the last row
        const Eigen::Index qc = h * headDim, kc = (h / group) * headDim;
        try {
            MatrixXfRowMajor scores(rows, keys);
            scores.noalias() =
                q.block(r0, qc, rows, headDim) * k.block(0, kc, keys, headDim).transpose();
            for (Eigen::Index i = 0; i < rows; ++i) {
                const Eigen::Index visible = firstPosition + r0 + i + 1;
                // float32 softmax. std::exp (glibc picks an FMA version at run time) is faster
                // here than Eigen's SSE2 exp; the other passes are vectorised by Eigen.
                Eigen::Map<Eigen::ArrayXf> s(scores.row(i).data(), visible);
                s *= scale;
                const float mx = s.maxCoeff();
                float* p = s.data();
                for (Eigen::Index j = 0; j < visible; ++j) p[j] = std::exp(p[j] - mx);
                s *= 1.0f / s.sum();
                scores.row(i).tail(keys - visible).setZero();
            }
            out.block(r0, qc, rows, headDim).noalias() = scores * v.block(0, kc, keys, headDim);
        } catch (const std::bad_alloc&) {
            outOfMemory = true;
        }
    }
    if (outOfMemory)
        return makeError(ErrorCode::OutOfMemory, "attention: out of memory for the score matrix");
    return {};
}

void swiglu(const Eigen::Ref<const MatrixXfRowMajor>& gate,
            const Eigen::Ref<const MatrixXfRowMajor>& up, Eigen::Ref<MatrixXfRowMajor> out)
{
    assert(gate.rows() == up.rows() && gate.cols() == up.cols() && out.rows() == gate.rows() &&
           out.cols() == gate.cols());
    const Eigen::Index rows = gate.rows(), cols = gate.cols();
#pragma omp parallel for if (rows * cols >= kParallelElements)
    for (Eigen::Index r = 0; r < rows; ++r)
        for (Eigen::Index c = 0; c < cols; ++c) {
            const float g = gate(r, c);
            out(r, c) = g / (1.0f + std::exp(-g)) * up(r, c);
        }
}

Status embeddingLookup(const Eigen::Ref<const MatrixXfRowMajor>& table,
                       std::span<const std::int32_t> ids, Eigen::Ref<MatrixXfRowMajor> out)
{
    assert(out.rows() == static_cast<Eigen::Index>(ids.size()) && out.cols() == table.cols());
    for (std::size_t t = 0; t < ids.size(); ++t) {
        if (ids[t] < 0 || ids[t] >= table.rows())
            return makeError(ErrorCode::InvalidArgument, "token id " + std::to_string(ids[t]) +
                                                             " at position " + std::to_string(t) +
                                                             " is outside the vocabulary of " +
                                                             std::to_string(table.rows()));
        out.row(static_cast<Eigen::Index>(t)) = table.row(ids[t]);
    }
    return {};
}

void softmaxRows(Eigen::Ref<MatrixXfRowMajor> x)
{
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
        const float mx = x.row(r).maxCoeff();
        float sum = 0;
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
            x(r, c) = std::exp(x(r, c) - mx);
            sum += x(r, c);
        }
        x.row(r) /= sum;
    }
}

}  // namespace cpu
}  // namespace ql
