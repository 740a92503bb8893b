// Encoders for llama.cpp's block formats (decoding is ggml_dequant.h's dequantizeRow).
//
// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 without importance weights reproduce llama.cpp's reference
// quantizer (quantize_row_*_ref) byte for byte: the same scale rule (Q4_0/Q5_0 divide the signed
// value of largest magnitude by -8/-16, Q4_1/Q5_1 use min/max, Q8_0 absmax/127), the same
// truncating or round-half-away conversions, fp16 by round-to-nearest-even.
//
// The k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the legacy formats given importance weights
// use QuantLens' own search, which minimises sum_i w_i (x_i - q_i)^2 (w = importance, or 1):
//  1. each sub-block gets a continuous scale (and min) from a sweep of candidate scales: each
//     candidate's levels get their weighted least-squares scale (and min), ranked by the
//     closed-form error; the best is refined by Lloyd iterations (round, refit) on exact errors;
//  2. the sub-block scales/mins are quantized to the format's 4/6/8-bit integers under an fp16
//     super-block scale;
//  3. alternating refinement measured on the exact decoded values: per sub-block the integer
//     scale/min pair is re-chosen among the neighbours of its least-squares optimum, and the fp16
//     super-block scale(s) are refit by least squares over the whole block; a change is kept only
//     when the block's error drops.
// The final levels are always the nearest ones given the stored scales.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/tensor_type.h"
#include "quant/format.h"
#include "util/result.h"

namespace ql {

// True for the block formats this file encodes (Q8_0 .. Q6_K).
bool isGgmlBlockType(TensorType type);

// Encode src (a multiple of the block size, typically one row) into dst, which must hold exactly
// tensorBytes(type, src.size()) bytes. importance: optional, src.size() values >= 0.
Status quantizeRowGgml(TensorType type, std::span<const float> src, std::span<std::uint8_t> dst,
                       const float* importance = nullptr);

// What a block stores for the weight at `index` (0 .. block size - 1): the decoded value is
// scale * level + offset, computed exactly as dequantizeRow does.
struct GgmlWeightCode {
    int subBlock = 0;      // index of the sub-block sharing scale and offset
    int subBlockSize = 0;  // weights in it (the block size for Q8_0 .. Q5_1)
    float scale = 0;       // effective scale (Q4_K: d * sc, Q6_K: d * sc, Q4_0: d, ...)
    float offset = 0;      // Q4_1/Q5_1: m; Q2_K/Q4_K/Q5_K: -dmin * m; else 0
    int level = 0;         // signed level for symmetric formats (Q4_0: -8..7), else 0..2^n-1
    int levelMin = 0;
    int levelMax = 0;
    float value = 0;
};
GgmlWeightCode ggmlWeightCode(TensorType type, std::span<const std::uint8_t> block, int index);

// The values the weight's sub-block can take, ascending and distinct.
std::vector<float> ggmlSubBlockLevels(TensorType type, std::span<const std::uint8_t> block,
                                      int index);

const FormatCodec& ggmlCodec();

}  // namespace ql
