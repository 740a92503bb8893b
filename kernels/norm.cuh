// RMSNorm on the device, fused with the cast to the GEMM input type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace ql::cuda {

// out[r, c] = weight[c] * (x[r, c] / sqrt(mean_c x[r, c]² + eps)) for rows × cols float32 `x`,
// the mean square accumulated in double and the scale rounded to float, as cpu::rmsNorm does;
// `out` is F32 or BF16 (rounded to nearest even). One block per row.
void launchRmsNorm(const float* x, std::int64_t rows, std::int64_t cols, const float* weight,
                   float eps, void* out, DType outType, cudaStream_t stream);

}  // namespace ql::cuda
