// FP8 / FP4 element conversions and the MXFP4, NVFP4 and FP8 tensor codecs.
//
// One table-free minifloat description (exponent bits, mantissa bits, bias, how the top exponent
// is used) drives decoding and encoding of E4M3 and E5M2. Encoding works on float32's bits:
// normals round the 23-bit mantissa to the target's width (nearest, ties to even) with one
// integer addition whose carry moves into the exponent by itself; subnormals round a rescaled
// value with the 1.5 * 2^23 trick; everything past the largest finite value saturates. E2M1 is
// a branch-free count of decision thresholds. The tests check both against brute-force nearest
// search over every code.
#include "quant/fp_formats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace ql {
namespace {

struct MiniFloat {
    int ebits;
    int mbits;
    int bias;
    bool ieeeSpecials;     // top exponent: infinity (mantissa 0) or NaN
    bool fnNan;            // only the all-ones magnitude is NaN (E4M3fn)
    std::uint32_t maxMag;  // magnitude code of the largest finite value
    float minNormal;       // 2^(1 - bias)
    float subnormalScale;  // 2^(mbits - 1 + bias): subnormal value -> its integer mantissa
};

constexpr MiniFloat kE4M3{4, 3, 7, false, true, 0x7E, 0.015625f, 512.0f};
constexpr MiniFloat kE5M2{5, 2, 15, true, false, 0x7B, 6.103515625e-05f, 65536.0f};
constexpr MiniFloat kE2M1{2, 1, 1, false, false, 0x7, 1.0f, 2.0f};

int signShift(const MiniFloat& f)
{
    return f.ebits + f.mbits;
}

double magnitudeValue(const MiniFloat& f, std::uint32_t mag)
{
    const std::uint32_t e = mag >> f.mbits;
    const std::uint32_t m = mag & ((1u << f.mbits) - 1);
    if (e == 0) return std::ldexp(double(m), 1 - f.bias - f.mbits);
    return std::ldexp(double((1u << f.mbits) + m), int(e) - f.bias - f.mbits);
}

float decodeMini(const MiniFloat& f, std::uint32_t code)
{
    const bool negative = (code >> signShift(f)) & 1;
    const std::uint32_t mag = code & ((1u << signShift(f)) - 1);
    const std::uint32_t e = mag >> f.mbits;
    const std::uint32_t emax = (1u << f.ebits) - 1;
    float v;
    if (f.ieeeSpecials && e == emax) {
        v = (mag & ((1u << f.mbits) - 1)) == 0 ? std::numeric_limits<float>::infinity()
                                               : std::numeric_limits<float>::quiet_NaN();
    } else if (f.fnNan && mag == (1u << signShift(f)) - 1) {
        v = std::numeric_limits<float>::quiet_NaN();
    } else {
        v = float(magnitudeValue(f, mag));
    }
    return negative ? -v : v;
}

// x rounded to the format's precision with an unbounded exponent range above (for the
// teaching view's "rounded" step), in double.
double roundUnbounded(const MiniFloat& f, double x)
{
    if (!std::isfinite(x)) return x;
    const double a = std::fabs(x);
    const int minNormalExp = 1 - f.bias;
    double r;
    if (a < std::ldexp(1.0, minNormalExp)) {
        r = std::ldexp(std::nearbyint(std::ldexp(a, f.mbits - minNormalExp)),
                       minNormalExp - f.mbits);
    } else {
        int k = 0;
        std::frexp(a, &k);
        const int e = k - 1;
        r = std::ldexp(std::nearbyint(std::ldexp(a, f.mbits - e)), e - f.mbits);
    }
    return std::signbit(x) ? -r : r;
}

std::uint8_t encodeMini(const MiniFloat& f, float x)
{
    const std::uint32_t sign = std::signbit(x) ? (1u << signShift(f)) : 0u;
    if (std::isnan(x)) {
        if (f.fnNan) return std::uint8_t(sign | ((1u << signShift(f)) - 1));
        if (f.ieeeSpecials) return std::uint8_t(sign | (((1u << f.ebits) - 1) << f.mbits) | 2u);
        return 0;
    }
    if (std::isinf(x)) {
        if (f.ieeeSpecials) return std::uint8_t(sign | (((1u << f.ebits) - 1) << f.mbits));
        return std::uint8_t(sign | f.maxMag);
    }
    const float a = std::fabs(x);
    std::uint32_t mag;
    if (a < f.minNormal) {
        // Subnormal target: a multiple of 2^(1 - bias - mbits), at most 2^mbits of them; adding
        // 1.5 * 2^23 rounds to the nearest integer, ties to even (2^mbits is the smallest normal).
        const float t = a * f.subnormalScale + 12582912.0f;
        std::int32_t i;
        std::memcpy(&i, &t, sizeof i);
        mag = std::uint32_t(i - 0x4B400000);
    } else {
        // Normal target: round float32's 23-bit mantissa to mbits, ties to even; a carry out of
        // the mantissa moves into the exponent field by itself.
        std::uint32_t u;
        std::memcpy(&u, &a, sizeof u);
        const int shift = 23 - f.mbits;
        u += (1u << (shift - 1)) - 1 + ((u >> shift) & 1u);
        const int e = int(u >> 23) - 127 + f.bias;
        mag = (std::uint32_t(e) << f.mbits) | ((u >> shift) & ((1u << f.mbits) - 1));
        if (e > (1 << f.ebits) - 1) mag = f.maxMag;
    }
    return std::uint8_t(sign | std::min(mag, f.maxMag));
}

// E2M1 magnitude: the number of decision thresholds below a. The thresholds are the midpoints
// between neighbours; a tie goes to the even code (0, 1.0, 2.0, 4.0), hence > or >= alternately.
// Branch-free: data-dependent branches here mispredict on every other weight.
std::uint8_t e2m1Magnitude(float a)
{
    return std::uint8_t(int(a > 0.25f) + int(a >= 0.75f) + int(a > 1.25f) + int(a >= 1.75f) +
                        int(a > 2.5f) + int(a >= 3.5f) + int(a > 5.0f));
}

constexpr float kE2M1Values[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

std::uint8_t e2m1FromFloat(float v)
{
    if (std::isnan(v)) return 0;
    const std::uint8_t sign = std::signbit(v) ? 8 : 0;
    return std::uint8_t(sign | e2m1Magnitude(std::fabs(v)));
}

std::vector<float> sortedDistinct(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    return v;
}

float rowAbsMax(const float* x, std::int64_t n)
{
    float m = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        const float a = std::fabs(x[i]);
        if (a > m) m = a;  // NaN never compares greater
    }
    return m;
}

// ---------------------------------------------------------------- FP4 (MXFP4, NVFP4)

class Fp4Codec final : public FormatCodec {
public:
    Status prepare(const float* w, const float*, QuantizedTensor& q) const override
    {
        const std::int64_t n = q.rows * q.cols;
        const std::int64_t groups = q.rows * q.groupsPerRow();
        q.codes.assign(std::size_t(n), 0);
        q.scales.assign(std::size_t(groups), 0.0f);
        q.scaleCodes.assign(std::size_t(groups), 0);
        q.globalScale = 1.0f;
        if (q.format.fp4 == Fp4Variant::NVFP4) {
            const float amax = rowAbsMax(w, n);
            if (amax > 0 && std::isfinite(amax)) q.globalScale = amax / (kE2M1Max * kFp8E4M3Max);
        }
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
                const float amax = rowAbsMax(x, len);
                std::uint8_t sc = 0;
                float scale = 0;
                if (q.format.fp4 == Fp4Variant::MXFP4) {
                    if (amax > 0 && std::isfinite(amax)) {
                        int k = 0;
                        std::frexp(amax, &k);  // floor(log2(amax)) = k - 1, exactly
                        sc = std::uint8_t(std::clamp(k - 1 - 2 + 127, 0, 254));
                    }
                    scale = e8m0ToFloat(sc);
                } else {
                    sc = floatToFp8E4M3(amax / kE2M1Max / q.globalScale);
                    scale = fp8E4M3ToFloat(sc) * q.globalScale;
                }
                const std::int64_t gi = r * gpr + g;
                q.scaleCodes[gi] = sc;
                q.scales[gi] = scale;
                std::uint8_t* codes = q.codes.data() + r * q.cols + c0;
                for (std::int64_t i = 0; i < len; ++i)
                    codes[i] = scale > 0 ? e2m1FromFloat(x[i] / scale) : 0;
            }
        }
    }

    void decodeRows(const QuantizedTensor& q, std::int64_t r0, std::int64_t r1,
                    float* out) const override
    {
        const std::int64_t gs = q.groupSize();
        const std::int64_t gpr = q.groupsPerRow();
        for (std::int64_t r = r0; r < r1; ++r) {
            for (std::int64_t c = 0; c < q.cols; ++c) {
                const float s = q.scales[r * gpr + c / gs];
                out[(r - r0) * q.cols + c] = e2m1ToFloat(q.codes[r * q.cols + c]) * s;
            }
        }
    }

    std::vector<float> gridLevels(const QuantizedTensor& q, std::int64_t row,
                                  std::int64_t col) const override
    {
        const float s = q.scales[q.scaleIndex(row, col)];
        std::vector<float> v;
        for (std::uint8_t c = 0; c < 16; ++c) v.push_back(e2m1ToFloat(c) * s);
        return sortedDistinct(std::move(v));
    }

    QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                      std::int64_t col) const override
    {
        QuantStep st;
        const std::int64_t gi = q.scaleIndex(row, col);
        st.scale = q.scales[gi];
        st.code = q.codes[row * q.cols + col];
        st.codeMin = -kE2M1Max;
        st.codeMax = kE2M1Max;
        st.scaled = st.scale > 0 ? double(weight / st.scale) : 0.0;
        st.rounded = e2m1RoundUnbounded(st.scaled);
        st.clamped = e2m1ToFloat(std::uint8_t(st.code));
        st.dequantized = e2m1ToFloat(std::uint8_t(st.code)) * st.scale;
        if (q.format.fp4 == Fp4Variant::MXFP4) {
            st.note = "MXFP4: block scale 2^" + std::to_string(int(q.scaleCodes[gi]) - 127) +
                      " (E8M0), E2M1 element rounded to nearest even, saturating at 6";
        } else {
            st.note = "NVFP4: block scale E4M3 " +
                      std::to_string(fp8E4M3ToFloat(q.scaleCodes[gi])) + " x tensor scale " +
                      std::to_string(q.globalScale) +
                      ", E2M1 element rounded to nearest even, saturating at 6";
        }
        return st;
    }
};

