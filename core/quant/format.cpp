// Format descriptors: the rule parser/printer, size accounting, the llama.cpp fallback chain, the
// preset list, and the QuantizedTensor plumbing that dispatches to one codec per format family.
// The plain-float codec (F32/F16/BF16, stored as raw bytes like the llama.cpp formats) lives here
// because it is a few lines around ggml_dequant's conversions.
#include "quant/format.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>

#include "quant/fp_formats.h"
#include "quant/ggml_dequant.h"
#include "quant/ggml_quantize.h"
#include "quant/nf4.h"
#include "quant/rtn.h"
#include "quant/uniform.h"

namespace ql {
namespace {

std::string lower(std::string_view s)
{
    std::string out(s);
    for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::vector<std::string> splitRule(std::string_view rule)
{
    std::vector<std::string> parts;
    std::size_t start = 0;
    while (true) {
        const std::size_t colon = rule.find(':', start);
        std::string token = lower(rule.substr(start, colon - start));
        // Trim blanks around tokens ("int4 : g128").
        const auto b = token.find_first_not_of(" \t");
        const auto e = token.find_last_not_of(" \t");
        parts.push_back(b == std::string::npos ? std::string() : token.substr(b, e - b + 1));
        if (colon == std::string_view::npos) break;
        start = colon + 1;
    }
    return parts;
}

bool parseInt(std::string_view s, std::int64_t& out)
{
    if (s.empty()) return false;
    const auto* end = s.data() + s.size();
    auto [ptr, ec] = std::from_chars(s.data(), end, out);
    return ec == std::errc() && ptr == end;
}

Error badRule(std::string_view rule, const std::string& why)
{
    return makeError(ErrorCode::InvalidArgument,
                     "quantization format \"" + std::string(rule) + "\": " + why);
}

std::int64_t ceilDiv(std::int64_t a, std::int64_t b)
{
    return b > 0 ? (a + b - 1) / b : 0;
}

// ---------------------------------------------------------------- plain floats

class FloatCodec final : public FormatCodec {
public:
    static std::size_t bytesPer(const QuantFormat& f) { return f.type == TensorType::F32 ? 4 : 2; }

    Status prepare(const float*, const float*, QuantizedTensor& q) const override
    {
        q.blocks.assign(std::size_t(q.rows * q.cols) * bytesPer(q.format), 0);
        return {};
    }

    void encodeRows(const float* w, const float*, std::int64_t r0, std::int64_t r1,
                    QuantizedTensor& q) const override
    {
        const std::size_t bpe = bytesPer(q.format);
        for (std::int64_t i = r0 * q.cols; i < r1 * q.cols; ++i) {
            std::uint8_t* p = q.blocks.data() + std::size_t(i) * bpe;
            if (q.format.type == TensorType::F32) {
                std::memcpy(p, &w[i], 4);
                continue;
            }
            const std::uint16_t h =
                q.format.type == TensorType::F16 ? fp32ToFp16(w[i]) : fp32ToBf16(w[i]);
            p[0] = std::uint8_t(h & 0xFF);
            p[1] = std::uint8_t(h >> 8);
        }
    }

    void decodeRows(const QuantizedTensor& q, std::int64_t r0, std::int64_t r1,
                    float* out) const override
    {
        const std::size_t bpe = bytesPer(q.format);
        const std::size_t n = std::size_t((r1 - r0) * q.cols);
        auto st = dequantizeRow(q.format.type,
                                std::span<const std::uint8_t>(
                                    q.blocks.data() + std::size_t(r0 * q.cols) * bpe, n * bpe),
                                std::span<float>(out, n));
        (void)st;  // sizes are the codec's own
    }

    std::vector<float> gridLevels(const QuantizedTensor&, std::int64_t, std::int64_t) const override
    {
        return {};
    }

    QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                      std::int64_t col) const override
    {
        const std::size_t bpe = bytesPer(q.format);
        const std::uint8_t* p = q.blocks.data() + std::size_t(row * q.cols + col) * bpe;
        float v = 0;
        auto st0 = dequantizeRow(q.format.type, std::span<const std::uint8_t>(p, bpe),
                                 std::span<float>(&v, 1));
        (void)st0;
        QuantStep st;
        st.scale = 1;
        st.scaled = weight;
        st.rounded = v;
        st.clamped = v;
        st.dequantized = v;
        st.code = bpe == 4 ? 0 : int(p[0] | (p[1] << 8));
        const double maxFinite = q.format.type == TensorType::F16 ? 65504.0 : 3.4028234663852886e38;
        st.codeMin = -maxFinite;
        st.codeMax = maxFinite;
        st.note = formatToString(q.format) +
                  ": rounded to the nearest representable value (ties to even)";
        return st;
    }
};

}  // namespace

// ---------------------------------------------------------------- constructors

QuantFormat floatFormat(TensorType type)
{
    QuantFormat f;
    f.kind = QuantKind::Float;
    f.type = type;
    return f;
}

QuantFormat uniformFormat(int bits, bool symmetric, Granularity granularity, std::int64_t groupSize)
{
    QuantFormat f;
    f.kind = QuantKind::Uniform;
    f.bits = bits;
    f.symmetric = symmetric;
    f.granularity = granularity;
    f.groupSize = granularity == Granularity::PerGroup ? groupSize : 0;
    return f;
}

QuantFormat nf4Format(bool doubleQuant, std::int64_t blockSize)
{
    QuantFormat f;
    f.kind = QuantKind::NF4;
    f.bits = 4;
    f.granularity = Granularity::PerGroup;
    f.groupSize = blockSize;
    f.doubleQuant = doubleQuant;
    return f;
}

QuantFormat fp4Format(Fp4Variant variant)
{
    QuantFormat f;
    f.kind = QuantKind::FP4;
    f.bits = 4;
    f.fp4 = variant;
    f.granularity = Granularity::PerGroup;
    f.groupSize = variant == Fp4Variant::MXFP4 ? 32 : 16;
    return f;
}

QuantFormat fp8Format(Fp8Variant variant, Granularity granularity)
{
    QuantFormat f;
    f.kind = QuantKind::FP8;
    f.bits = 8;
    f.fp8 = variant;
    f.granularity = granularity;
    return f;
}

QuantFormat ggmlFormat(TensorType type)
{
    QuantFormat f;
    f.kind = QuantKind::Ggml;
    f.type = type;
    f.bits = 0;
    f.granularity = Granularity::PerGroup;
    f.groupSize = traits(type).blockSize;
    return f;
}

// ---------------------------------------------------------------- parse / print

Result<QuantFormat> parseQuantFormat(std::string_view rule)
{
    const std::vector<std::string> parts = splitRule(rule);
    const std::string& base = parts[0];
    if (base.empty()) return badRule(rule, "empty format name");

    QuantFormat f;
    if (base == "f32" || base == "fp32") {
        f = floatFormat(TensorType::F32);
    } else if (base == "f16" || base == "fp16") {
        f = floatFormat(TensorType::F16);
    } else if (base == "bf16") {
        f = floatFormat(TensorType::BF16);
    } else if (base.size() == 4 && base.rfind("int", 0) == 0 && base[3] >= '2' && base[3] <= '8') {
        f = uniformFormat(base[3] - '0', true, Granularity::PerChannel);
    } else if (base == "nf4") {
        f = nf4Format();
    } else if (base == "mxfp4") {
        f = fp4Format(Fp4Variant::MXFP4);
    } else if (base == "nvfp4") {
        f = fp4Format(Fp4Variant::NVFP4);
    } else if (base == "fp8_e4m3" || base == "fp8" || base == "e4m3") {
        f = fp8Format(Fp8Variant::E4M3);
    } else if (base == "fp8_e5m2" || base == "e5m2") {
        f = fp8Format(Fp8Variant::E5M2);
    } else if (auto t = tensorTypeFromName(base); t && isGgmlBlockType(*t)) {
        f = ggmlFormat(*t);
    } else {
        return badRule(rule, "unknown format \"" + base +
                                 "\" (expected f32, f16, bf16, int2..int8, nf4, mxfp4, nvfp4, "
                                 "fp8_e4m3, fp8_e5m2, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k .. q6_k)");
    }

    bool sawGranularity = false, sawSymmetry = false;
    for (std::size_t i = 1; i < parts.size(); ++i) {
        const std::string& opt = parts[i];
        auto refuse = [&](const std::string& why) {
            return badRule(rule, "\"" + opt + "\" " + why);
        };
        if (opt.empty()) return badRule(rule, "empty option");
        if (opt == "sym" || opt == "asym") {
            if (f.kind != QuantKind::Uniform) return refuse("applies to int2..int8 only");
            if (sawSymmetry) return refuse("repeats the symmetry option");
            sawSymmetry = true;
            f.symmetric = opt == "sym";
        } else if (opt == "tensor" || opt == "channel") {
            if (f.kind != QuantKind::Uniform && f.kind != QuantKind::FP8)
                return refuse("applies to int2..int8 and fp8 only");
            if (sawGranularity) return refuse("repeats the granularity option");
            sawGranularity = true;
            f.granularity = opt == "tensor" ? Granularity::PerTensor : Granularity::PerChannel;
            f.groupSize = 0;
        } else if (opt[0] == 'g') {
            std::int64_t g = 0;
            if (!parseInt(std::string_view(opt).substr(1), g) || g < 1 || g > (1 << 24))
                return refuse("is not a group size (g1 .. g16777216)");
            if (f.kind != QuantKind::Uniform && f.kind != QuantKind::NF4)
                return refuse("group size applies to int2..int8 and nf4 only");
            if (sawGranularity) return refuse("repeats the granularity option");
            sawGranularity = true;
            f.granularity = Granularity::PerGroup;
            f.groupSize = g;
        } else if (opt == "dq") {
            if (f.kind != QuantKind::NF4)
                return refuse("(double quantization) applies to nf4 only");
            f.doubleQuant = true;
        } else {
            return refuse("is not an option");
        }
    }
    return f;
}

std::string formatToString(const QuantFormat& f)
{
    switch (f.kind) {
        case QuantKind::Float: return lower(tensorTypeName(f.type));
        case QuantKind::Ggml: return lower(tensorTypeName(f.type));
        case QuantKind::Uniform: {
            std::string s = "int" + std::to_string(f.bits);
            if (f.granularity == Granularity::PerTensor) s += ":tensor";
            if (f.granularity == Granularity::PerGroup) s += ":g" + std::to_string(f.groupSize);
            if (!f.symmetric) s += ":asym";
            return s;
        }
        case QuantKind::NF4: {
            std::string s = "nf4";
            if (f.groupSize != 64) s += ":g" + std::to_string(f.groupSize);
            if (f.doubleQuant) s += ":dq";
            return s;
        }
        case QuantKind::FP4: return f.fp4 == Fp4Variant::MXFP4 ? "mxfp4" : "nvfp4";
        case QuantKind::FP8: {
            std::string s = f.fp8 == Fp8Variant::E4M3 ? "fp8_e4m3" : "fp8_e5m2";
            if (f.granularity == Granularity::PerChannel) s += ":channel";
            return s;
        }
    }
    return "?";
}

// ---------------------------------------------------------------- sizes

std::int64_t scaleGroupSize(const QuantFormat& f, std::int64_t cols)
{
    switch (f.kind) {
        case QuantKind::Float: return cols;
        case QuantKind::Ggml: return traits(f.type).blockSize;
        default: break;
    }
    if (f.granularity == Granularity::PerGroup && f.groupSize > 0) return f.groupSize;
    return cols;
}

std::int64_t groupsPerRow(const QuantFormat& f, std::int64_t cols)
{
    return std::max<std::int64_t>(1, ceilDiv(cols, scaleGroupSize(f, cols)));
}

std::int64_t scaleCount(const QuantFormat& f, std::int64_t rows, std::int64_t cols)
{
    if (f.kind == QuantKind::Float) return 0;
    if (f.kind != QuantKind::Ggml && f.granularity == Granularity::PerTensor) return 1;
    return rows * groupsPerRow(f, cols);
}

std::uint64_t storedBits(const QuantFormat& f, std::int64_t rows, std::int64_t cols)
{
    const auto n = std::uint64_t(rows) * std::uint64_t(cols);
    const auto scales = std::uint64_t(scaleCount(f, rows, cols));
    switch (f.kind) {
        case QuantKind::Float: return n * (f.type == TensorType::F32 ? 32 : 16);
        case QuantKind::Uniform:
            return n * std::uint64_t(f.bits) + scales * 16 + (f.symmetric ? 0 : scales * f.bits);
        case QuantKind::NF4:
            if (!f.doubleQuant) return n * 4 + scales * 32;
            return n * 4 + scales * 8 + std::uint64_t(ceilDiv(std::int64_t(scales), 256)) * 32 + 32;
        case QuantKind::FP4: return n * 4 + scales * 8 + (f.fp4 == Fp4Variant::NVFP4 ? 32 : 0);
        case QuantKind::FP8: return n * 8 + scales * 32;
        case QuantKind::Ggml: {
            const auto& t = traits(f.type);
            return std::uint64_t(rows) * std::uint64_t(ceilDiv(cols, t.blockSize)) * t.blockBytes *
                   8;
        }
    }
    return 0;
}

double bitsPerWeight(const QuantFormat& f, std::int64_t rows, std::int64_t cols)
{
    if (rows <= 0 || cols <= 0) return 0;
    return double(storedBits(f, rows, cols)) / (double(rows) * double(cols));
}

Status checkFormatFits(const QuantFormat& f, std::int64_t rows, std::int64_t cols)
{
    if (rows <= 0 || cols <= 0)
        return makeError(
            ErrorCode::InvalidArgument,
            "tensor shape " + std::to_string(rows) + " x " + std::to_string(cols) + " is empty");
    switch (f.kind) {
        case QuantKind::Float:
            if (f.type != TensorType::F32 && f.type != TensorType::F16 &&
                f.type != TensorType::BF16)
                return makeError(ErrorCode::InvalidArgument,
                                 "float format must be f32, f16 or bf16");
            return {};
        case QuantKind::Uniform:
            if (f.bits < 2 || f.bits > 8)
                return makeError(ErrorCode::InvalidArgument,
                                 "integer width " + std::to_string(f.bits) + " is outside 2..8");
            break;
        case QuantKind::Ggml: {
            if (!isGgmlBlockType(f.type))
                return makeError(ErrorCode::Unsupported,
                                 "no encoder for " + std::string(tensorTypeName(f.type)));
            const auto bs = std::int64_t(traits(f.type).blockSize);
            if (cols % bs != 0)
                return makeError(
                    ErrorCode::InvalidArgument,
                    std::string(tensorTypeName(f.type)) + " needs cols % " + std::to_string(bs) +
                        " == 0; cols = " + std::to_string(cols) +
                        " (fallback: " + formatToString(fallbackFormat(f, rows, cols)) + ")");
            return {};
        }
        default: break;
    }
    if (f.granularity == Granularity::PerGroup && f.groupSize < 1)
        return makeError(ErrorCode::InvalidArgument, "group size must be at least 1");
    return {};
}

QuantFormat fallbackFormat(const QuantFormat& f, std::int64_t rows, std::int64_t cols)
{
    if (f.kind != QuantKind::Ggml) return f;
    auto fits = [&](TensorType t) { return cols % std::int64_t(traits(t).blockSize) == 0; };
    if (fits(f.type)) return f;
    TensorType next = TensorType::F16;
    switch (f.type) {
        case TensorType::Q2_K:
        case TensorType::Q3_K: next = TensorType::Q4_0; break;
        case TensorType::Q4_K: next = TensorType::Q5_0; break;
        case TensorType::Q5_K: next = TensorType::Q5_1; break;
        case TensorType::Q6_K: next = TensorType::Q8_0; break;
        default: break;
    }
    if (next != TensorType::F16 && fits(next)) return ggmlFormat(next);
    return floatFormat(cols % llamaCppRowMultiple(TensorType::F16) == 0 ? TensorType::F16
                                                                        : TensorType::F32);
}

std::int64_t llamaCppRowMultiple(TensorType type)
{
    switch (type) {
        case TensorType::F32:
        case TensorType::BF16: return 1;
        // ggml-cpu/amx/mmq.cpp: tinygemm_kernel_avx<float, ggml_fp16_t> steps k by 16 up to K;
        // the AMX buffer type accepts any F16 matrix with 32k rows, whatever its row length.
        case TensorType::F16: return 16;
        default: return std::int64_t(traits(type).blockSize);
    }
}

std::span<const FormatPreset> formatPresets()
{
    static constexpr std::array<FormatPreset, 26> kPresets = {{
        {"f32", "float", "IEEE float32, the unquantized reference"},
        {"f16", "float", "IEEE float16"},
        {"bf16", "float", "bfloat16 (float32 with 7 mantissa bits)"},
        {"int8", "integer", "INT8 symmetric, one fp16 scale per output channel"},
        {"int8:g128", "integer", "INT8 symmetric, fp16 scale per 128 weights"},
        {"int4", "integer", "INT4 symmetric, one fp16 scale per output channel"},
        {"int4:g128", "integer", "INT4 symmetric, fp16 scale per 128 weights (GPTQ-style)"},
        {"int4:g128:asym", "integer", "INT4 with fp16 scale and 4-bit zero point per 128"},
        {"int3:g128:asym", "integer", "INT3 with fp16 scale and 3-bit zero point per 128"},
        {"int2:g64:asym", "integer", "INT2 with fp16 scale and 2-bit zero point per 64"},
        {"nf4", "normal float", "QLoRA NF4, fp32 absmax per 64 weights"},
        {"nf4:dq", "normal float", "NF4 with double-quantized (8-bit) absmax constants"},
        {"mxfp4", "fp4", "OCP MXFP4: E2M1 elements, E8M0 power-of-two scale per 32"},
        {"nvfp4", "fp4", "NVFP4: E2M1 elements, E4M3 scale per 16, fp32 tensor scale"},
        {"fp8_e4m3", "fp8", "FP8 E4M3 (max 448) with an fp32 scale per tensor"},
        {"fp8_e5m2", "fp8", "FP8 E5M2 (max 57344) with an fp32 scale per tensor"},
        {"q8_0", "llama.cpp", "8-bit, fp16 scale per 32 (8.5 bpw)"},
        {"q4_0", "llama.cpp", "4-bit symmetric, fp16 scale per 32 (4.5 bpw)"},
        {"q4_1", "llama.cpp", "4-bit, fp16 scale and min per 32 (5 bpw)"},
        {"q5_0", "llama.cpp", "5-bit symmetric, fp16 scale per 32 (5.5 bpw)"},
        {"q5_1", "llama.cpp", "5-bit, fp16 scale and min per 32 (6 bpw)"},
        {"q2_k", "llama.cpp",
         "k-quant: 2-bit, 4-bit scales/mins per 16, super-block 256 (2.625 bpw)"},
        {"q3_k", "llama.cpp", "k-quant: 3-bit, 6-bit scales per 16, super-block 256 (3.4375 bpw)"},
        {"q4_k", "llama.cpp",
         "k-quant: 4-bit, 6-bit scales/mins per 32, super-block 256 (4.5 bpw)"},
        {"q5_k", "llama.cpp",
         "k-quant: 5-bit, 6-bit scales/mins per 32, super-block 256 (5.5 bpw)"},
        {"q6_k", "llama.cpp", "k-quant: 6-bit, 8-bit scales per 16, super-block 256 (6.5625 bpw)"},
    }};
    return kPresets;
}

// ---------------------------------------------------------------- QuantizedTensor

std::int64_t QuantizedTensor::scaleIndex(std::int64_t row, std::int64_t col) const
{
    if (format.kind != QuantKind::Ggml && format.granularity == Granularity::PerTensor) return 0;
    return row * groupsPerRow() + col / groupSize();
}

Status QuantizedTensor::validate() const
{
    QL_TRY_STATUS(checkFormatFits(format, rows, cols));
    const auto n = std::size_t(rows * cols);
    const auto groups = std::size_t(scaleCount(format, rows, cols));
    auto wrong = [&](const char* what, std::size_t have, std::size_t need) {
        return makeError(ErrorCode::Format,
                         formatToString(format) + " tensor " + std::to_string(rows) + " x " +
                             std::to_string(cols) + ": " + what + " holds " + std::to_string(have) +
                             ", " + std::to_string(need) + " needed");
    };
    switch (format.kind) {
        case QuantKind::Float:
        case QuantKind::Ggml: {
            const std::size_t need = std::size_t(ql::storedBits(format, rows, cols) / 8);
            if (blocks.size() != need) return wrong("blocks", blocks.size(), need);
            return {};
        }
        default: break;
    }
    if (codes.size() != n) return wrong("codes", codes.size(), n);
    if (scales.size() != groups) return wrong("scales", scales.size(), groups);
    if (format.kind == QuantKind::Uniform && !format.symmetric && zeroPoints.size() != groups)
        return wrong("zeroPoints", zeroPoints.size(), groups);
    if (format.kind == QuantKind::FP4 && scaleCodes.size() != groups)
        return wrong("scaleCodes", scaleCodes.size(), groups);
    if (format.kind == QuantKind::NF4 && format.doubleQuant) {
        if (scaleCodes.size() != groups) return wrong("scaleCodes", scaleCodes.size(), groups);
        const auto runs = std::size_t(ceilDiv(std::int64_t(groups), kNf4DoubleQuantBlock));
        if (scales2.size() != runs) return wrong("scales2", scales2.size(), runs);
    }
    return {};
}

Status QuantizedTensor::dequantizeRows(std::int64_t rowBegin, std::int64_t rowEnd,
                                       std::span<float> out) const
{
    if (rowBegin < 0 || rowEnd > rows || rowBegin > rowEnd)
        return makeError(ErrorCode::InvalidArgument, "rows [" + std::to_string(rowBegin) + ", " +
                                                         std::to_string(rowEnd) + ") outside 0.." +
                                                         std::to_string(rows));
    if (out.size() != std::size_t((rowEnd - rowBegin) * cols))
        return makeError(ErrorCode::InvalidArgument, "output span has the wrong size");
    QL_TRY_STATUS(validate());
    codecFor(format.kind).decodeRows(*this, rowBegin, rowEnd, out.data());
    return {};
}

Result<std::vector<float>> QuantizedTensor::dequantize() const
{
    QL_TRY_STATUS(validate());
    std::vector<float> out(std::size_t(rows * cols));
    const FormatCodec& codec = codecFor(format.kind);
    const std::int64_t chunk = std::max<std::int64_t>(1, 65536 / std::max<std::int64_t>(1, cols));
    QL_TRY_STATUS(parallelForRows(rows, chunk, [&](std::int64_t r0, std::int64_t r1) {
        codec.decodeRows(*this, r0, r1, out.data() + r0 * cols);
    }));
    return out;
}

Result<std::vector<float>> gridLevels(const QuantizedTensor& q, std::int64_t row, std::int64_t col)
{
    if (row < 0 || row >= q.rows || col < 0 || col >= q.cols)
        return makeError(ErrorCode::InvalidArgument, "weight position outside the tensor");
    if (q.format.kind == QuantKind::Float)
        return makeError(ErrorCode::Unsupported,
                         formatToString(q.format) + " has no per-group grid to draw");
    QL_TRY_STATUS(q.validate());
    return codecFor(q.format.kind).gridLevels(q, row, col);
}

Result<QuantStep> explainWeight(const QuantizedTensor& q, float weight, std::int64_t row,
                                std::int64_t col)
{
    if (row < 0 || row >= q.rows || col < 0 || col >= q.cols)
        return makeError(ErrorCode::InvalidArgument, "weight position outside the tensor");
    QL_TRY_STATUS(q.validate());
    QuantStep st = codecFor(q.format.kind).explain(q, weight, row, col);
    st.row = row;
    st.col = col;
    st.weight = weight;
    return st;
}

const FormatCodec& codecFor(QuantKind kind)
{
    static const FloatCodec floatCodec;
    switch (kind) {
        case QuantKind::Float: return floatCodec;
        case QuantKind::Uniform: return uniformCodec();
        case QuantKind::NF4: return nf4Codec();
        case QuantKind::FP4: return fp4Codec();
        case QuantKind::FP8: return fp8Codec();
        case QuantKind::Ggml: return ggmlCodec();
    }
    return floatCodec;
}

}  // namespace ql
