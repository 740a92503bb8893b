// Uniform INT-n codec. Each scale group is reduced to a UniformGrid (fp16 scale + integer zero)
// from its min/max, then every weight is rounded on that grid; per-tensor grids come from a
// prepare() pass over the whole tensor so rows can still be encoded in parallel.
#include "quant/uniform.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/ggml_dequant.h"

namespace ql {
namespace {

// fp16 storage of a scale; a scale beyond fp16's range saturates rather than becoming inf.
float roundToFp16(float x)
{
    return std::min(fp16ToFp32(fp32ToFp16(x)), 65504.0f);
}

// Nearest integer in [lo, hi], ties to even; NaN lands on lo. After the clamp |c| < 2^22, so
// adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits (no libm call).
int roundClamp(float v, int lo, int hi)
{
    float c = v > float(lo) ? v : float(lo);
    c = c < float(hi) ? c : float(hi);
    const float t = c + 12582912.0f;
    std::int32_t i;
    std::memcpy(&i, &t, sizeof i);
    return i - 0x4B400000;
}

void minMax(const float* x, std::int64_t n, float& lo, float& hi)
{
    lo = 0;
    hi = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
}

int storedOffset(const QuantFormat& f)
{
    return f.symmetric ? 1 << (f.bits - 1) : 0;
}

class UniformCodec final : public FormatCodec {
public:
    static UniformGrid gridOf(const QuantizedTensor& q, std::int64_t gi)
    {
        UniformGrid g;
        g.scale = q.scales[gi];
        g.zero = q.format.symmetric ? 0 : q.zeroPoints[gi];
        g.qmin = q.format.symmetric ? -(1 << (q.format.bits - 1)) : 0;
        g.qmax = q.format.symmetric ? (1 << (q.format.bits - 1)) - 1 : (1 << q.format.bits) - 1;
        return g;
    }

    Status prepare(const float* w, const float*, QuantizedTensor& q) const override
    {
        const auto groups = std::size_t(scaleCount(q.format, q.rows, q.cols));
        q.codes.assign(std::size_t(q.rows * q.cols), 0);
        q.scales.assign(groups, 0.0f);
        q.zeroPoints.assign(q.format.symmetric ? 0 : groups, 0);
        if (q.format.granularity == Granularity::PerTensor) {
            float lo, hi;
            minMax(w, q.rows * q.cols, lo, hi);
            const UniformGrid g = uniformGrid(lo, hi, q.format.bits, q.format.symmetric);
            q.scales[0] = g.scale;
            if (!q.format.symmetric) q.zeroPoints[0] = std::uint8_t(g.zero);
        }
        return {};
    }

    void encodeRows(const float* w, const float*, std::int64_t r0, std::int64_t r1,
                    QuantizedTensor& q) const override
    {
        const std::int64_t gs = q.groupSize();
        const std::int64_t gpr = q.groupsPerRow();
        const bool perTensor = q.format.granularity == Granularity::PerTensor;
        const int offset = storedOffset(q.format);
        for (std::int64_t r = r0; r < r1; ++r) {
            for (std::int64_t g = 0; g < gpr; ++g) {
                const std::int64_t c0 = g * gs;
                const std::int64_t len = std::min(gs, q.cols - c0);
                const float* x = w + r * q.cols + c0;
                const std::int64_t gi = perTensor ? 0 : r * gpr + g;
                if (!perTensor) {
                    float lo, hi;
                    minMax(x, len, lo, hi);
                    const UniformGrid grid = uniformGrid(lo, hi, q.format.bits, q.format.symmetric);
                    q.scales[gi] = grid.scale;
                    if (!q.format.symmetric) q.zeroPoints[gi] = std::uint8_t(grid.zero);
                }
                const UniformGrid grid = gridOf(q, gi);
                std::uint8_t* codes = q.codes.data() + r * q.cols + c0;
                for (std::int64_t i = 0; i < len; ++i)
                    codes[i] = std::uint8_t(grid.quantize(x[i]) + offset);
            }
        }
    }

    void decodeRows(const QuantizedTensor& q, std::int64_t r0, std::int64_t r1,
                    float* out) const override
    {
        const int offset = storedOffset(q.format);
        const std::int64_t gs = q.groupSize();
        for (std::int64_t r = r0; r < r1; ++r) {
            for (std::int64_t c0 = 0; c0 < q.cols; c0 += gs) {
                const UniformGrid g = gridOf(q, q.scaleIndex(r, c0));
                const std::int64_t c1 = std::min(q.cols, c0 + gs);
                for (std::int64_t c = c0; c < c1; ++c)
                    out[(r - r0) * q.cols + c] =
                        g.dequantize(int(q.codes[r * q.cols + c]) - offset);
            }
        }
    }

    std::vector<float> gridLevels(const QuantizedTensor& q, std::int64_t row,
                                  std::int64_t col) const override
    {
        const UniformGrid g = gridOf(q, q.scaleIndex(row, col));
        std::vector<float> v;
        for (int c = g.qmin; c <= g.qmax; ++c) v.push_back(g.dequantize(c));
        std::sort(v.begin(), v.end());
        v.erase(std::unique(v.begin(), v.end()), v.end());
        return v;
    }

    QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                      std::int64_t col) const override
    {
        const UniformGrid g = gridOf(q, q.scaleIndex(row, col));
        QuantStep st;
        st.scale = g.scale;
        st.zeroPoint = float(g.zero);
        st.offset = -g.scale * float(g.zero);
        st.codeMin = g.qmin;
        st.codeMax = g.qmax;
        st.scaled = g.scale > 0 ? double(weight / g.scale + float(g.zero)) : double(g.zero);
        st.rounded = std::nearbyint(st.scaled);
        st.clamped = std::clamp(st.rounded, st.codeMin, st.codeMax);
        st.code = int(q.codes[row * q.cols + col]) - storedOffset(q.format);
        st.dequantized = g.dequantize(st.code);
        st.note = q.format.symmetric
                      ? "symmetric: scale = absmax / " + std::to_string(g.qmax) + " (fp16)"
                      : "asymmetric: scale = (max - min) / " + std::to_string(g.qmax) +
                            " (fp16), zero point = round(-min / scale)";
        return st;
    }
};

}  // namespace

int UniformGrid::quantize(float x) const
{
    if (!(scale > 0)) return std::clamp(zero, qmin, qmax);
    return roundClamp(x / scale + float(zero), qmin, qmax);
}

UniformGrid uniformGrid(float lo, float hi, int bits, bool symmetric)
{
    UniformGrid g;
    if (symmetric) {
        g.qmin = -(1 << (bits - 1));
        g.qmax = (1 << (bits - 1)) - 1;
        const float amax = std::max(std::fabs(lo), std::fabs(hi));
        g.scale = std::isfinite(amax) ? roundToFp16(amax / float(g.qmax)) : 0.0f;
        return g;
    }
    g.qmin = 0;
    g.qmax = (1 << bits) - 1;
    lo = std::min(lo, 0.0f);
    hi = std::max(hi, 0.0f);
    const float range = hi - lo;
    if (!(range > 0) || !std::isfinite(range)) return g;
    g.scale = roundToFp16(range / float(g.qmax));
    if (!(g.scale > 0)) return g;  // underflowed fp16
    g.zero = roundClamp(-lo / g.scale, g.qmin, g.qmax);
    return g;
}

const FormatCodec& uniformCodec()
{
    static const UniformCodec codec;
    return codec;
}

}  // namespace ql
