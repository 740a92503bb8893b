// GPU benchmark of GPTQ (quantlens-cli bench gptq): one generated layer, its Hessian H = X^T X /
// tokens from generated heavy-tailed activations (cuBLAS, float32), GPTQ on the device (or on the
// CPU with the same inputs). Plain C++ (no CUDA types).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_gptq.h"
#include "quant/gptq.h"
#include "util/result.h"

namespace ql::cuda {

struct GptqBenchConfig {
    std::int64_t rows = 4096;
    std::int64_t cols = 4096;
    std::int64_t tokens = 0;  // 0: 2 x cols
    QuantFormat format;
    GptqOptions options;
    int repeats = 5;
    bool cpu = false;  // run core's quantizeGptq on the same inputs instead
    GptqFactorPrecision factor = GptqFactorPrecision::Default;
};

struct GptqBenchResult {
    std::string device;
    std::int64_t tokens = 0;
    std::vector<double> runMs;  // GPTQ time of each repeat (device: events, upload excluded)
    double ms = 0;              // median of runMs
    // Breakdown of the median run (device only).
    double prepareMs = 0, factorMs = 0, loopMs = 0, updateMs = 0, metricsMs = 0;
    double totalMs = 0;            // the whole call of the median run, wall clock
    std::uint64_t peakBytes = 0;   // device memory the GPTQ call held at its peak
    std::uint64_t inputBytes = 0;  // W and H on the device
    int deviceBlock = 0;
    int factorBits = 0;            // the factor's precision in the median run
    bool factorFellBack = false;   // f32 asked for, f64 used
    std::int64_t uRows = 0;        // rows of U solved for (units fitted beyond their block)
    double loss = 0, rtnLoss = 0;  // GPTQ's objective, and RTN's
    double errorRelative = 0, rtnErrorRelative = 0;
    std::vector<std::string> dampRaises;
};

Result<GptqBenchResult> benchGptq(const GptqBenchConfig& config);

}  // namespace ql::cuda
