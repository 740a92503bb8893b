// Host-side entry points to the GPU calibration statistics (stats.cuh) for tests and tools: they
// upload a host matrix, add it on GPU 0 in one or several batches (float32 or bf16), and download
// the result. Plain C++: no CUDA types, so core-side code and tests include it freely.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "calib/activation_stats.h"
#include "compute/runner.h"
#include "util/result.h"

namespace ql::cuda {

enum class InputType { Float32, BFloat16 };

// bf16 conversion as the uploads do it: round to nearest even; NaN stays a quiet NaN.
inline std::uint16_t bf16Bits(float value)
{
    std::uint32_t u = 0;
    std::memcpy(&u, &value, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}
inline float bf16Value(std::uint16_t bits)
{
    const std::uint32_t u = std::uint32_t(bits) << 16;
    float f = 0;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline float roundToBf16(float value)
{
    return bf16Value(bf16Bits(value));
}

// Empty when a CUDA device can be used, else why not (for test skips and tools).
std::string gpuUnavailableReason();

// Statistics of x (rows × channels, row-major) computed on the GPU. The rows are `sequences`
// sequences of equal length, the first being calibration sample firstSample; they are added in
// `batches` calls of whole sequences (batch b holds sequences [b·S/B, (b+1)·S/B)). With
// InputType::BFloat16 x is rounded to bf16 (roundToBf16) on upload.
Result<ActivationStats> gpuActivationStats(const std::vector<float>& x, std::int64_t rows,
                                           std::int32_t channels, const RunnerStatsOptions& options,
                                           std::int64_t sequences = 1, std::int32_t firstSample = 0,
                                           int batches = 1, InputType input = InputType::Float32);

// XᵀX (channels × channels) with float32 accumulation, rows added in `batches` calls: float32
// inputs without TF32 (the exact path), or x rounded to bf16 on tensor cores.
Result<std::vector<float>> gpuHessian(const std::vector<float>& x, std::int64_t rows,
                                      std::int32_t channels, int batches = 1);
Result<std::vector<float>> gpuHessianBf16(const std::vector<float>& x, std::int64_t rows,
                                          std::int32_t channels, int batches = 1);

}  // namespace ql::cuda
