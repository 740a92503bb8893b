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

// Where the time of one call went (CUDA events on the context's stream), for `bench gptq`.
struct GptqDeviceTimings {
    double prepareMs = 0;         // checks, diagonal, permutation, fitting before the loop
    double factorMs = 0;          // potrf + trtri (double) and U, every dampening attempt
    double loopMs = 0;            // the in-block column kernels
    double updateMs = 0;          // the lazy trailing GEMMs
    double gptqMs = 0;            // from the first kernel to the quantized weights on the device
    double metricsMs = 0;         // RTN, the Hessian-weighted errors, the decode check, copies back
    std::uint64_t peakBytes = 0;  // device memory this call allocated at its peak (cuSOLVER
                                  // workspace included; W and H excluded)
    int deviceBlock = 0;          // columns per lazy block on the device
};

// W: rows x cols row-major float32 on the device, replaced in place by the quantized (decoded)
// values. H: cols x cols float32 on the device (symmetric), consumed (may be overwritten).
// Fills everything in GptqResult the CPU version fills (quantized codes/params on the host,
// weights, loss, rtnLoss, error, rtnError, damp, dampRaises, deadColumns, order, groupIndex,
// seconds). The factorization runs in double; the column loop and the updates in float32.
// Errors: as quantizeGptq, plus Unsupported for a format gptqDeviceSupports rejects, Device and
// OutOfMemory from CUDA.
Result<GptqResult> quantizeGptqDevice(CudaContext& ctx, float* dW, float* dH, std::int64_t rows,
                                      std::int64_t cols, const QuantFormat& format,
                                      const GptqOptions& options, const ProgressFn& progress = {});
// The same, recording where the time went.
Result<GptqResult> quantizeGptqDeviceTimed(CudaContext& ctx, float* dW, float* dH,
                                           std::int64_t rows, std::int64_t cols,
                                           const QuantFormat& format, const GptqOptions& options,
                                           const ProgressFn& progress, GptqDeviceTimings* timings);

// Whether the device path handles this format (else callers use the CPU quantizeGptq): the
// uniform INT2..INT8 formats, symmetric or asymmetric, per tensor, per channel or any group.
bool gptqDeviceSupports(const QuantFormat& format);

}  // namespace ql::cuda
