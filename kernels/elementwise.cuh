// Element-wise device ops of the forward pass: embedding lookup, SwiGLU, bias add, conversions.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "dtype.h"

namespace ql::cuda {

// out (rows × dim, float32) = rows `ids` of `table` (F32 or BF16, widened). Ids must be in range
// (the caller checks them on the host).
void launchEmbedding(const void* table, DType tableType, const std::int32_t* ids, std::int64_t rows,
                     std::int64_t dim, float* out, cudaStream_t stream);

// out[r, c] = silu(g) * u with g = in[r * ldIn + c], u = in[r * ldIn + upOffset + c]: the gate
// and up projections side by side in one GEMM output. silu(g) = g / (1 + exp(-g)) in float.
void launchSwiglu(const void* in, DType inType, std::int64_t rows, std::int64_t cols,
                  std::int64_t ldIn, std::int64_t upOffset, void* out, DType outType,
                  cudaStream_t stream);

// x[r, c] += bias[c] for c < cols (rows × ld).
void launchAddBias(void* x, DType type, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                   const float* bias, cudaStream_t stream);

// out = in converted (float32 to F32 or BF16 storage; BF16 rounds to nearest even).
void launchFromF32(const float* in, std::size_t count, void* out, DType outType,
                   cudaStream_t stream);
// out = in widened to float32.
void launchToF32(const void* in, DType inType, std::size_t count, float* out, cudaStream_t stream);

}  // namespace ql::cuda
