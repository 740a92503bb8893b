// Quantization formats: what a weight tensor can be stored as, how many bits that costs, and the
// container for an encoded tensor.
//
// A QuantFormat is parsed from the layout rule syntax, tokens separated by ':' (case-insensitive):
//   f32 | f16 | bf16                      plain floats
//   int2 .. int8 [:sym|:asym] [:tensor|:channel|:gN]
//                                         uniform integers; default symmetric, per output channel
//   nf4 [:gN] [:dq]                       QLoRA NormalFloat4, blocks of 64 (gN changes the block)
//   mxfp4 | nvfp4                         OCP MX FP4 (32-blocks, E8M0 scale) / NVIDIA FP4
//   (16-blocks,
//                                         E4M3 scale + per-tensor FP32 scale)
//   fp8_e4m3 | fp8_e5m2 [:tensor|:channel] FP8 with an FP32 scale per tensor (default) or per row
//   q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k   llama.cpp block formats
// formatToString() prints the canonical form, which parses back to the same format.
//
// Tensors are 2-D, rows = output channels, cols = input channels. Scale groups run along a row
// (over cols); a trailing partial group (cols not a multiple of the group size) gets its own
// scale. llama.cpp block formats are the exception: their blocks must divide cols, and
// checkFormatFits() names the fallback (fallbackFormat).
//
// What llama.cpp runs: a GGUF type being legal for a shape is not enough. On a CPU with AMX
// (Intel Xeon, 4th generation on) llama.cpp's CPU backend hands every F16 matrix whose output
// count is a multiple of 32 to its AMX-buffer AVX-512 kernel (ggml-cpu/amx/mmq.cpp), which reads
// 16 values of a row at a time with no tail: rows whose length is not a multiple of 16 are read
// past their end, giving wrong logits or NaN. Its block kernels need whole blocks per row.
// llamaCppRowMultiple() holds these rules; the fallback chain and the GGUF writer follow them.
//
// Stored sizes (bitsPerWeight) count everything a file would hold: codes, scales, zero points,
// second-level constants. Assumed storage types: uniform scales fp16 and zero points as n-bit
// integers (GPTQ/AWQ practice); NF4 absmax fp32 (bitsandbytes), or with double quantization 8-bit
// codes + one fp32 absmax per 256 constants + one fp32 offset per tensor; MXFP4 one E8M0 byte per
// 32; NVFP4 one E4M3 byte per 16 + one fp32 per tensor; FP8 one fp32 scale per tensor or row.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/tensor_type.h"
#include "util/result.h"

namespace ql {

enum class QuantKind {
    Float,    // F32 / F16 / BF16 (QuantFormat::type)
    Uniform,  // INT2..INT8, symmetric or asymmetric
    NF4,      // NormalFloat4 with absmax blocks
    FP4,      // E2M1 elements: MXFP4 or NVFP4
    FP8,      // E4M3 (fn) or E5M2
    Ggml,     // a llama.cpp block format (QuantFormat::type)
};

enum class Granularity { PerTensor, PerChannel, PerGroup };
enum class Fp4Variant { MXFP4, NVFP4 };
enum class Fp8Variant { E4M3, E5M2 };

struct QuantFormat {
    QuantKind kind = QuantKind::Float;
    TensorType type = TensorType::F32;                  // Float and Ggml kinds
    int bits = 4;                                       // Uniform: 2..8
    bool symmetric = true;                              // Uniform
    Granularity granularity = Granularity::PerChannel;  // Uniform, FP8; NF4/FP4 are PerGroup
    std::int64_t groupSize = 0;                         // PerGroup: weights per group along a row
    bool doubleQuant = false;                           // NF4
    Fp4Variant fp4 = Fp4Variant::MXFP4;
    Fp8Variant fp8 = Fp8Variant::E4M3;

