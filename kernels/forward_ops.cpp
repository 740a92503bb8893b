// Host side of the composite device ops (see forward_ops.h).
//
// cuBLAS is column-major; a row-major matrix is the column-major view of its transpose, so a
// row-major C = A·Bᵀ (A m×k, B n×k) is the column-major Cᵀ = B·Aᵀ: gemm(T, N) with B first.
#include "forward_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "attention.cuh"

namespace ql::cuda {
namespace {

cudaDataType_t cudaType(DType t)
{
    return t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
}

bool fitsInt(std::int64_t v)
{
    return v >= 0 && v <= std::numeric_limits<int>::max();
}

}  // namespace

Status linear(const CudaContext& ctx, const void* x, DType xType, std::int64_t ldx, const void* w,
              std::int64_t rows, std::int64_t in, std::int64_t out, void* y, DType yType,
              std::int64_t ldy, float beta)
{
    if (rows == 0) return {};
    if (!fitsInt(rows) || !fitsInt(in) || !fitsInt(out) || !fitsInt(ldx) || !fitsInt(ldy))
        return makeError(ErrorCode::Unsupported, "linear layer dimensions beyond 2^31");
    const float alpha = 1.0f;
    QL_CUBLAS_TRY(cublasGemmEx(ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(rows), int(in),
                               &alpha, w, cudaType(xType), int(in), x, cudaType(xType), int(ldx),
                               &beta, y, cudaType(yType), int(ldy), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
    return {};
}

AttentionKernel attentionKernelFromEnvironment()
{
    static const AttentionKernel kernel = [] {
        const char* v = std::getenv("QL_ATTENTION");
        if (v && std::strcmp(v, "blas") == 0) return AttentionKernel::Blas;
        if (v && std::strcmp(v, "flash") == 0) return AttentionKernel::Flash;
        return AttentionKernel::Auto;
    }();
    return kernel;
}

void AttentionWorkspace::release()
{
    m_scores.release();
    m_probs.release();
    m_pointers.release();
    m_hostPointers.clear();
    m_uploadedFor.clear();
}

Status causalAttention(const CudaContext& ctx, AttentionWorkspace& ws, const AttentionShape& s,
                       const void* qkv, DType type, void* out, AttentionKernel kernel)
{
    const std::int64_t B = s.batch, T = s.seqLen, H = s.heads, D = s.headDim;
    if (B <= 0 || T <= 0 || H <= 0 || s.kvHeads <= 0 || D <= 0 || H % s.kvHeads != 0)
        return makeError(ErrorCode::InvalidArgument, "attention: inconsistent shape");
    const std::int64_t group = H / s.kvHeads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));

    FlashAttentionArgs fa;
    fa.qkv = qkv;
    fa.ld = s.ld;
    fa.qOffset = s.qOffset;
    fa.kOffset = s.kOffset;
    fa.vOffset = s.vOffset;
    fa.out = out;
    fa.ldOut = s.ldOut;
    fa.batch = int(B);
    fa.seqLen = int(T);
    fa.heads = int(H);
    fa.kvHeads = int(s.kvHeads);
    fa.headDim = int(D);
    fa.scale = scale;
    const bool flashOk = type == DType::BF16 && fitsInt(T) && flashAttentionSupports(fa);
    if (kernel == AttentionKernel::Flash && !flashOk)
        return makeError(ErrorCode::Unsupported,
                         "the flash attention kernel needs bf16, head dimension 32, 64 or 128 and "
                         "16-byte aligned rows (head dimension " +
                             std::to_string(D) + ")");
    if (flashOk && kernel != AttentionKernel::Blas) {
        launchFlashAttention(fa, ctx.stream());
        return CudaContext::checkLaunch("flash attention");
    }

    // cuBLAS path: (sequence, head) pairs in chunks whose T × T scores fit the budget.
    const std::int64_t pairs = B * H;
    const std::uint64_t pairBytes =
        std::uint64_t(T) * std::uint64_t(T) * (4 + (type == DType::F32 ? 0 : 2));
    const std::int64_t chunk = std::clamp<std::int64_t>(
        std::int64_t(kAttentionScoreBudget / std::max<std::uint64_t>(1, pairBytes)), 1, pairs);
    if (!fitsInt(T * T) || !fitsInt(chunk))
        return makeError(ErrorCode::Unsupported,
                         "attention: sequence too long for the cuBLAS path");
    const std::size_t scoreCount = std::size_t(chunk) * std::size_t(T) * std::size_t(T);
    if (ws.m_scores.size() < scoreCount) {
        ws.m_scores.release();
        auto b = DeviceBuffer<float>::allocate(scoreCount, ws.m_tracker, "attention scores");
        if (!b) return b.error();
        ws.m_scores = std::move(b).value();
    }
    if (type != DType::F32 && (ws.m_probs.size() < scoreCount || ws.m_probs.type() != type)) {
        ws.m_probs.release();
        auto p = DeviceTensor::allocate(type, scoreCount, ws.m_tracker, "attention probabilities");
        if (!p) return p.error();
        ws.m_probs = std::move(p).value();
    }
    float* scores = ws.m_scores.data();
    void* probs = type == DType::F32 ? static_cast<void*>(scores) : ws.m_probs.data();

    // Pointer arrays for every pair: Q, K, S, P, V, O blocks of `pairs` entries each. The score
    // slots repeat every `chunk` pairs. The runner calls with the same buffers for every block,
    // so the arrays are uploaded once per shape (a pageable upload waits for the stream).
    const std::vector<std::int64_t> key = {B,
                                           T,
                                           H,
                                           s.kvHeads,
                                           D,
                                           s.ld,
                                           s.qOffset,
                                           s.kOffset,
                                           s.vOffset,
                                           s.ldOut,
                                           chunk,
                                           std::int64_t(type),
                                           reinterpret_cast<std::intptr_t>(qkv),
                                           reinterpret_cast<std::intptr_t>(out),
                                           reinterpret_cast<std::intptr_t>(scores),
                                           reinterpret_cast<std::intptr_t>(probs)};
    if (ws.m_uploadedFor != key) {
        // Earlier GEMMs may still read the old arrays: wait for them (once per shape).
        QL_CUDA_TRY(cudaStreamSynchronize(ctx.stream()));
        const std::size_t es = dtypeSize(type);
        const auto* base = static_cast<const char*>(qkv);
        std::vector<const void*>& hp = ws.m_hostPointers;
        hp.assign(std::size_t(6 * pairs), nullptr);
        for (std::int64_t p = 0; p < pairs; ++p) {
            const std::int64_t b = p / H, h = p % H, kvh = h / group;
            const char* row0 = base + std::size_t(b * T * s.ld) * es;
            const std::size_t slot = std::size_t(p % chunk) * std::size_t(T) * std::size_t(T);
            hp[std::size_t(0 * pairs + p)] = row0 + std::size_t(s.qOffset + h * D) * es;
            hp[std::size_t(1 * pairs + p)] = row0 + std::size_t(s.kOffset + kvh * D) * es;
            hp[std::size_t(2 * pairs + p)] = scores + slot;
            hp[std::size_t(3 * pairs + p)] = static_cast<const char*>(probs) + slot * es;
            hp[std::size_t(4 * pairs + p)] = row0 + std::size_t(s.vOffset + kvh * D) * es;
            hp[std::size_t(5 * pairs + p)] =
                static_cast<const char*>(out) + std::size_t(b * T * s.ldOut + h * D) * es;
        }
        if (ws.m_pointers.size() < hp.size()) {
            ws.m_pointers.release();
            auto b = DeviceBuffer<const void*>::allocate(hp.size(), ws.m_tracker,
                                                         "attention pointer arrays");
            if (!b) return b.error();
            ws.m_pointers = std::move(b).value();
        }
        QL_TRY_STATUS(ctx.copyToDevice(ws.m_pointers.data(), hp.data(), hp.size() * sizeof(void*)));
        ws.m_uploadedFor = key;
    }
    const void* const* ptr = ws.m_pointers.data();
    auto array = [&](int which, std::int64_t p0) { return ptr + which * pairs + p0; };

    const cudaDataType_t ct = cudaType(type);
    const float zero = 0.0f, one = 1.0f;
    for (std::int64_t p0 = 0; p0 < pairs; p0 += chunk) {
        const int n = int(std::min(chunk, pairs - p0));
        // S = scale · Q Kᵀ (T × T per pair, float32).
        QL_CUBLAS_TRY(cublasGemmBatchedEx(
            ctx.blas(), CUBLAS_OP_T, CUBLAS_OP_N, int(T), int(T), int(D), &scale, array(1, p0), ct,
            int(s.ld), array(0, p0), ct, int(s.ld), &zero, const_cast<void* const*>(array(2, p0)),
            CUDA_R_32F, int(T), n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        launchCausalSoftmax(scores, probs, type, n, T, ctx.stream());
        QL_TRY_STATUS(CudaContext::checkLaunch("causal softmax"));
        // O = P V (T × D per pair) into the attention output.
        QL_CUBLAS_TRY(cublasGemmBatchedEx(
            ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(T), int(T), &one, array(4, p0), ct,
            int(s.ld), array(3, p0), ct, int(T), &zero, const_cast<void* const*>(array(5, p0)), ct,
            int(s.ldOut), n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return {};
}

}  // namespace ql::cuda