// ---------------------------------------------------------------- FP8

class Fp8Codec final : public FormatCodec {
public:
    static float maxFinite(const QuantFormat& f)
    {
        return f.fp8 == Fp8Variant::E4M3 ? kFp8E4M3Max : kFp8E5M2Max;
    }
    static std::uint8_t encode(const QuantFormat& f, float v)
    {
        return f.fp8 == Fp8Variant::E4M3 ? floatToFp8E4M3(v) : floatToFp8E5M2(v);
    }
    static float decode(const QuantFormat& f, std::uint8_t c)
    {
        return f.fp8 == Fp8Variant::E4M3 ? fp8E4M3ToFloat(c) : fp8E5M2ToFloat(c);
    }

    Status prepare(const float* w, const float*, QuantizedTensor& q) const override
    {
        q.codes.assign(std::size_t(q.rows * q.cols), 0);
        q.scales.assign(std::size_t(scaleCount(q.format, q.rows, q.cols)), 1.0f);
        if (q.format.granularity == Granularity::PerTensor) {
            const float amax = rowAbsMax(w, q.rows * q.cols);
            if (amax > 0 && std::isfinite(amax)) q.scales[0] = amax / maxFinite(q.format);
        }
        return {};
    }

    void encodeRows(const float* w, const float*, std::int64_t r0, std::int64_t r1,
                    QuantizedTensor& q) const override
    {
        for (std::int64_t r = r0; r < r1; ++r) {
            const float* x = w + r * q.cols;
            if (q.format.granularity == Granularity::PerChannel) {
                const float amax = rowAbsMax(x, q.cols);
                q.scales[r] = amax > 0 && std::isfinite(amax) ? amax / maxFinite(q.format) : 1.0f;
            }
            const float s = q.scales[q.scaleIndex(r, 0)];
            std::uint8_t* codes = q.codes.data() + r * q.cols;
            for (std::int64_t c = 0; c < q.cols; ++c) codes[c] = encode(q.format, x[c] / s);
        }
    }