    bool operator==(const QuantFormat&) const = default;
};

Result<QuantFormat> parseQuantFormat(std::string_view rule);
std::string formatToString(const QuantFormat& format);

QuantFormat floatFormat(TensorType type);
QuantFormat uniformFormat(int bits, bool symmetric, Granularity granularity,
                          std::int64_t groupSize = 0);
QuantFormat nf4Format(bool doubleQuant = false, std::int64_t blockSize = 64);
QuantFormat fp4Format(Fp4Variant variant);
QuantFormat fp8Format(Fp8Variant variant, Granularity granularity = Granularity::PerTensor);
QuantFormat ggmlFormat(TensorType type);

// Weights sharing one scale along a row for a tensor with `cols` columns: the group size,
// cols for per-channel, and cols for per-tensor too (one scale serves all rows; see scaleCount).
std::int64_t scaleGroupSize(const QuantFormat& format, std::int64_t cols);
std::int64_t groupsPerRow(const QuantFormat& format, std::int64_t cols);
// Scales stored for the whole tensor (1 for per-tensor; 0 for Float; ggml: blocks).
std::int64_t scaleCount(const QuantFormat& format, std::int64_t rows, std::int64_t cols);

// Exact stored size in bits, and per weight (see the storage assumptions above). For llama.cpp
// formats whose block does not divide cols, the size of the padded rows.
std::uint64_t storedBits(const QuantFormat& format, std::int64_t rows, std::int64_t cols);
double bitsPerWeight(const QuantFormat& format, std::int64_t rows, std::int64_t cols);

// Whether `format` can encode a rows x cols tensor; the error names the fallback, e.g.
// "Q4_K needs cols % 256 == 0; cols = 172 (fallback: f32)".
Status checkFormatFits(const QuantFormat& format, std::int64_t rows, std::int64_t cols);
// The nearest format that fits, as llama.cpp chooses: Q2_K/Q3_K -> Q4_0 (llama.cpp's IQ4_NL,
// which QuantLens lacks, has the same 32-block and 4.5 bits), Q4_K -> Q5_0, Q5_K -> Q5_1,
// Q6_K -> Q8_0. When 32 does not divide cols either: F16 if 16 divides cols, else F32.
// (llama-quantize takes F16 there too, but llama.cpp's AMX kernel computes F16 rows whose
// length is not a multiple of 16 wrongly: see llamaCppRowMultiple.) Formats that fit are returned
// as is.
QuantFormat fallbackFormat(const QuantFormat& format, std::int64_t rows, std::int64_t cols);

// The multiple of which a matrix row stored as `type` must be long for llama.cpp's CPU backend to
// compute with it correctly: the block size for block formats, 16 for F16 (AMX kernel), 1 for
// F32 and BF16.
std::int64_t llamaCppRowMultiple(TensorType type);

// The built-in formats, for pickers and benchmarks.
struct FormatPreset {
    std::string_view rule;
    std::string_view family;  // "float", "integer", "normal float", "fp4", "fp8", "llama.cpp"
    std::string_view description;
};
std::span<const FormatPreset> formatPresets();

// An encoded tensor. Which fields are used depends on the format kind:
//   codes       Uniform/NF4/FP4/FP8: one byte per weight, row-major, unpacked. Uniform symmetric
//               stores q + 2^(bits-1) (offset binary, q in [-2^(bits-1), 2^(bits-1)-1]);
//               asymmetric stores q in [0, 2^bits-1]; NF4 the level index (0..15); FP4 the E2M1
//               nibble (sign << 3 | magnitude code); FP8 the byte.
//   scales      one per scale group (row * groupsPerRow + group; a single one per tensor):
//               the multiplier the decoder uses, exactly as stored (fp16-rounded for uniform,
//               2^e for MXFP4, E4M3(code) * globalScale for NVFP4, the decoded absmax for NF4).
//   zeroPoints  Uniform asymmetric: the integer zero point per group.
//   scaleCodes  MXFP4: E8M0 byte; NVFP4: E4M3 byte; NF4 with double quantization: 8-bit code
//               of each absmax.
//   scales2, scaleOffset   NF4 double quantization: fp32 absmax of each run of 256 absmax codes,
//               and the mean absmax subtracted before quantizing them.
//   globalScale NVFP4: the per-tensor fp32 second-level scale.
//   blocks      Float and Ggml: the raw stored bytes, row-major, exactly as in a GGUF file.
struct QuantizedTensor {
    QuantFormat format;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::vector<std::uint8_t> codes;
    std::vector<float> scales;
    std::vector<std::uint8_t> zeroPoints;
    std::vector<std::uint8_t> scaleCodes;
    std::vector<float> scales2;
    float scaleOffset = 0;
    float globalScale = 1;
    std::vector<std::uint8_t> blocks;

