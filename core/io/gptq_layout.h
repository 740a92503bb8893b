// The GPTQ checkpoint layout of Hugging Face safetensors (AutoGPTQ / GPTQModel / transformers'
// "gptq" quant_method, checkpoint_format "gptq", i.e. v1), for one linear layer of
// `in` input features and `out` output features quantized to `bits` in groups of `g` inputs:
//
//   <module>.qweight  int32 [in * bits / 32, out]   codes packed along the input dimension
//   <module>.qzeros   int32 [G, out * bits / 32]    zero points packed along the output dimension
//   <module>.scales   float16 [G, out]
//   <module>.g_idx    int32 [in]                    group of each input feature
//   <module>.bias     float16 [out]                 when the layer has one
//
// G = ceil(in / g) (g = in for group_size -1, "per channel"). The weight is
//   W[o][i] = scales[g_idx[i]][o] * (q[i][o] - (z[g_idx[i]][o] + 1))
// where q and z are the unpacked codes and zero points (unsigned, 0 .. 2^bits - 1).
//
// Zero points: v1 stores the zero point minus one (AutoGPTQ's pack() does `zeros -= 1`; its
// kernels add the one back). A symmetric layer has zero 2^(bits-1), stored as 2^(bits-1) - 1
// (0x77777777 for 4 bits). An asymmetric group whose zero point is 0 cannot be stored in v1 (it
// would be -1 and read back as 2^bits); QuantLens writes such a group mirrored instead, exactly:
// scale -s, codes 2^bits - 1 - q, zero 2^bits - 1 (stored 2^bits - 2), which decodes to
// (-s) * ((2^bits - 1 - q) - (2^bits - 1)) = s * q. Loaders need nothing special for it.
//
// Packing, along the packed dimension, value k of the unpacked sequence:
//   2, 4, 8 bits: word k / (32/bits), bit offset bits * (k % (32/bits)) (little end first).
//   3 bits: 32 values fill 3 words (96 bits) as one little-endian bit stream: value k occupies
//     bits [3k, 3k + 3) of the stream, so values 10 and 21 straddle word boundaries (value 10:
//     2 bits at the top of word 0, 1 bit at the bottom of word 1; value 21: 1 bit at the top of
//     word 1, 2 bits at the bottom of word 2). This is AutoGPTQ's 3-bit pack() loop.
// In general: value k sits at bits [bits * k, bits * k + bits) of the little-endian stream of the
// column (qweight) or row (qzeros) of 32-bit words. The packed dimension must hold whole words
// of values: a multiple of 32 / bits (2, 4, 8 bits) or of 32 (3 bits).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "util/result.h"

namespace ql {

// Bits the GPTQ layout defines.
bool gptqBitsSupported(int bits);
// Values per packing unit along a packed dimension (8 for 4 bits; 32 for 3 bits).
std::int64_t gptqPackMultiple(int bits);

// Packs `count` codes (each < 2^bits) of one sequence into `count * bits / 32` words.
void gptqPackSequence(const std::uint32_t* values, std::int64_t count, int bits,
                      std::uint32_t* words);
// The inverse: code k of a packed sequence.
std::uint32_t gptqUnpackValue(const std::uint32_t* words, std::int64_t k, int bits);

// One linear layer in the GPTQ layout, unpacked and packed.
struct GptqLayer {
    int bits = 4;
    int zeroOffset = 1;  // added to the stored zero point: 1 for "gptq" (v1), 0 for "gptq_v2"
    std::int64_t in = 0, out = 0, groups = 0;
    std::vector<std::int32_t> qweight;  // [in * bits / 32][out]
    std::vector<std::int32_t> qzeros;   // [groups][out * bits / 32]
    std::vector<std::uint16_t> scales;  // [groups][out], float16 bits
    std::vector<std::int32_t> gIdx;     // [in]
};

// Builds the packed arrays from unpacked codes q[o][i] (0 .. 2^bits-1, row-major [out][in]),
// true zero points z[o][group] (0 .. 2^bits - 1, [out][groups]), float16 scales s[o][group]
// and g_idx. Zero points are stored minus one; a zero of 0 is mirrored (see above).
// InvalidArgument when shapes do not pack.
Result<GptqLayer> gptqPack(int bits, std::int64_t out, std::int64_t in, std::int64_t groups,
                           std::span<const std::uint8_t> codes, std::span<const std::uint8_t> zeros,
                           std::span<const std::uint16_t> scales,
                           std::span<const std::int32_t> gIdx, std::int64_t* mirroredGroups);

// Decodes a layer to float, row-major [out][in], as the formula above (float32 arithmetic:
// fp16 scale to float, times float(q - z - 1)). Format errors name what is inconsistent.
Result<std::vector<float>> gptqDequantize(const GptqLayer& layer);

}  // namespace ql
