// NF4 (4-bit NormalFloat, QLoRA, Dettmers et al. 2023) as bitsandbytes stores it.
//
// Blocks of 64 consecutive weights along a row share an fp32 absmax; each weight stores the index
// of the NormalFloat level nearest to w / absmax (decision thresholds at the midpoints between
// levels, as bitsandbytes' kernel does). Decoding is level * absmax.
//
// Double quantization ("nf4:dq", QLoRA section 3 / bitsandbytes compress_statistics): the absmax
// constants of the tensor, in order, have their mean c subtracted; each run of 256 of them is
// scaled by its own fp32 absmax a2 and stored as an 8-bit index into bitsandbytes' signed dynamic
// map (create_dynamic_map(signed=True): a sign, a run of zero bits giving a decimal exponent
// 10^-6..10^0, and a linear fraction; 256 sorted values in [-1, 1]), chosen as the nearest value.
// The decoder's absmax is map[code] * a2 + c. As in bitsandbytes, the weights' 4-bit codes are
// chosen with the exact fp32 absmax before the constants are compressed.
// Cost: 4 + 32/64 = 4.5 bits per weight; with double quantization 4 + 8/64 + 32/(64*256) plus
// 32 bits per tensor, about 4.127.
//
// QuantLens groups run within a row; for cols a multiple of 64 this is bitsandbytes' layout of the
// flattened tensor exactly, otherwise the last group of each row is shorter.
#pragma once

#include <array>
#include <cstdint>

#include "quant/format.h"

namespace ql {

// The 16 levels, ascending, exactly as published (bitsandbytes' NF4 code, as float32).
const std::array<float, 16>& nf4Levels();
// Index of the level nearest to a normalized value (thresholds at midpoints; NaN -> the 0 level).
int nf4Index(float normalized);
// bitsandbytes' signed 8-bit dynamic quantization map (ascending; used for the absmax codes).
const std::array<float, 256>& dynamicMap8();
// Index of the map value nearest to v (ties to the lower value).
int dynamicMap8Index(float v);

constexpr std::int64_t kNf4DoubleQuantBlock = 256;

const FormatCodec& nf4Codec();

}  // namespace ql
