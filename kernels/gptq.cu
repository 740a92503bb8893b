// GPTQ kernels (see gptq.cuh for layouts and cuda_gptq.cpp for the algorithm around them).
//
// The column loop: rows are independent in GPTQ (row r's errors only feed row r), so a row is
// owned by kLanes lanes of a warp (4 rows per warp), each holding kSlots of the block's columns in
// registers: the original weight and the left-looking accumulator acc_k = sum_{j<k} D_j F_jk. At
// column i the owner lane forms w_i = w0_i + acc_i / F_ii, broadcasts it (shuffle), every lane
// rounds it and adds D_i F_ik to its own later columns (F's row i read from shared memory as
// float4s, the same words for the 4 rows of a warp): no block-wide barrier per column. Scale
// groups are fitted per row with the CPU codec's float expressions (min/max from 0, fp16 scales
// by round to nearest even, rint ties to even), and rounding picks the nearest grid value, ties
// to the lower value, exactly as core/quant/gptq.cpp's level tables do. A unit fitted at column
// i needs the current (right-looking) weights of its other columns, which the left-looking
// accumulators are not: inside the block a triangular solve with F's block gives them
// (fitUnit), beyond it gptq_plan.h's rows of U do.
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>

#include "gptq.cuh"

namespace ql::cuda {
namespace {

constexpr int kThreads = 256;

struct Grid1 {
    float scale;
    int zero;
};

__device__ __forceinline__ float roundToFp16(float x)
{
    return fminf(__half2float(__float2half_rn(x)), 65504.0f);
}

// Nearest integer of v in [lo, hi], ties to even; NaN lands on lo (uniform.cpp's roundClamp).
__device__ __forceinline__ int roundClamp(float v, int lo, int hi)
{
    float c = v > float(lo) ? v : float(lo);
    c = c < float(hi) ? c : float(hi);
    return int(rintf(c));
}

__device__ __forceinline__ int codeMin(const GptqGrid& g)
{
    return g.symmetric ? -(1 << (g.bits - 1)) : 0;
}

__device__ __forceinline__ int codeMax(const GptqGrid& g)
{
    return g.symmetric ? (1 << (g.bits - 1)) - 1 : (1 << g.bits) - 1;
}

// uniform.cpp's uniformGrid.
__device__ Grid1 fitGrid(float lo, float hi, const GptqGrid& g)
{
    Grid1 out{0.0f, 0};
    const int qmax = codeMax(g);
    if (g.symmetric) {
        const float amax = fmaxf(fabsf(lo), fabsf(hi));
        out.scale = isfinite(amax) ? roundToFp16(amax / float(qmax)) : 0.0f;
        return out;
    }
    lo = fminf(lo, 0.0f);
    hi = fmaxf(hi, 0.0f);
    const float range = hi - lo;
    if (!(range > 0) || !isfinite(range)) return out;
    out.scale = roundToFp16(range / float(qmax));
    if (!(out.scale > 0)) return out;
    out.zero = roundClamp(-lo / out.scale, 0, qmax);
    return out;
}

__device__ __forceinline__ float levelValue(const Grid1& grid, int q)
{
    return grid.scale * float(q - grid.zero);
}

// The nearest grid value to x, ties to the lower value; returns the signed code.
__device__ __forceinline__ int nearestCode(float x, const Grid1& grid, int qmin, int qmax,
                                           float& value)
{
    if (!(grid.scale > 0)) {
        // Every code decodes to (signed) zero; the CPU's sorted table keeps the smallest code.
        value = levelValue(grid, qmin);
        return qmin;
    }
    int best = roundClamp(x / grid.scale + float(grid.zero), qmin, qmax);
    float bestValue = levelValue(grid, best);
    double bestDist = fabs(double(x) - double(bestValue));
    if (best > qmin) {
        const float v = levelValue(grid, best - 1);
        const double d = fabs(double(x) - double(v));
        if (d <= bestDist) best -= 1, bestValue = v, bestDist = d;
    }
    if (best < qmax) {
        const float v = levelValue(grid, best + 1);
        const double d = fabs(double(x) - double(v));
        if (d < bestDist) best += 1, bestValue = v, bestDist = d;
    }
    value = bestValue;
    return best;
}

__device__ __forceinline__ double warpSum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// ---- layout kernels ---------------------------------------------------------------------------

__global__ void permuteInKernel(const float* __restrict__ w, const std::int32_t* __restrict__ perm,
                                const std::uint8_t* __restrict__ dead, std::int64_t rows,
                                std::int64_t cols, float* __restrict__ wc)
{
    __shared__ float tile[32][33];
    const std::int64_t p0 = std::int64_t(blockIdx.x) * 32, r0 = std::int64_t(blockIdx.y) * 32;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int k = ty; k < 32; k += 8) {
        const std::int64_t p = p0 + tx, r = r0 + k;
        if (p < cols && r < rows) {
            const std::int32_t c = perm[p];
            tile[k][tx] = dead[c] ? 0.0f : w[r * cols + c];
        }
    }
    __syncthreads();
    for (int k = ty; k < 32; k += 8) {
        const std::int64_t r = r0 + tx, p = p0 + k;
        if (p < cols && r < rows) wc[p * rows + r] = tile[tx][k];
    }
}

__global__ void permuteOutKernel(const std::uint8_t* __restrict__ codesC,
                                 const std::int32_t* __restrict__ perm,
                                 const float* __restrict__ scales,
                                 const std::int32_t* __restrict__ zeros, GptqGrid grid,
                                 std::int64_t rows, std::int64_t cols, float* __restrict__ out,
                                 std::uint8_t* __restrict__ codesOut)
{
    __shared__ std::uint8_t ctile[32][33];
    const std::int64_t p0 = std::int64_t(blockIdx.x) * 32, r0 = std::int64_t(blockIdx.y) * 32;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int k = ty; k < 32; k += 8) {
        const std::int64_t r = r0 + tx, p = p0 + k;
        if (p < cols && r < rows) ctile[k][tx] = codesC[p * rows + r];
    }
    __syncthreads();
    const int offset = grid.symmetric ? 1 << (grid.bits - 1) : 0;
    const int unitLen = int(grid.unitLen);
    for (int k = ty; k < 32; k += 8) {
        const std::int64_t p = p0 + tx, r = r0 + k;
        if (p < cols && r < rows) {
            const int c = perm[p];
            const std::uint8_t code = ctile[tx][k];
            const std::int64_t gi = grid.perTensor ? 0 : r * grid.groupsPerRow + c / unitLen;
            Grid1 g;
            g.scale = scales[gi];
            g.zero = grid.symmetric ? 0 : zeros[gi];
            const std::int64_t at = r * cols + c;
            out[at] = levelValue(g, int(code) - offset);
            codesOut[at] = code;
        }
    }
}

