// GPU benchmark of the calibration statistics (quantlens-cli bench hessian): the Hessian XᵀX on
// tensor cores (the full GEMM against the symmetric half layouts) and the statistics passes, on
// synthetic heavy-tailed activations generated on the device. Plain C++ (no CUDA types).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "util/result.h"

namespace ql::cuda {

struct StatsBenchConfig {
    std::int32_t channels = 4096;
    std::int64_t tokens = 262144;
    bool bf16 = true;
    int repeats = 3;
    bool layouts = true;     // time the Hessian layouts side by side (HessianTiling)
    bool breakdown = false;  // time each pass of one add() (DeviceStatsProfile)
};

// One way of accumulating XᵀX (full GEMM, or a half layout with a tile edge).
struct HessianLayoutResult {
    std::string name;          // "full", "diagonals 2048", "grouped 1024"
    double seconds = 0;        // one product, mean of repeats
    double tflops = 0;         // useful: 2 · channels² · tokens / seconds
    double computed = 0;       // fraction of the full GEMM's work actually run
    double checkError = 0;     // as hessianCheckError, after symmetrize()
    double mirrorSeconds = 0;  // symmetrize() once after the products (0 for the full GEMM)
};

// Where one add() of statistics and Hessian spends its time (kernels/stats.cuh,
// DeviceStatsProfile), mean of repeats.
struct StatsPhaseTimes {
    std::string data;    // "heavy" or "massive"
    bool first = false;  // a fresh probe (what calibration runs: one add per forward) or later
    double statsMs = 0, rebinMs = 0, candidatesMs = 0, hessianMs = 0;
    double growUs = 0, thresholdUs = 0, mergeUs = 0;
    bool rebinned = false, onePass = false, direct = false;
    std::uint32_t candidates = 0, passing = 0;
    std::uint64_t tilesScanned = 0, tiles = 0;
    float threshold = 0;
    int blocks = 0;
    std::string hessianLayout;
};

struct StatsBenchResult {
    std::string device;
    std::uint64_t inputBytes = 0;       // the activation matrix X
    double hessianSeconds = 0;          // one XᵀX (GEMM accumulate, beta = 1), mean of repeats
    double hessianTflops = 0;           // 2 · channels² · tokens / hessianSeconds
    double hessianCheckError = 0;       // largest |H - ref| / sqrt(H_ii H_jj) of sampled entries
    std::int64_t hessianChunkRows = 0;  // rows per GEMM (DeviceStatsConfig::hessianChunkRows)
    double oneGemmSeconds = 0;          // bf16 with all rows in one GEMM (0: not run)
    double oneGemmTflops = 0;
    double oneGemmCheckError = 0;
    double statsFirstSeconds = 0;        // first add: range set up, empty top-k (dense path)
    double statsSeconds = 0;             // later adds of fresh data, mean of repeats
    double statsGBps = 0;                // input bytes / statsSeconds
    double addSeconds = 0;               // one add with statistics and the Hessian together
    std::uint64_t accumulatorBytes = 0;  // DeviceStats with both (Float32 Hessian)
    std::uint64_t peakBytes = 0;         // device memory in use at the peak, above the baseline
    std::string hessianLayout;           // the default layout at this width (HessianTiling::Auto)
    std::vector<HessianLayoutResult> layouts;
    std::vector<StatsPhaseTimes> phases;
};

Result<StatsBenchResult> benchCalibrationStats(const StatsBenchConfig& config);

}  // namespace ql::cuda
