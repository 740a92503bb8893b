// GPTQ of one matrix on the GPU: the same algorithm and results as core's quantizeGptq
// (quant/gptq.h), for the uniform INT-n formats. Plain C++ over device pointers; the design is at
// the top of cuda_gptq.cpp.
#pragma once

#include <cstdint>

#include "quant/gptq.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql::cuda {

class CudaContext;

// The precision F, the Cholesky factor of the damped Hessian, is computed in. F32 (what PyTorch's
// GPTQ uses) falls back to F64 at the same dampening when its factorization fails, is not finite
// or has a pivot below kGptqF32MinPivot of its diagonal entry (float32 cannot resolve it); only
// F64 failing raises the dampening. Default: the environment's QL_GPTQ_FACTOR (f32 or f64),
// else F32.
enum class GptqFactorPrecision { Default, F32, F64 };
// F_ii^2 / Hd_ii below this: factor in double. 1e-3 let a rank-deficient H with damp 0.001 through
// in float32, 99.31% of its codes equal to the double factor's (test_cuda_gptq factorPrecision).
constexpr double kGptqF32MinPivot = 1e-2;

// Where the time of one call went (CUDA events on the context's stream), for `bench gptq`.
struct GptqDeviceTimings {
    double prepareMs = 0;  // checks, diagonal, permutation, fitting before the loop
    double factorMs = 0;   // potrf, F's extraction and any rows of U, every attempt
    double loopMs = 0;     // the column kernels
    double updateMs = 0;   // the left-looking GEMMs (and those of units fitted beyond their block)
    double gptqMs = 0;     // from the first kernel to the quantized weights on the device
    double metricsMs = 0;  // RTN, the Hessian-weighted errors, copies back
    std::uint64_t peakBytes = 0;  // device memory this call allocated at its peak (cuSOLVER
                                  // workspace included; W and H excluded)
    int deviceBlock = 0;          // columns per lazy block on the device (the largest)
    int factorBits = 0;           // 32 or 64: the precision the factor finally used
    bool factorFellBack = false;  // F32 was asked for and F64 used (at least once)
    std::int64_t uRows = 0;       // rows of U computed for units fitted beyond their block
};

// W: rows x cols row-major float32 on the device, replaced in place by the quantized (decoded)
// values. H: cols x cols float32 on the device (symmetric), consumed (may be overwritten).
// Fills everything in GptqResult the CPU version fills (quantized codes/params on the host,
// weights, loss, rtnLoss, error, rtnError, damp, dampRaises, deadColumns, order, groupIndex,
// seconds) and reports to `monitor` as quantizeGptq does (gptq_observer.h; the progress events
// and the pause gate come at the device's synchronization points, every few blocks, with every
// lazy block of options.blockSize reported in order). The column loop and the updates run in
// float32, the factorization as GptqFactorPrecision says.
// Errors: as quantizeGptq, plus Unsupported for a format gptqDeviceSupports rejects, Device and
// OutOfMemory from CUDA.
Result<GptqResult> quantizeGptqDevice(CudaContext& ctx, float* dW, float* dH, std::int64_t rows,
                                      std::int64_t cols, const QuantFormat& format,
                                      const GptqOptions& options, const ProgressFn& progress = {},
                                      const GptqMonitor& monitor = {});
// The same, with the factor's precision chosen and recording where the time went (timings may be
// null).
Result<GptqResult> quantizeGptqDeviceTimed(CudaContext& ctx, float* dW, float* dH,
                                           std::int64_t rows, std::int64_t cols,
                                           const QuantFormat& format, const GptqOptions& options,
                                           const ProgressFn& progress, const GptqMonitor& monitor,
                                           GptqFactorPrecision factor, GptqDeviceTimings* timings);

// Whether the device path handles this format (else callers use the CPU quantizeGptq): the
// uniform INT2..INT8 formats, symmetric or asymmetric, per tensor, per channel or any group.
bool gptqDeviceSupports(const QuantFormat& format);

}  // namespace ql::cuda
