// Small floating-point element formats: FP8 E4M3 (the "fn" variant: no infinities, max 448, NaN =
// S.1111.111), FP8 E5M2 (IEEE-like: max 57344, infinities, NaNs), FP4 E2M1 (values 0, 0.5, 1,
// 1.5, 2, 3, 4, 6 and negatives; no inf/NaN) and the E8M0 power-of-two scale of the OCP MX spec.
//
// Conversions from float round to nearest, ties to even, and saturate: a finite value beyond the
// largest finite one becomes that value (also +-inf for E4M3 and E2M1; E5M2 keeps +-inf). NaN
// becomes NaN where the format has one (E4M3 0x7F, E5M2 0x7E, with the sign), else zero.
//
// Tensor formats built on them (codecs in fp_formats.cpp):
//   MXFP4: blocks of 32 along a row, scale 2^(floor(log2(amax)) - 2) stored as E8M0
//          (2 = the exponent of E2M1's largest value, 6 = 1.5 * 2^2), elements E2M1.
//   NVFP4: blocks of 16, scale = E4M3(amax / 6 / g) * g with g = tensor amax / (6 * 448) an FP32
//          per-tensor scale, elements E2M1.
//   FP8:   x / s encoded in E4M3 or E5M2 with s = amax / max_finite per tensor or per row (FP32).
#pragma once

#include <cstdint>

#include "quant/format.h"

namespace ql {

float fp8E4M3ToFloat(std::uint8_t code);
std::uint8_t floatToFp8E4M3(float x);
float fp8E5M2ToFloat(std::uint8_t code);
std::uint8_t floatToFp8E5M2(float x);
// 4-bit code: sign << 3 | magnitude index (0..7 -> 0, 0.5, 1, 1.5, 2, 3, 4, 6).
float e2m1ToFloat(std::uint8_t code);
std::uint8_t floatToE2M1(float x);
// E8M0: 2^(code - 127); code 255 is NaN.
float e8m0ToFloat(std::uint8_t code);

constexpr float kFp8E4M3Max = 448.0f;
constexpr float kFp8E5M2Max = 57344.0f;
constexpr float kE2M1Max = 6.0f;

// x rounded to the element format's precision (nearest, ties to even) but with an unbounded
// exponent range above: what the format would hold if it did not saturate. Used to show the
// "rounded" step before clamping.
double fp8RoundUnbounded(double x, Fp8Variant variant);
double e2m1RoundUnbounded(double x);

const FormatCodec& fp4Codec();
const FormatCodec& fp8Codec();

}  // namespace ql
