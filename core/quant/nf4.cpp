// NF4 codec with optional double quantization of the absmax constants. prepare() computes every
// block's absmax (and, with double quantization, the mean, the per-256 second-level absmax and
// the 8-bit codes, which need the whole tensor); encodeRows() then only picks 4-bit levels.
#include "quant/nf4.h"

#include <algorithm>
#include <cmath>

namespace ql {
namespace {

constexpr std::array<float, 16> kNf4 = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

std::array<float, 15> makeMidpoints()
{
    std::array<float, 15> m{};
    for (int i = 0; i < 15; ++i) m[i] = (kNf4[i] + kNf4[i + 1]) * 0.5f;
    return m;
}

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for decimal
// exponents 10^-6 .. 10^0, 2^i fractions at the midpoints of linspace(0.1, 1, 2^i + 1), with both
// signs; then 0 and 1. Computed in double, stored as float.
std::array<float, 256> makeDynamicMap()
{
    std::vector<double> v;
    for (int i = 0; i < 7; ++i) {
        const int items = (1 << i) + 1;
        const double step = 0.9 / (items - 1);
        for (int k = 0; k + 1 < items; ++k) {
            const double mean = ((0.1 + k * step) + (0.1 + (k + 1) * step)) / 2.0;
            const double value = std::pow(10.0, -6 + i) * mean;
            v.push_back(value);
            v.push_back(-value);
        }
    }
    v.push_back(0.0);
    v.push_back(1.0);
    std::sort(v.begin(), v.end());
    std::array<float, 256> out{};
    for (std::size_t i = 0; i < out.size() && i < v.size(); ++i) out[i] = float(v[i]);
    return out;
}

float groupAbsMax(const float* x, std::int64_t n)
{
    float m = 0;
    for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
    return m;
}

class Nf4Codec final : public FormatCodec {
public:
    Status prepare(const float* w, const float*, QuantizedTensor& q) const override
    {
        const std::int64_t gs = q.groupSize();
        const std::int64_t gpr = q.groupsPerRow();
        const std::int64_t blocks = q.rows * gpr;
        q.codes.assign(std::size_t(q.rows * q.cols), 0);
        q.scales.assign(std::size_t(blocks), 0.0f);
        for (std::int64_t r = 0; r < q.rows; ++r)
            for (std::int64_t g = 0; g < gpr; ++g)
                q.scales[r * gpr + g] =
                    groupAbsMax(w + r * q.cols + g * gs, std::min(gs, q.cols - g * gs));
        q.scaleCodes.clear();
        q.scales2.clear();
        q.scaleOffset = 0;
        if (!q.format.doubleQuant) return {};

        double sum = 0;
        for (float a : q.scales) sum += a;
        q.scaleOffset = blocks > 0 ? float(sum / double(blocks)) : 0.0f;
        const auto& map = dynamicMap8();
        const std::int64_t runs = (blocks + kNf4DoubleQuantBlock - 1) / kNf4DoubleQuantBlock;
        q.scaleCodes.assign(std::size_t(blocks), 0);
        q.scales2.assign(std::size_t(runs), 0.0f);
        for (std::int64_t run = 0; run < runs; ++run) {
            const std::int64_t b0 = run * kNf4DoubleQuantBlock;
            const std::int64_t b1 = std::min(blocks, b0 + kNf4DoubleQuantBlock);
            float a2 = 0;
            for (std::int64_t b = b0; b < b1; ++b)
                a2 = std::max(a2, std::fabs(q.scales[b] - q.scaleOffset));
            q.scales2[run] = a2;
            const float inv = a2 > 0 ? 1.0f / a2 : 0.0f;
            for (std::int64_t b = b0; b < b1; ++b)
                q.scaleCodes[b] =
                    std::uint8_t(dynamicMap8Index((q.scales[b] - q.scaleOffset) * inv));
        }
        // From here on `scales` holds what the decoder uses; encodeRows recomputes the exact ones.
        for (std::int64_t b = 0; b < blocks; ++b)
            q.scales[b] =
                map[q.scaleCodes[b]] * q.scales2[b / kNf4DoubleQuantBlock] + q.scaleOffset;
        return {};
    }

