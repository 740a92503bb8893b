// Uniform integer quantization, INT2..INT8, per tensor, per output channel or per group.
//
// Symmetric ("restricted range"): scale = absmax / qmax with qmax = 2^(n-1) - 1, codes q =
// clamp(round(w / scale), -2^(n-1), qmax), value = scale * q. The grid is symmetric around an
// exact zero, so flipping a weight's sign never changes its error; the extra negative code
// -2^(n-1) stays representable (GPTQ error feedback may use it) but rounding never reaches it.
// Asymmetric: the range [min(w, 0), max(w, 0)] (zero always exactly representable, as GPTQ does)
// maps onto codes 0..2^n - 1 with scale = (hi - lo) / (2^n - 1) and an integer zero point
// z = round(-lo / scale); value = scale * (q - z).
// Rounding is to nearest, ties to even. Scales are stored as fp16 and the encoder divides by the
// stored (rounded) scale, so decoding reproduces what the encoder assumed.
#pragma once

#include <cstdint>

#include "quant/format.h"

namespace ql {

// The grid of one scale group.
struct UniformGrid {
    float scale = 0;  // as stored (fp16-representable)
    int zero = 0;     // integer zero point (0 for symmetric)
    int qmin = 0;     // code range: symmetric [-2^(n-1), 2^(n-1)-1], asymmetric [0, 2^n-1]
    int qmax = 0;

    int quantize(float x) const;  // nearest code in [qmin, qmax]
    float dequantize(int q) const { return scale * float(q - zero); }
};

// The grid RTN uses for weights spanning [lo, hi] (symmetric: absmax = max(|lo|, |hi|)).
UniformGrid uniformGrid(float lo, float hi, int bits, bool symmetric);

const FormatCodec& uniformCodec();

}  // namespace ql
