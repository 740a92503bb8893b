// GPTQ kernels (see gptq.cuh for layouts and cuda_gptq.cpp for the algorithm around them).
//
// The column loop: rows are independent in GPTQ (the error of row r only feeds row r), so one
// thread owns one row. A CTA of kGptqRowsPerCta rows holds the block's U (count x count, stored
// so that every thread reads the same word: a broadcast) and its rows' block of weights (column
// j of thread t at [j * T + t]: no bank conflicts) in shared memory. Quantizing position i writes
// its error into the slot the weight held, so the slots before i are the errors the pending
// update of a later unit's columns needs. Scale groups are fitted per row from that row's current
// weights with the CPU codec's float expressions (min/max from 0, fp16 scales by round to nearest
// even, rint ties to even), and rounding picks the nearest grid value, ties to the lower value,
// exactly as core/quant/gptq.cpp's level tables do.
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

__global__ void permuteOutKernel(const float* __restrict__ wc,
                                 const std::uint8_t* __restrict__ codesC,
                                 const std::int32_t* __restrict__ perm, std::int64_t rows,
                                 std::int64_t cols, float* __restrict__ out,
                                 std::uint8_t* __restrict__ codesOut)
{
    __shared__ float tile[32][33];
    __shared__ std::uint8_t ctile[32][33];
    const std::int64_t p0 = std::int64_t(blockIdx.x) * 32, r0 = std::int64_t(blockIdx.y) * 32;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (int k = ty; k < 32; k += 8) {
        const std::int64_t r = r0 + tx, p = p0 + k;
        if (p < cols && r < rows) {
            tile[k][tx] = wc[p * rows + r];
            ctile[k][tx] = codesC[p * rows + r];
        }
    }
    __syncthreads();
    for (int k = ty; k < 32; k += 8) {
        const std::int64_t p = p0 + tx, r = r0 + k;
        if (p < cols && r < rows) {
            const std::int64_t at = r * cols + perm[p];
            out[at] = tile[tx][k];
            codesOut[at] = ctile[tx][k];
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

__global__ void factorInputKernel(const float* __restrict__ h,
                                  const std::int32_t* __restrict__ perm,
                                  const std::uint8_t* __restrict__ dead, std::int64_t n,
                                  double damp, double* __restrict__ r)
{
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // row of R
    const std::int64_t j = std::int64_t(blockIdx.y) * blockDim.y + threadIdx.y;  // column of R
    if (i >= n || j >= n) return;
    const std::int32_t a = perm[n - 1 - i], b = perm[n - 1 - j];
    // H(b, a) = H(a, b): reading along a row of H keeps the loads coalesced without act-order.
    double v = (a == b && dead[a]) ? 1.0 : double(h[std::int64_t(b) * n + a]);
    if (i == j) v += damp;
    r[j * n + i] = v;
}

__global__ void extractUKernel(const double* __restrict__ linv, std::int64_t n,
                               float* __restrict__ u, int* bad)
{
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // row of U
    const std::int64_t j = std::int64_t(blockIdx.y) * blockDim.y + threadIdx.y;  // column of U
    if (i >= n || j >= n) return;
    float v = 0.0f;
    if (j >= i) {
        const double x = linv[(n - 1 - j) * n + (n - 1 - i)];
        v = float(x);
        if (!isfinite(v) || (i == j && !(v > 0.0f))) atomicExch(bad, 1);
    }
    u[j * n + i] = v;
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

__global__ void __launch_bounds__(kGptqLoadThreads) blockKernel(GptqBlockArgs a)
{
    extern __shared__ float smem[];
    constexpr int T = kGptqRowsPerCta;  // rows of the CTA; its first warp computes them
    const int count = a.count;
    float* us = smem;                  // us[j * count + i] = U(i1 + i, i1 + j)
    float* ws = smem + count * count;  // ws[j * T + t]: weight (then error) of column i1 + j
    int* meta = reinterpret_cast<int*>(ws + count * T);  // perm, then fitAt, of the block
    const int tid = threadIdx.x;
    const std::int64_t row0 = std::int64_t(blockIdx.x) * T;

    // Every thread of the CTA loads; the global reads are coalesced along i, resp. rows.
#pragma unroll 4
    for (int idx = tid; idx < count * count; idx += kGptqLoadThreads) {
        const int j = idx / count, i = idx % count;
        us[idx] = i <= j ? a.u[(a.i1 + j) * a.cols + a.i1 + i] : 0.0f;
    }
#pragma unroll 4
    for (int idx = tid; idx < count * T; idx += kGptqLoadThreads) {
        const int j = idx / T;
        const std::int64_t rr = row0 + idx % T;
        ws[idx] = rr < a.rows ? a.wc[(a.i1 + j) * a.rows + rr] : 0.0f;
    }
    for (int idx = tid; idx < count; idx += kGptqLoadThreads) {
        meta[idx] = a.perm[a.i1 + idx];
        meta[count + idx] = a.fitAt[a.i1 + idx];
    }
    __syncthreads();
    if (tid >= T) return;

    const int t = tid;
    const std::int64_t r = row0 + t;
    const bool active = r < a.rows;
    const GptqGrid& grid = a.grid;
    const int qmin = codeMin(grid), qmax = codeMax(grid);
    const int offset = grid.symmetric ? 1 << (grid.bits - 1) : 0;
    double loss = 0.0;
    if (active) {
        std::int64_t cachedGi = -1;  // the grid in g belongs to scale slot cachedGi
        Grid1 g{0.0f, 0};
        for (int i = 0; i < count; ++i) {
            const std::int64_t p = a.i1 + i;
            const std::int64_t c = meta[i];
            const std::int64_t gi = grid.perTensor ? 0 : r * grid.groupsPerRow + c / grid.unitLen;
            const int unitToFit = meta[count + i];
            if (unitToFit >= 0) {
                // The unit's current weights: in-block columns hold their in-block updates;
                // columns beyond the block still lack this block's update from the i errors
                // so far (slots 0..i-1 of ws). The unit holds column c (fitAt is its first).
                const std::int64_t c0 = std::int64_t(unitToFit) * grid.unitLen;
                const std::int64_t c1 = min(a.cols, c0 + grid.unitLen);
                float lo = 0.0f, hi = 0.0f;
                for (std::int64_t cc = c0; cc < c1; ++cc) {
                    const std::int64_t pc = a.pos[cc];
                    float v;
                    if (pc < a.i1 + count) {
                        v = ws[(pc - a.i1) * T + t];
                    } else {
                        v = a.wc[pc * a.rows + r];
                        const float* ucol = a.u + pc * a.cols + a.i1;
#pragma unroll 8
                        for (int k = 0; k < i; ++k) v = fmaf(-ws[k * T + t], ucol[k], v);
                    }
                    if (v < lo) lo = v;
                    if (v > hi) hi = v;
                }
                g = fitGrid(lo, hi, grid);
                a.scales[gi] = g.scale;
                if (!grid.symmetric) a.zeros[gi] = g.zero;
                cachedGi = gi;
            } else if (gi != cachedGi) {
                g.scale = a.scales[gi];
                g.zero = grid.symmetric ? 0 : a.zeros[gi];
                cachedGi = gi;
            }
            const float x = ws[i * T + t];
            float q;
            const int code = nearestCode(x, g, qmin, qmax, q);
            const float d = us[i * count + i];
            const float e = float((double(x) - double(q)) / double(d));
            loss += double(e) * double(e);
            a.codes[p * a.rows + r] = std::uint8_t(code + offset);
            a.wc[p * a.rows + r] = q;
            a.err[std::int64_t(i) * a.rows + r] = e;
            ws[i * T + t] = e;
#pragma unroll 8
            for (int j = i + 1; j < count; ++j)
                ws[j * T + t] = fmaf(-e, us[j * count + i], ws[j * T + t]);
        }
    }
    loss = warpSum(loss);
    if (t == 0 && loss != 0.0) atomicAdd(a.loss, loss);
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

__global__ void decodeCheckKernel(const float* __restrict__ q,
                                  const std::uint8_t* __restrict__ codes,
                                  const float* __restrict__ scales,
                                  const std::int32_t* __restrict__ zeros, std::int64_t rows,
                                  std::int64_t cols, GptqGrid grid, unsigned long long* mismatches)
{
    const std::int64_t n = rows * cols;
    const int offset = grid.symmetric ? 1 << (grid.bits - 1) : 0;
    unsigned long long bad = 0;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const std::int64_t r = i / cols, c = i % cols;
        const std::int64_t gi = grid.perTensor ? 0 : r * grid.groupsPerRow + c / grid.unitLen;
        Grid1 g;
        g.scale = scales[gi];
        g.zero = grid.symmetric ? 0 : zeros[gi];
        const float v = levelValue(g, int(codes[i]) - offset);
        if (__float_as_uint(v) != __float_as_uint(q[i])) ++bad;
    }
    if (bad) atomicAdd(mismatches, bad);
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

void launchGptqPermuteOut(const float* wc, const std::uint8_t* codesC, const std::int32_t* perm,
                          std::int64_t rows, std::int64_t cols, float* out, std::uint8_t* codesOut,
                          cudaStream_t stream)
{
    const dim3 block(32, 8), grid(unsigned((cols + 31) / 32), unsigned((rows + 31) / 32));
    permuteOutKernel<<<grid, block, 0, stream>>>(wc, codesC, perm, rows, cols, out, codesOut);
}

void launchGptqDiag(const float* h, std::int64_t n, float* diag, cudaStream_t stream)
{
    diagKernel<<<gridFor(n, kThreads), kThreads, 0, stream>>>(h, n, diag);
}

void launchGptqCheckFinite(const float* x, std::int64_t n, int* flag, cudaStream_t stream)
{
    checkFiniteKernel<<<gridFor(n, kThreads, 4096), kThreads, 0, stream>>>(x, n, flag);
}

void launchGptqFactorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead,
                           std::int64_t n, double damp, double* r, cudaStream_t stream)
{
    const dim3 block(32, 8), grid(unsigned((n + 31) / 32), unsigned((n + 7) / 8));
    factorInputKernel<<<grid, block, 0, stream>>>(h, perm, dead, n, damp, r);
}

void launchGptqExtractU(const double* linv, std::int64_t n, float* u, int* bad, cudaStream_t stream)
{
    const dim3 block(32, 8), grid(unsigned((n + 31) / 32), unsigned((n + 7) / 8));
    extractUKernel<<<grid, block, 0, stream>>>(linv, n, u, bad);
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

cudaError_t launchGptqBlock(const GptqBlockArgs& args, cudaStream_t stream)
{
    const std::size_t shared = gptqBlockSharedBytes(args.count);
    static bool attributeSet = false;  // set once per process (one device in use)
    if (!attributeSet) {
        const int most = int(gptqBlockSharedBytes(kGptqMaxBlock));
        const cudaError_t err =
            cudaFuncSetAttribute(blockKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most);
        if (err != cudaSuccess) return err;
        attributeSet = true;
    }
    const unsigned ctas = unsigned((args.rows + kGptqRowsPerCta - 1) / kGptqRowsPerCta);
    blockKernel<<<ctas, kGptqLoadThreads, shared, stream>>>(args);
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

void launchGptqDecodeCheck(const float* q, const std::uint8_t* codes, const float* scales,
                           const std::int32_t* zeros, std::int64_t rows, std::int64_t cols,
                           GptqGrid grid, unsigned long long* mismatches, cudaStream_t stream)
{
    decodeCheckKernel<<<gridFor(rows * cols, kThreads, 4096), kThreads, 0, stream>>>(
        q, codes, scales, zeros, rows, cols, grid, mismatches);
}

}  // namespace ql::cuda