    void encodeRows(const float* w, const float*, std::int64_t r0, std::int64_t r1,
                    QuantizedTensor& q) const override
    {
        const std::int64_t gs = q.groupSize();
        const std::int64_t gpr = q.groupsPerRow();
        for (std::int64_t r = r0; r < r1; ++r) {
            for (std::int64_t g = 0; g < gpr; ++g) {
                const std::int64_t c0 = g * gs;
                const std::int64_t len = std::min(gs, q.cols - c0);
                const float* x = w + r * q.cols + c0;
                // bitsandbytes picks the codes with the exact absmax, whatever happens to it later.
                const float absmax =
                    q.format.doubleQuant ? groupAbsMax(x, len) : q.scales[r * gpr + g];
                const float inv = absmax > 0 ? 1.0f / absmax : 0.0f;
                std::uint8_t* codes = q.codes.data() + r * q.cols + c0;
                for (std::int64_t i = 0; i < len; ++i)
                    codes[i] = std::uint8_t(nf4Index(x[i] * inv));
            }
        }
    }

    void decodeRows(const QuantizedTensor& q, std::int64_t r0, std::int64_t r1,
                    float* out) const override
    {
        const std::int64_t gs = q.groupSize();
        const std::int64_t gpr = q.groupsPerRow();
        for (std::int64_t r = r0; r < r1; ++r)
            for (std::int64_t c = 0; c < q.cols; ++c)
                out[(r - r0) * q.cols + c] =
                    kNf4[q.codes[r * q.cols + c] & 15] * q.scales[r * gpr + c / gs];
    }

    std::vector<float> gridLevels(const QuantizedTensor& q, std::int64_t row,
                                  std::int64_t col) const override
    {
        const float s = q.scales[q.scaleIndex(row, col)];
        std::vector<float> v;
        for (float l : kNf4) v.push_back(l * s);
        std::sort(v.begin(), v.end());
        v.erase(std::unique(v.begin(), v.end()), v.end());
        return v;
    }

    QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                      std::int64_t col) const override
    {
        QuantStep st;
        st.scale = q.scales[q.scaleIndex(row, col)];
        st.codeMin = -1;
        st.codeMax = 1;
        const float inv = st.scale > 0 ? 1.0f / st.scale : 0.0f;
        st.scaled = weight * inv;
        const int nearest = nf4Index(weight * inv);
        st.rounded = kNf4[nearest];
        st.clamped = kNf4[nearest];
        st.code = q.codes[row * q.cols + col] & 15;
        st.dequantized = kNf4[st.code] * st.scale;
        st.note = "NF4: nearest of the 16 NormalFloat levels to w / absmax";
        if (q.format.doubleQuant) {
            st.note += "; absmax double-quantized (8-bit dynamic code " +
                       std::to_string(q.scaleCodes[q.scaleIndex(row, col)]) + ")";
            if (st.code != nearest)
                st.note += "; the code was chosen with the exact absmax before it was compressed";
        }
        return st;
    }
};

}  // namespace

const std::array<float, 16>& nf4Levels()
{
    return kNf4;
}

int nf4Index(float x)
{
    static const std::array<float, 15> mid = makeMidpoints();
    // Count of thresholds below x (a tie stays on the lower level, as in bitsandbytes).
    if (std::isnan(x)) return 7;
    int idx = 0;
    for (float m : mid) idx += x > m ? 1 : 0;
    return idx;
}

const std::array<float, 256>& dynamicMap8()
{
    static const std::array<float, 256> map = makeDynamicMap();
    return map;
}

int dynamicMap8Index(float v)
{
    const auto& map = dynamicMap8();
    if (std::isnan(v)) v = 0;
    const auto it = std::lower_bound(map.begin(), map.end(), v);
    if (it == map.begin()) return 0;
    if (it == map.end()) return 255;
    const int hi = int(it - map.begin());
    const int lo = hi - 1;
    return (v - map[lo] <= map[hi] - v) ? lo : hi;
}

const FormatCodec& nf4Codec()
{
    static const Nf4Codec codec;
    return codec;
}

}  // namespace ql