__global__ void diagKernel(const float* __restrict__ h, std::int64_t n, float* __restrict__ diag)
{
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) diag[i] = h[i * n + i];
}

__global__ void checkFiniteKernel(const float* __restrict__ x, std::int64_t n, int* flag)
{
    bool bad = false;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        bad = bad || !isfinite(x[i]);
    if (bad) atomicExch(flag, 1);
}

__global__ void toFloatKernel(const double* __restrict__ x, std::int64_t n, float* __restrict__ out)
{
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        out[i] = float(x[i]);
}

template <class T>
__global__ void factorInputKernel(const float* __restrict__ h,
                                  const std::int32_t* __restrict__ perm,
                                  const std::uint8_t* __restrict__ dead, std::int64_t n,
                                  double damp, T* __restrict__ r)
{
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // row of R
    const std::int64_t j = std::int64_t(blockIdx.y) * blockDim.y + threadIdx.y;  // column of R
    if (i >= n || j >= n) return;
    const std::int32_t a = perm[n - 1 - i], b = perm[n - 1 - j];
    // H(b, a) = H(a, b): reading along a row of H keeps the loads coalesced without act-order.
    double v = (a == b && dead[a]) ? 1.0 : double(h[std::int64_t(b) * n + a]);
    if (i == j) v += damp;
    r[j * n + i] = T(v);
}