    void decodeRows(const QuantizedTensor& q, std::int64_t r0, std::int64_t r1,
                    float* out) const override
    {
        for (std::int64_t r = r0; r < r1; ++r) {
            const float s = q.scales[q.scaleIndex(r, 0)];
            for (std::int64_t c = 0; c < q.cols; ++c)
                out[(r - r0) * q.cols + c] = decode(q.format, q.codes[r * q.cols + c]) * s;
        }
    }

    std::vector<float> gridLevels(const QuantizedTensor& q, std::int64_t row,
                                  std::int64_t col) const override
    {
        const float s = q.scales[q.scaleIndex(row, col)];
        std::vector<float> v;
        for (int c = 0; c < 256; ++c) {
            const float x = decode(q.format, std::uint8_t(c));
            if (std::isfinite(x)) v.push_back(x * s);
        }
        return sortedDistinct(std::move(v));
    }

    QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                      std::int64_t col) const override
    {
        QuantStep st;
        st.scale = q.scales[q.scaleIndex(row, col)];
        st.code = q.codes[row * q.cols + col];
        st.codeMax = maxFinite(q.format);
        st.codeMin = -st.codeMax;
        st.scaled = double(weight / st.scale);
        st.rounded = fp8RoundUnbounded(st.scaled, q.format.fp8);
        st.clamped = decode(q.format, std::uint8_t(st.code));
        st.dequantized = decode(q.format, std::uint8_t(st.code)) * st.scale;
        st.note = std::string(q.format.fp8 == Fp8Variant::E4M3 ? "E4M3" : "E5M2") +
                  ": rounded to nearest even, saturating at +-" +
                  std::to_string(int(maxFinite(q.format))) + "; scale = amax / " +
                  std::to_string(int(maxFinite(q.format)));
        return st;
    }
};

}  // namespace

