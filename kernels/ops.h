// Host-side wrappers of every device op of the forward pass, for tests: plain C++ (no CUDA types),
// float32 host vectors in and out, one call = upload, run the same kernel the runner runs, copy
// back. With DType::BF16 the inputs are rounded to bf16 on the device (as the runner stores them)
// and bf16 outputs are widened back to float32, so a test compares them with the CPU op run on
// bf16-rounded inputs. Calls share one lazily created CudaContext on device 0 and synchronise.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dtype.h"
#include "util/result.h"

namespace ql::cuda::ops {

// Whether a CUDA device can be used; the reason in the error when not.
Status available();

// cpu::rmsNorm; x rows × weight.size(), output in `outType`.
Result<std::vector<float>> rmsNorm(std::span<const float> x, std::int64_t rows,
                                   std::span<const float> weight, float eps, DType outType);

// cpu::linear: y = x Wᵀ (+ bias) with x rows × in, W out × in; x and W in `type`, y float32.
Result<std::vector<float>> linear(std::span<const float> x, std::int64_t rows,
                                  std::span<const float> w, std::int64_t out,
                                  std::span<const float> bias, DType type);

// cpu::applyRope on x (rows × heads·headDim, `type`); row r at position r % seqLen.
Result<std::vector<float>> rope(std::span<const float> x, std::int64_t rows, std::int64_t heads,
                                std::int64_t headDim, std::span<const double> invFreq,
                                double magnitude, bool halfSplit, std::int64_t seqLen, DType type);

enum class Attention { Auto, Blas, Flash };
// cpu::attention per sequence: q batch·seqLen × heads·headDim, k and v batch·seqLen ×
// kvHeads·headDim (fused into one q|k|v buffer on the device, as in the runner).
Result<std::vector<float>> attention(std::span<const float> q, std::span<const float> k,
                                     std::span<const float> v, std::int64_t batch,
                                     std::int64_t seqLen, std::int64_t heads, std::int64_t kvHeads,
                                     std::int64_t headDim, DType type, Attention kernel);

// cpu::swiglu: silu(gate) * up, rows × cols.
Result<std::vector<float>> swiglu(std::span<const float> gate, std::span<const float> up,
                                  std::int64_t rows, std::int64_t cols, DType type);

// cpu::embeddingLookup from a vocab × dim table stored in `tableType`.
Result<std::vector<float>> embedding(std::span<const float> table, std::int64_t dim,
                                     std::span<const std::int32_t> ids, DType tableType);

// Round-trip through `type` storage (bf16 rounding as the device does it).
Result<std::vector<float>> roundTrip(std::span<const float> x, DType type);

}  // namespace ql::cuda::ops