// A 32 x 32 tile of F per CTA (32 x 8 threads), transposed through shared memory: the reads of
// L run down its columns, the writes along F's rows.
template <class T>
__global__ void extractFKernel(const T* __restrict__ l, std::int64_t n,
                               const float* __restrict__ diag,
                               const std::int32_t* __restrict__ perm,
                               const std::uint8_t* __restrict__ dead, double damp, double minPivot,
                               float* __restrict__ f, float* __restrict__ fDiag,
                               float* __restrict__ fInv, int* flags)
{
    __shared__ float tile[32][33];  // tile[k - k0][i - i0] = F(i, k)
    const std::int64_t k0 = std::int64_t(blockIdx.x) * 32, i0 = std::int64_t(blockIdx.y) * 32;
    const int tx = threadIdx.x, ty = threadIdx.y;
    bool bad = false, small = false;
    for (int kk = ty; kk < 32; kk += 8) {
        const std::int64_t i = i0 + tx, k = k0 + kk;
        float v = 0.0f;
        if (i < n && k < n && k >= i) {
            const T x = l[(n - 1 - k) * n + (n - 1 - i)];
            v = float(x);
            bad = bad || !isfinite(v);
            if (i == k) {
                bad = bad || !(x > T(0));
                fDiag[i] = v;
                fInv[i] = float(T(1) / x);
                const std::int32_t c = perm[i];
                const double hd = (dead[c] ? 1.0 : double(diag[c])) + damp;
                small = small || double(x) * double(x) < minPivot * hd;
            }
        }
        tile[kk][tx] = v;
    }
    __syncthreads();
    for (int ii = ty; ii < 32; ii += 8) {
        const std::int64_t i = i0 + ii, k = k0 + tx;
        if (i < n && k < n) f[i * n + k] = tile[tx][ii];
    }
    if (bad) atomicExch(flags, 1);
    if (small) atomicExch(flags + 1, 1);
}

template <class T>
__global__ void unitRowsKernel(T* __restrict__ y, std::int64_t m, std::int64_t n)
{
    for (std::int64_t idx = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < m * n;
         idx += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t i = idx % m, j = idx / m;
        y[idx] = j == n - 1 - i ? T(1) : T(0);
    }
}

template <class T>
__global__ void gatherURowsKernel(const T* __restrict__ y, std::int64_t m, std::int64_t n,
                                  const std::int32_t* __restrict__ at, std::int64_t count,
                                  float* __restrict__ uc)
{
    for (std::int64_t idx = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < m * count;
         idx += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t i = idx % m, j = idx / m;
        uc[idx] = float(y[(n - 1 - at[j]) * m + i]);
    }
}