float fp8E4M3ToFloat(std::uint8_t code)
{
    return decodeMini(kE4M3, code);
}

std::uint8_t floatToFp8E4M3(float x)
{
    return encodeMini(kE4M3, x);
}

float fp8E5M2ToFloat(std::uint8_t code)
{
    return decodeMini(kE5M2, code);
}

std::uint8_t floatToFp8E5M2(float x)
{
    return encodeMini(kE5M2, x);
}

float e2m1ToFloat(std::uint8_t code)
{
    const float v = kE2M1Values[code & 7];
    return (code & 8) ? -v : v;
}

std::uint8_t floatToE2M1(float x)
{
    return e2m1FromFloat(x);
}

float e8m0ToFloat(std::uint8_t code)
{
    if (code == 255) return std::numeric_limits<float>::quiet_NaN();
    return std::ldexp(1.0f, int(code) - 127);
}

double fp8RoundUnbounded(double x, Fp8Variant variant)
{
    return roundUnbounded(variant == Fp8Variant::E4M3 ? kE4M3 : kE5M2, x);
}

double e2m1RoundUnbounded(double x)
{
    return roundUnbounded(kE2M1, x);
}

const FormatCodec& fp4Codec()
{
    static const Fp4Codec codec;
    return codec;
}

const FormatCodec& fp8Codec()
{
    static const Fp8Codec codec;
    return codec;
}

}  // namespace ql
