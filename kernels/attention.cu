// Causal softmax (for the cuBLAS attention path) and a fused flash-attention kernel for bf16.
//
// Flash kernel layout. A block of 4 warps owns 64 query rows of one (sequence, head); each warp
// owns 16 rows and keeps its Q rows as mma A-fragments in registers for the whole kernel. Key and
// value tiles of 64 rows are staged in shared memory (rows padded by 8 elements, which makes the
// 32-bit fragment loads and ldmatrix conflict-free). Per tile: S = Q Kᵀ (mma m16n8k16, float
// accumulators), causal mask on the diagonal tile, online softmax in the log2 domain (running max
// m and partial row sums l per thread, reduced over the 4 threads of a row at the end), then
// O += P V with P re-packed from the S accumulators into A-fragments (the accumulator layout of
// two n-blocks is the A layout of one k-step) and V read by ldmatrix.trans. Query tiles are
// scheduled longest first. No cp.async pipelining yet.
#include <cstdint>

#include "attention.cuh"
#include "device_math.cuh"

namespace ql::cuda {
namespace {

template <class P>
__global__ void causalSoftmaxKernel(float* __restrict__ scores, P* __restrict__ probs,
                                    std::int64_t seqLen)
{
    const std::int64_t row = blockIdx.x;
    const std::int64_t visible = row % seqLen + 1;
    float* s = scores + row * seqLen;
    P* p = probs + row * seqLen;
    float mx = -INFINITY;
    for (std::int64_t j = threadIdx.x; j < visible; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = device::blockMax(mx);
    float sum = 0;
    for (std::int64_t j = threadIdx.x; j < visible; j += blockDim.x) {
        const float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    sum = device::blockSum(sum);
    const float inv = 1.0f / sum;
    for (std::int64_t j = threadIdx.x; j < seqLen; j += blockDim.x)
        p[j] = device::fromFloat<P>(j < visible ? s[j] * inv : 0.0f);
}

__device__ __forceinline__ void mmaBf16(float (&c)[4], const std::uint32_t (&a)[4],
                                        std::uint32_t b0, std::uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrixX2Trans(std::uint32_t& r0, std::uint32_t& r1,
                                                const void* smem)
{
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(addr));
}

__device__ __forceinline__ std::uint32_t packBf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&v);
}

constexpr int kTile = 64;  // query rows per block and keys per tile
constexpr int kWarps = 4;

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    flashAttentionKernel(const __nv_bfloat16* __restrict__ qkv, std::int64_t ld,
                         std::int64_t qOffset, std::int64_t kOffset, std::int64_t vOffset,
                         __nv_bfloat16* __restrict__ out, std::int64_t ldOut, int seqLen, int group,
                         float scaleLog2)
{
    constexpr int kPad = D + 8;
    constexpr int kSteps = D / 16;  // k-steps of Q Kᵀ
    constexpr int oBlocks = D / 8;  // n-blocks of O
    __shared__ __align__(16) __nv_bfloat16 ks[kTile][kPad];
    __shared__ __align__(16) __nv_bfloat16 vs[kTile][kPad];

    const int qTile = gridDim.x - 1 - blockIdx.x;  // longest (latest) tiles first
    const int h = blockIdx.y, kvh = h / group;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gr = lane / 4, gc = (lane % 4) * 2;
    const __nv_bfloat16* base = qkv + std::int64_t(blockIdx.z) * seqLen * ld;
    const int q0 = qTile * kTile;
    const int row0 = q0 + warp * 16 + gr, row1 = row0 + 8;

    std::uint32_t qf[kSteps][4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = (r & 1) ? row1 : row0;
            const int col = s * 16 + gc + ((r & 2) ? 8 : 0);
            qf[s][r] = row < seqLen ? *reinterpret_cast<const std::uint32_t*>(
                                          base + std::int64_t(row) * ld + qOffset + h * D + col)
                                    : 0u;
        }

    float o[oBlocks][4];
#pragma unroll
    for (int n = 0; n < oBlocks; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int kt = 0; kt <= qTile; ++kt) {
        const int k0 = kt * kTile;
        __syncthreads();  // the previous tile is consumed
        for (int idx = threadIdx.x; idx < kTile * D / 8; idx += kWarps * 32) {
            const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
            const int key = k0 + r;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (key < seqLen) {
                const __nv_bfloat16* src = base + std::int64_t(key) * ld + kvh * D + c;
                kv = *reinterpret_cast<const uint4*>(src + kOffset);
                vv = *reinterpret_cast<const uint4*>(src + vOffset);
            }
            *reinterpret_cast<uint4*>(&ks[r][c]) = kv;
            *reinterpret_cast<uint4*>(&vs[r][c]) = vv;
        }
        __syncthreads();

        float s[kTile / 8][4];
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
            for (int k = 0; k < kSteps; ++k) {
                const __nv_bfloat16* kr = &ks[n * 8 + gr][k * 16 + gc];
                mmaBf16(s[n], qf[k], *reinterpret_cast<const std::uint32_t*>(kr),
                        *reinterpret_cast<const std::uint32_t*>(kr + 8));
            }
        }

        const bool diagonal = kt == qTile;
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + n * 8 + gc + (e & 1);
                const int row = e < 2 ? row0 : row1;
                float v = s[n][e] * scaleLog2;
                if (diagonal && key > row) v = -INFINITY;
                s[n][e] = v;
                if (e < 2)
                    mx0 = fmaxf(mx0, v);
                else
                    mx1 = fmaxf(mx1, v);
            }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        // Every row sees key k0 at least (k0 <= its position), so the new maxima are finite.
        const float mNew0 = fmaxf(m0, mx0), mNew1 = fmaxf(m1, mx1);
        const float alpha0 = exp2f(m0 - mNew0), alpha1 = exp2f(m1 - mNew1);
        m0 = mNew0;
        m1 = mNew1;
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n) {
            s[n][0] = exp2f(s[n][0] - m0);
            s[n][1] = exp2f(s[n][1] - m0);
            s[n][2] = exp2f(s[n][2] - m1);
            s[n][3] = exp2f(s[n][3] - m1);
            sum0 += s[n][0] + s[n][1];
            sum1 += s[n][2] + s[n][3];
        }
        l0 = l0 * alpha0 + sum0;
        l1 = l1 * alpha1 + sum1;
#pragma unroll
        for (int n = 0; n < oBlocks; ++n) {
            o[n][0] *= alpha0;
            o[n][1] *= alpha0;
            o[n][2] *= alpha1;
            o[n][3] *= alpha1;
        }

#pragma unroll
        for (int j = 0; j < kTile / 16; ++j) {
            const std::uint32_t a[4] = {packBf16(s[2 * j][0], s[2 * j][1]),
                                        packBf16(s[2 * j][2], s[2 * j][3]),
                                        packBf16(s[2 * j + 1][0], s[2 * j + 1][1]),
                                        packBf16(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
            for (int n = 0; n < oBlocks; ++n) {
                std::uint32_t b0, b1;
                ldmatrixX2Trans(b0, b1, &vs[j * 16 + (lane % 16)][n * 8]);
                mmaBf16(o[n], a, b0, b1);
            }
        }
    }

#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    __nv_bfloat16* dst = out + std::int64_t(blockIdx.z) * seqLen * ldOut + h * D;
#pragma unroll
    for (int n = 0; n < oBlocks; ++n) {
        const int col = n * 8 + gc;
        if (row0 < seqLen)
            *reinterpret_cast<std::uint32_t*>(dst + std::int64_t(row0) * ldOut + col) =
                packBf16(o[n][0] * inv0, o[n][1] * inv0);
        if (row1 < seqLen)
            *reinterpret_cast<std::uint32_t*>(dst + std::int64_t(row1) * ldOut + col) =
                packBf16(o[n][2] * inv1, o[n][3] * inv1);
    }
}

}  // namespace