// One block, any n: min/max starting from 0 (uniform.cpp's minMax).
__global__ void minMaxKernel(const float* __restrict__ x, std::int64_t n, float* lohi)
{
    __shared__ float slo[1024], shi[1024];
    float lo = 0.0f, hi = 0.0f;
    for (std::int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = x[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    slo[threadIdx.x] = lo;
    shi[threadIdx.x] = hi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (int(threadIdx.x) < s) {
            slo[threadIdx.x] = fminf(slo[threadIdx.x], slo[threadIdx.x + s]);
            shi[threadIdx.x] = fmaxf(shi[threadIdx.x], shi[threadIdx.x + s]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        lohi[0] = slo[0];
        lohi[1] = shi[0];
    }
}

__global__ void tensorGridKernel(const float* lohi, GptqGrid grid, float* scales,
                                 std::int32_t* zeros)
{
    const Grid1 g = fitGrid(lohi[0], lohi[1], grid);
    scales[0] = g.scale;
    if (!grid.symmetric) zeros[0] = g.zero;
}

// Thread per (row, unit); rows fastest so that the column reads are coalesced.
__global__ void fitAllKernel(const float* __restrict__ wc, const std::int32_t* __restrict__ pos,
                             std::int64_t rows, std::int64_t cols, GptqGrid grid,
                             float* __restrict__ scales, std::int32_t* __restrict__ zeros)
{
    const std::int64_t r = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::int64_t unit = blockIdx.y;
    if (r >= rows) return;
    const std::int64_t c0 = unit * grid.unitLen;
    const std::int64_t c1 = min(cols, c0 + grid.unitLen);
    float lo = 0.0f, hi = 0.0f;
    for (std::int64_t c = c0; c < c1; ++c) {
        const float v = wc[std::int64_t(pos[c]) * rows + r];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    const Grid1 g = fitGrid(lo, hi, grid);
    scales[r * grid.groupsPerRow + unit] = g.scale;
    if (!grid.symmetric) zeros[r * grid.groupsPerRow + unit] = g.zero;
}

// ---- the column loop --------------------------------------------------------------------------

constexpr unsigned kFull = 0xffffffffu;
constexpr int kLanes = 8;                                // lanes per row
constexpr int kSlots = kGptqMaxBlock / kLanes;           // columns per lane
constexpr int kBlockThreads = kGptqRowsPerCta * kLanes;  // 256
constexpr int kEsStride = kGptqMaxBlock + 1;             // a row's slots in `es`, padded
static_assert(kSlots == 16 && kLanes * 4 == 32, "slotColumn assumes 4 float4 per lane");

// Column (within the block) of slot m of lane l: the 8 lanes of a row read a row of F's block as
// 4 float4 loads of 8 consecutive float4s, conflict-free.
__device__ __forceinline__ int slotColumn(int m, int l)
{
    return 32 * (m / 4) + 4 * l + (m % 4);
}

struct BlockShared {
    float* fs;   // kGptqMaxBlock^2: fs[i * kGptqMaxBlock + k] = F(i1 + i, i1 + k) for k > i, else 0
    float* es;   // kGptqRowsPerCta x kEsStride: per row, e of the block's done columns
    float* ws;   // the same: per row, w0 of the columns not done yet (while fitting)
    float* fd;   // F_ii
    float* fi;   // 1 / F_ii
    int* unit;   // unit of the block's columns
    int* fitAt;  // unit fitted before the column, or -1
};

__device__ __forceinline__ BlockShared blockShared(float* smem)
{
    BlockShared s;
    s.fs = smem;
    s.es = s.fs + kGptqMaxBlock * kGptqMaxBlock;
    s.ws = s.es + kGptqRowsPerCta * kEsStride;
    s.fd = s.ws + kGptqRowsPerCta * kEsStride;
    s.fi = s.fd + kGptqMaxBlock;
    s.unit = reinterpret_cast<int*>(s.fi + kGptqMaxBlock);
    s.fitAt = s.unit + kGptqMaxBlock;
    return s;
}

// Fits unit u before block column i for one row (its 8 lanes together, a warp-uniform call),
// from the row's current weights, and returns the grid (scale and zero point written to the
// row's slot). On entry, for k >= i: myE[k] = acc_k and myW[k] = w0_k; myE[k] for k < i holds
// the block's scaled errors so far.
//  * in the block, the current weight of column k is w0_k + y_k / F_kk with the forward
//    substitution y_k = acc_k - sum_{i<=j<k} (y_j / F_jj) F_jk (A F[i:, i:]^-1, the block part);
//  * beyond it (gptq_plan.h): w0_k - E[:, 0:i1+i] U[0:i1+i, k], the first i1 terms in `pre`,
//    the rest from this block's errors.
// min/max start from 0, as the CPU codec's.
__device__ __forceinline__ Grid1 fitUnit(const GptqBlockArgs& a, const BlockShared& sh, float* myE,
                                         const float* myW, int i, int u, int l, std::int64_t r,
                                         bool active)
{
    __syncwarp();
    // The solve only needs the columns up to the unit's last one in the block.
    int end = i + 1;
    for (int k = i + l; k < a.count; k += kLanes)
        if (sh.unit[k] == u) end = k + 1;
    for (int o = 1; o < kLanes; o <<= 1) end = max(end, __shfl_xor_sync(kFull, end, o));
    const int count = end;
    for (int j = i; j < count; ++j) {
        const float yj = myE[j] * sh.fi[j];
        const float* frow = sh.fs + j * kGptqMaxBlock;
        for (int k = j + 1 + l; k < count; k += kLanes) myE[k] = fmaf(-yj, frow[k], myE[k]);
        __syncwarp();
    }
    float lo = 0.0f, hi = 0.0f;
    for (int k = i + l; k < count; k += kLanes) {
        if (sh.unit[k] != u) continue;
        // As the column's own weight in blockKernel when k == i (y_i = acc_i).
        const float v = fmaf(myE[k], sh.fi[k], myW[k]);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
    }
    if (active && a.beyond) {
        const int b0 = a.unitBeyond[2 * u], b1 = a.unitBeyond[2 * u + 1];
        for (int q = b0 + l; q < b1; q += kLanes) {
            const std::int64_t k = a.beyond[q];
            float v = a.wc[k * a.rows + r];
            if (a.pre) v -= a.pre[(q - a.preFirst) * a.rows + r];
            const float* uk = a.uRowsAt + std::int64_t(q) * a.uRows + a.i1;
            for (int j = 0; j < i; ++j) v = fmaf(-myE[j], uk[j], v);
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
    }
    for (int o = 1; o < kLanes; o <<= 1) {
        const float olo = __shfl_xor_sync(kFull, lo, o);
        const float ohi = __shfl_xor_sync(kFull, hi, o);
        if (olo < lo) lo = olo;
        if (ohi > hi) hi = ohi;
    }
    const Grid1 g = fitGrid(lo, hi, a.grid);
    if (active && l == 0) {
        const std::int64_t gi = r * a.grid.groupsPerRow + u;
        a.scales[gi] = g.scale;
        if (!a.grid.symmetric) a.zeros[gi] = g.zero;
    }
    __syncwarp();  // the row's other lanes may read the grid back from memory later
    return g;
}

__global__ void __launch_bounds__(kBlockThreads, 2) blockKernel(GptqBlockArgs a)
{
    extern __shared__ float4 smem4[];
    const BlockShared sh = blockShared(reinterpret_cast<float*>(smem4));
    const int tid = threadIdx.x, count = a.count;
    const std::int64_t i1 = a.i1, rows = a.rows, n = a.cols;

    for (int idx = tid; idx < kGptqMaxBlock * kGptqMaxBlock; idx += kBlockThreads) {
        const int i = idx / kGptqMaxBlock, k = idx % kGptqMaxBlock;
        sh.fs[idx] = (i < k && k < count) ? a.f[(i1 + i) * n + i1 + k] : 0.0f;
    }
    for (int idx = tid; idx < count; idx += kBlockThreads) {
        sh.fd[idx] = a.fDiag[i1 + idx];
        sh.fi[idx] = a.fInv[i1 + idx];
        sh.unit[idx] = int(a.perm[i1 + idx] / a.grid.unitLen);
        sh.fitAt[idx] = a.fitAt[i1 + idx];
    }
    __syncthreads();

    const int lane = tid & 31, l = lane & (kLanes - 1), base = lane & ~(kLanes - 1);
    const int rowInCta = tid / kLanes;
    const std::int64_t r = std::int64_t(blockIdx.x) * kGptqRowsPerCta + rowInCta;
    const bool active = r < rows;
    float* myE = sh.es + rowInCta * kEsStride;
    const GptqGrid& grid = a.grid;
    const std::int64_t rowGroups = grid.perTensor ? 0 : r * grid.groupsPerRow;

    // The row's slots: w holds w0 until the column is done, then D = w0 - q.
    float w[kSlots], acc[kSlots];
    unsigned codeWords[kSlots / 4] = {};
#pragma unroll
    for (int m = 0; m < kSlots; ++m) {
        const int k = slotColumn(m, l);
        w[m] = 0.0f;
        acc[m] = 0.0f;
        if (active && k < count) {
            w[m] = a.wc[(i1 + k) * rows + r];
            float s = 0.0f;
            for (int part = 0; part < a.accParts; ++part)
                s += a.acc[(std::int64_t(part) * kGptqMaxBlock + k) * rows + r];
            acc[m] = s;
        }
    }

    const int qmin = codeMin(grid), qmax = codeMax(grid);
    const int offset = grid.symmetric ? 1 << (grid.bits - 1) : 0;
    std::int64_t cachedGi = -1;  // the grid in g belongs to scale slot cachedGi
    Grid1 g{0.0f, 0};
    double loss = 0.0;
#pragma unroll
    for (int c = 0; c < kSlots / 4; ++c) {
#pragma unroll 1
        for (int owner = 0; owner < kLanes; ++owner) {
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const int m = 4 * c + kk;  // the owner's slot of column i
                const int i = 32 * c + 4 * owner + kk;
                if (i >= count) continue;
                const int fitHere = sh.fitAt[i];
                if (fitHere >= 0) {
                    // Fit the unit on its current weights (warp-uniform: every row fits here).
                    float* myW = sh.ws + rowInCta * kEsStride;
#pragma unroll
                    for (int m2 = 0; m2 < kSlots; ++m2) {
                        const int k = slotColumn(m2, l);
                        if (k >= i && k < count) {
                            myE[k] = acc[m2];
                            myW[k] = w[m2];
                        }
                    }
                    g = fitUnit(a, sh, myE, myW, i, fitHere, l, r, active);
                    cachedGi = rowGroups + fitHere;
                }
                const std::int64_t gi = grid.perTensor ? 0 : rowGroups + sh.unit[i];
                if (gi != cachedGi) {
                    if (active) {
                        g.scale = a.scales[gi];
                        g.zero = grid.symmetric ? 0 : a.zeros[gi];
                    }
                    cachedGi = gi;
                }
                const float x = __shfl_sync(kFull, fmaf(acc[m], sh.fi[i], w[m]), base + owner);
                const float w0 = __shfl_sync(kFull, w[m], base + owner);
                float q;
                const int code = nearestCode(x, g, qmin, qmax, q);
                const float d = w0 - q;
                if (l == owner) {
                    w[m] = d;
                    codeWords[c] |= unsigned(code + offset) << (8 * kk);
                    const double e = (double(x) - double(q)) * double(sh.fd[i]);
                    if (active) loss += e * e;
                    myE[i] = float(e);
                }
                const float4* frow = reinterpret_cast<const float4*>(sh.fs + i * kGptqMaxBlock);
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) {
                    const float4 f4 = frow[cc * kLanes + l];
                    acc[4 * cc + 0] = fmaf(d, f4.x, acc[4 * cc + 0]);
                    acc[4 * cc + 1] = fmaf(d, f4.y, acc[4 * cc + 1]);
                    acc[4 * cc + 2] = fmaf(d, f4.z, acc[4 * cc + 2]);
                    acc[4 * cc + 3] = fmaf(d, f4.w, acc[4 * cc + 3]);
                }
            }
        }
    }

    if (active) {
#pragma unroll
        for (int m = 0; m < kSlots; ++m) {
            const int k = slotColumn(m, l);
            if (k < count) {
                const std::int64_t at = (i1 + k) * rows + r;
                a.wc[at] = w[m];
                a.codes[at] = std::uint8_t(codeWords[m / 4] >> (8 * (m % 4)));
                if (i1 + k < a.uRows) a.e[at] = myE[k];
            }
        }
    }
    loss = warpSum(loss);
    if (lane == 0 && loss != 0.0) atomicAdd(a.loss, loss);
}

// ---- metrics ----------------------------------------------------------------------------------

// Thread per (row, group) of w row-major; quantizeRtn's uniform encoder (grid.quantize).
__global__ void rtnKernel(const float* __restrict__ w, std::int64_t rows, std::int64_t cols,
                          GptqGrid grid, const float* __restrict__ lohi, float* __restrict__ out)
{
    const std::int64_t idx = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::int64_t gpr =
        grid.perTensor ? (cols + grid.unitLen - 1) / grid.unitLen : grid.groupsPerRow;
    if (idx >= rows * gpr) return;
    const std::int64_t r = idx / gpr, unit = idx % gpr;
    const std::int64_t c0 = unit * grid.unitLen, c1 = min(cols, c0 + grid.unitLen);
    const float* x = w + r * cols;
    Grid1 g;
    if (grid.perTensor) {
        g = fitGrid(lohi[0], lohi[1], grid);
    } else {
        float lo = 0.0f, hi = 0.0f;
        for (std::int64_t c = c0; c < c1; ++c) {
            if (x[c] < lo) lo = x[c];
            if (x[c] > hi) hi = x[c];
        }
        g = fitGrid(lo, hi, grid);
    }
    const int qmin = codeMin(grid), qmax = codeMax(grid);
    for (std::int64_t c = c0; c < c1; ++c) {
        const int q = g.scale > 0 ? roundClamp(x[c] / g.scale + float(g.zero), qmin, qmax)
                                  : min(max(g.zero, qmin), qmax);
        out[r * cols + c] = levelValue(g, q);
    }
}

__global__ void diffKernel(const float* __restrict__ a, const float* __restrict__ b,
                           const std::uint8_t* __restrict__ dead, std::int64_t rows,
                           std::int64_t cols, float* __restrict__ d)
{
    const std::int64_t n = rows * cols;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        d[i] = (dead && dead[i % cols]) ? 0.0f : a[i] - b[i];
}

__global__ void dotKernel(const float* __restrict__ a, const float* __restrict__ b, std::int64_t n,
                          double* out)
{
    double s = 0.0;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x)
        s += double(a[i]) * double(b[i]);
    s = warpSum(s);
    if ((threadIdx.x & 31) == 0 && s != 0.0) atomicAdd(out, s);
}

unsigned gridFor(std::int64_t n, int threads, unsigned cap = 65535u * 8)
{
    const std::int64_t b = (n + threads - 1) / threads;
    return unsigned(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace

void launchGptqPermuteIn(const float* w, const std::int32_t* perm, const std::uint8_t* dead,
                         std::int64_t rows, std::int64_t cols, float* wc, cudaStream_t stream)
{
    const dim3 block(32, 8), grid(unsigned((cols + 31) / 32), unsigned((rows + 31) / 32));
    permuteInKernel<<<grid, block, 0, stream>>>(w, perm, dead, rows, cols, wc);
}

void launchGptqPermuteOut(const std::uint8_t* codesC, const std::int32_t* perm, const float* scales,
                          const std::int32_t* zeros, GptqGrid grid, std::int64_t rows,
                          std::int64_t cols, float* out, std::uint8_t* codesOut,
                          cudaStream_t stream)
{
    const dim3 block(32, 8), g(unsigned((cols + 31) / 32), unsigned((rows + 31) / 32));
    permuteOutKernel<<<g, block, 0, stream>>>(codesC, perm, scales, zeros, grid, rows, cols, out,
                                              codesOut);
}

void launchGptqDiag(const float* h, std::int64_t n, float* diag, cudaStream_t stream)
{
    diagKernel<<<gridFor(n, kThreads), kThreads, 0, stream>>>(h, n, diag);
}

void launchGptqCheckFinite(const float* x, std::int64_t n, int* flag, cudaStream_t stream)
{
    checkFiniteKernel<<<gridFor(n, kThreads, 4096), kThreads, 0, stream>>>(x, n, flag);
}

void launchGptqToFloat(const double* x, std::int64_t n, float* out, cudaStream_t stream)
{
    toFloatKernel<<<gridFor(n, kThreads, 8192), kThreads, 0, stream>>>(x, n, out);
}

namespace {

template <class T>
void factorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead, std::int64_t n,
                 double damp, T* r, cudaStream_t stream)
{
    const dim3 block(32, 8), grid(unsigned((n + 31) / 32), unsigned((n + 7) / 8));
    factorInputKernel<T><<<grid, block, 0, stream>>>(h, perm, dead, n, damp, r);
}

template <class T>
void extractF(const T* l, std::int64_t n, const float* diag, const std::int32_t* perm,
              const std::uint8_t* dead, double damp, double minPivot, float* f, float* fDiag,
              float* fInv, int* flags, cudaStream_t stream)
{
    const dim3 block(32, 8), grid(unsigned((n + 31) / 32), unsigned((n + 31) / 32));
    extractFKernel<T>
        <<<grid, block, 0, stream>>>(l, n, diag, perm, dead, damp, minPivot, f, fDiag, fInv, flags);
}

}  // namespace

void launchGptqFactorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead,
                           std::int64_t n, double damp, double* r, cudaStream_t stream)
{
    factorInput(h, perm, dead, n, damp, r, stream);
}

void launchGptqFactorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead,
                           std::int64_t n, double damp, float* r, cudaStream_t stream)
{
    factorInput(h, perm, dead, n, damp, r, stream);
}

void launchGptqExtractF(const double* l, std::int64_t n, const float* diag,
                        const std::int32_t* perm, const std::uint8_t* dead, double damp,
                        double minPivot, float* f, float* fDiag, float* fInv, int* flags,
                        cudaStream_t stream)
{
    extractF(l, n, diag, perm, dead, damp, minPivot, f, fDiag, fInv, flags, stream);
}

void launchGptqExtractF(const float* l, std::int64_t n, const float* diag, const std::int32_t* perm,
                        const std::uint8_t* dead, double damp, double minPivot, float* f,
                        float* fDiag, float* fInv, int* flags, cudaStream_t stream)
{
    extractF(l, n, diag, perm, dead, damp, minPivot, f, fDiag, fInv, flags, stream);
}

void launchGptqUnitRows(double* y, std::int64_t m, std::int64_t n, cudaStream_t stream)
{
    unitRowsKernel<<<gridFor(m * n, kThreads, 8192), kThreads, 0, stream>>>(y, m, n);
}

void launchGptqUnitRows(float* y, std::int64_t m, std::int64_t n, cudaStream_t stream)
{
    unitRowsKernel<<<gridFor(m * n, kThreads, 8192), kThreads, 0, stream>>>(y, m, n);
}

void launchGptqGatherURows(const double* y, std::int64_t m, std::int64_t n, const std::int32_t* at,
                           std::int64_t count, float* uc, cudaStream_t stream)
{
    gatherURowsKernel<<<gridFor(m * count, kThreads, 8192), kThreads, 0, stream>>>(y, m, n, at,
                                                                                   count, uc);
}

void launchGptqGatherURows(const float* y, std::int64_t m, std::int64_t n, const std::int32_t* at,
                           std::int64_t count, float* uc, cudaStream_t stream)
{
    gatherURowsKernel<<<gridFor(m * count, kThreads, 8192), kThreads, 0, stream>>>(y, m, n, at,
                                                                                   count, uc);
}

void launchGptqMinMax(const float* x, std::int64_t n, float* lohi, cudaStream_t stream)
{
    minMaxKernel<<<1, 1024, 0, stream>>>(x, n, lohi);
}

void launchGptqTensorGrid(const float* lohi, GptqGrid grid, float* scales, std::int32_t* zeros,
                          cudaStream_t stream)
{
    tensorGridKernel<<<1, 1, 0, stream>>>(lohi, grid, scales, zeros);
}

void launchGptqFitAll(const float* wc, const std::int32_t* pos, std::int64_t rows,
                      std::int64_t cols, GptqGrid grid, float* scales, std::int32_t* zeros,
                      cudaStream_t stream)
{
    const dim3 g(unsigned((rows + 127) / 128), unsigned(grid.groupsPerRow));
    fitAllKernel<<<g, 128, 0, stream>>>(wc, pos, rows, cols, grid, scales, zeros);
}

std::size_t gptqBlockSharedBytes()
{
    return (std::size_t(kGptqMaxBlock) * kGptqMaxBlock +
            2 * std::size_t(kGptqRowsPerCta) * kEsStride + 2 * kGptqMaxBlock) *
               sizeof(float) +
           2 * kGptqMaxBlock * sizeof(int);
}

cudaError_t launchGptqBlock(const GptqBlockArgs& args, cudaStream_t stream)
{
    const std::size_t shared = gptqBlockSharedBytes();
    static bool attributeSet = false;  // set once per process (one device in use)
    if (!attributeSet) {
        const cudaError_t err = cudaFuncSetAttribute(
            blockKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
        if (err != cudaSuccess) return err;
        attributeSet = true;
    }
    const unsigned ctas = unsigned((args.rows + kGptqRowsPerCta - 1) / kGptqRowsPerCta);
    blockKernel<<<ctas, kBlockThreads, shared, stream>>>(args);
    return cudaGetLastError();
}

void launchGptqRtn(const float* w, std::int64_t rows, std::int64_t cols, GptqGrid grid,
                   const float* lohi, float* out, cudaStream_t stream)
{
    const std::int64_t gpr =
        grid.perTensor ? (cols + grid.unitLen - 1) / grid.unitLen : grid.groupsPerRow;
    const std::int64_t n = rows * gpr;
    rtnKernel<<<unsigned((n + 127) / 128), 128, 0, stream>>>(w, rows, cols, grid, lohi, out);
}

void launchGptqDiff(const float* a, const float* b, const std::uint8_t* dead, std::int64_t rows,
                    std::int64_t cols, float* d, cudaStream_t stream)
{
    diffKernel<<<gridFor(rows * cols, kThreads, 8192), kThreads, 0, stream>>>(a, b, dead, rows,
                                                                              cols, d);
}

void launchGptqDot(const float* a, const float* b, std::int64_t n, double* out, cudaStream_t stream)
{
    dotKernel<<<gridFor(n, kThreads, 4096), kThreads, 0, stream>>>(a, b, n, out);
}

}  // namespace ql::cuda
