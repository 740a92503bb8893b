// Causal attention kernels. Two paths compute the same thing:
//   - the cuBLAS path (forward_ops.cpp): scores = Q Kᵀ by batched GEMM, launchCausalSoftmax,
//     out = P V by batched GEMM; any head dimension, F32 or BF16, the reference on the device;
//   - launchFlashAttention: one fused kernel on bf16 tensor cores (mma.sync m16n8k16) with an
//     online softmax, never materialising the T × T scores (FlashAttention-2's schedule).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace ql::cuda {

// Softmax of each row of `scores` (pairs × T rows of T floats, already scaled) over the causal
// prefix: row i is query position i % T and sees keys 0 .. i % T; the rest of its row is written
// as 0. `probs` (same shape, F32 or BF16) may be `scores` itself when F32. Maximum subtracted,
// float32 throughout, normalised by multiplying with 1 / sum as cpu::attention does.
void launchCausalSoftmax(float* scores, void* probs, DType probsType, std::int64_t pairs,
                         std::int64_t seqLen, cudaStream_t stream);

struct FlashAttentionArgs {
    const void* qkv = nullptr;  // bf16, batch·seqLen rows of `ld` elements
    std::int64_t ld = 0;        // row stride of qkv
    std::int64_t qOffset = 0, kOffset = 0, vOffset = 0;  // column of head 0 of q, k, v
    void* out = nullptr;  // bf16, batch·seqLen rows of `ldOut`; head h at column h·headDim
    std::int64_t ldOut = 0;
    int batch = 0, seqLen = 0, heads = 0, kvHeads = 0, headDim = 0;
    float scale = 0;  // usually 1 / sqrt(headDim)
};

// Whether launchFlashAttention handles these arguments: head dimension 32, 64 or 128 and 16-byte
// aligned rows (ld, offsets multiples of 8).
bool flashAttentionSupports(const FlashAttentionArgs& a);
void launchFlashAttention(const FlashAttentionArgs& a, cudaStream_t stream);

}  // namespace ql::cuda