void launchCausalSoftmax(float* scores, void* probs, DType probsType, std::int64_t pairs,
                         std::int64_t seqLen, cudaStream_t stream)
{
    const std::int64_t rows = pairs * seqLen;
    if (rows <= 0) return;
    const int threads = seqLen >= 1024 ? 256 : seqLen >= 128 ? 128 : 32;
    if (probsType == DType::F32)
        causalSoftmaxKernel<<<unsigned(rows), threads, 0, stream>>>(
            scores, static_cast<float*>(probs), seqLen);
    else
        causalSoftmaxKernel<<<unsigned(rows), threads, 0, stream>>>(
            scores, static_cast<__nv_bfloat16*>(probs), seqLen);
}

bool flashAttentionSupports(const FlashAttentionArgs& a)
{
    const bool dimOk = a.headDim == 32 || a.headDim == 64 || a.headDim == 128;
    return dimOk && a.ld % 8 == 0 && a.qOffset % 8 == 0 && a.kOffset % 8 == 0 &&
           a.vOffset % 8 == 0 && a.ldOut % 2 == 0 && a.heads % a.kvHeads == 0 && a.seqLen > 0 &&
           a.batch > 0 && a.batch <= 65535 && a.heads <= 65535;
}

void launchFlashAttention(const FlashAttentionArgs& a, cudaStream_t stream)
{
    const dim3 grid(unsigned((a.seqLen + kTile - 1) / kTile), unsigned(a.heads), unsigned(a.batch));
    const float scaleLog2 = a.scale * 1.4426950408889634f;
    const int group = a.heads / a.kvHeads;
    const auto* qkv = static_cast<const __nv_bfloat16*>(a.qkv);
    auto* out = static_cast<__nv_bfloat16*>(a.out);
#define QL_FLASH(D)                                            \
    flashAttentionKernel<D><<<grid, kWarps * 32, 0, stream>>>( \
        qkv, a.ld, a.qOffset, a.kOffset, a.vOffset, out, a.ldOut, a.seqLen, group, scaleLog2)
    if (a.headDim == 32)
        QL_FLASH(32);
    else if (a.headDim == 64)
        QL_FLASH(64);
    else
        QL_FLASH(128);
#undef QL_FLASH
}

}  // namespace ql::cuda
