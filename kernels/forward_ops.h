// The composite device ops the forward pass is built from, host side: linear layers through
// cuBLAS and causal grouped-query attention (cuBLAS batched GEMMs + causal softmax, or the fused
// flash kernel). Everything is enqueued on the context's stream; nothing here synchronises.
#pragma once

#include <cstdint>
#include <vector>

#include "cuda_context.h"
#include "dtype.h"

namespace ql::cuda {

// y (rows × out, row stride ldy) = x (rows × in, stride ldx) · Wᵀ + beta · y, W row-major
// {out, in}. Float32 accumulation always (CUBLAS_COMPUTE_32F: no TF32 for F32 inputs); x and W
// share a type, y may be F32 or that type. beta = 1 fuses a residual add.
Status linear(const CudaContext& ctx, const void* x, DType xType, std::int64_t ldx, const void* w,
              std::int64_t rows, std::int64_t in, std::int64_t out, void* y, DType yType,
              std::int64_t ldy, float beta = 0.0f);

enum class AttentionKernel {
    Auto,   // flash for BF16 where supported, else cuBLAS
    Blas,   // cuBLAS batched GEMMs + causal softmax (any shape, F32 or BF16)
    Flash,  // the fused bf16 kernel; an error where it does not apply
};

// Reads $QL_ATTENTION ("blas" or "flash") once: a switch for benchmarks and comparisons.
AttentionKernel attentionKernelFromEnvironment();

struct AttentionShape {
    std::int64_t batch = 0, seqLen = 0, heads = 0, kvHeads = 0, headDim = 0;
    std::int64_t ld = 0;  // row stride of the fused q|k|v rows
    std::int64_t qOffset = 0, kOffset = 0, vOffset = 0;
    std::int64_t ldOut = 0;
};

// Scratch memory of the cuBLAS path (score and probability blocks, GEMM pointer arrays), kept
// between calls and grown when a larger shape comes.
class AttentionWorkspace {
public:
    explicit AttentionWorkspace(MemoryTracker* tracker) : m_tracker(tracker) {}
    void release();

private:
    friend Status causalAttention(const CudaContext&, AttentionWorkspace&, const AttentionShape&,
                                  const void*, DType, void*, AttentionKernel);
    MemoryTracker* m_tracker;
    DeviceBuffer<float> m_scores;
    DeviceTensor m_probs;
    DeviceBuffer<const void*> m_pointers;
    std::vector<const void*> m_hostPointers;
    std::vector<std::int64_t> m_uploadedFor;  // the call m_pointers were built for
};

// out[b·T + t, h·D ..] = softmax_j≤t(q·kⱼ / sqrt(D)) · vⱼ for every sequence b, query head h and
// its KV head h / (heads / kvHeads); q, k, v read from the fused rows of `qkv`. Positions start at
// 0 in each sequence.
Status causalAttention(const CudaContext& ctx, AttentionWorkspace& ws, const AttentionShape& s,
                       const void* qkv, DType type, void* out,
                       AttentionKernel kernel = AttentionKernel::Auto);

// The most bytes the cuBLAS path's score blocks may take (more pairs per chunk, fewer launches).
constexpr std::uint64_t kAttentionScoreBudget = 512ull << 20;

}  // namespace ql::cuda