    std::int64_t groupSize() const { return scaleGroupSize(format, cols); }
    std::int64_t groupsPerRow() const { return ql::groupsPerRow(format, cols); }
    // Index into `scales` of the weight at (row, col).
    std::int64_t scaleIndex(std::int64_t row, std::int64_t col) const;
    std::uint64_t storedBits() const { return ql::storedBits(format, rows, cols); }
    double bitsPerWeight() const { return ql::bitsPerWeight(format, rows, cols); }

    // Checks that the arrays have the sizes the format needs (e.g. after reading from a file).
    Status validate() const;
    // Decode rows [rowBegin, rowEnd) into out (row-major, (rowEnd-rowBegin) * cols floats).
    Status dequantizeRows(std::int64_t rowBegin, std::int64_t rowEnd, std::span<float> out) const;
    // Whole tensor, on all cores.
    Result<std::vector<float>> dequantize() const;
};

// One weight's trip through the quantizer, for the teaching view. The "code axis" is where
// rounding happens: (w - offset) / scale for scaled integer formats, w / scale for NF4/FP formats.
struct QuantStep {
    std::int64_t row = 0;
    std::int64_t col = 0;
    float weight = 0;     // the original value
    float scale = 0;      // the group's (sub-block's) effective scale, as the decoder uses it
    float offset = 0;     // added after scaling: asymmetric -scale*zero, llama.cpp mins; else 0
    float zeroPoint = 0;  // Uniform asymmetric: the integer zero point
    double scaled = 0;    // w on the code axis
    double rounded = 0;   // nearest grid point on the code axis, before clamping to the range
    double clamped = 0;   // after clamping to the representable range
    double codeMin = 0;   // the range on the code axis
    double codeMax = 0;
    std::int32_t code = 0;  // stored code: integer level (signed for symmetric), index, or bits
    float dequantized = 0;  // the decoded value, exactly as dequantize() returns it
    std::string note;       // format-specific remark (e.g. where the encoder departs from nearest)
};

// The representable values of the group holding (row, col), ascending and distinct: for uniform
// formats scale * (q - zero) over every code (for INT4 symmetric all 16 codes -8..7, although
// absmax / 7 scaling never produces -8), NF4 the 16 levels times the absmax, FP4 the 15 distinct
// E2M1 values times the block scale, FP8 the finite values times the scale, llama.cpp formats
// the levels of the (sub-)block. Unsupported for plain float formats.
Result<std::vector<float>> gridLevels(const QuantizedTensor& q, std::int64_t row, std::int64_t col);
// How `weight` (the original value at (row, col)) was encoded in q.
Result<QuantStep> explainWeight(const QuantizedTensor& q, float weight, std::int64_t row,
                                std::int64_t col);

// Implemented once per format family (uniform.cpp, nf4.cpp, fp_formats.cpp, ggml_quantize.cpp);
// codecFor() picks one by kind. prepare() sizes the arrays and computes tensor-wide parameters
// from all of w; encodeRows() may then run concurrently on disjoint row ranges.
class FormatCodec {
public:
    virtual ~FormatCodec() = default;
    virtual Status prepare(const float* w, const float* importance, QuantizedTensor& q) const = 0;
    virtual void encodeRows(const float* w, const float* importance, std::int64_t rowBegin,
                            std::int64_t rowEnd, QuantizedTensor& q) const = 0;
    virtual void decodeRows(const QuantizedTensor& q, std::int64_t rowBegin, std::int64_t rowEnd,
                            float* out) const = 0;
    virtual std::vector<float> gridLevels(const QuantizedTensor& q, std::int64_t row,
                                          std::int64_t col) const = 0;
    virtual QuantStep explain(const QuantizedTensor& q, float weight, std::int64_t row,
                              std::int64_t col) const = 0;
};
const FormatCodec& codecFor(QuantKind kind);

}  // namespace ql
