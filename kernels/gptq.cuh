// Device side of GPTQ (kernels/gptq.cu): plain launch wrappers over the kernels the host
// orchestration (cuda_gptq.cpp) strings together. Every pointer is device memory; every launch
// goes on `stream` and is checked by the caller with CudaContext::checkLaunch.
//
// Layouts: the working weights Wc are column-major in processing order (element (r, p) at
// Wc[p * rows + r]), so one thread per row reads a column with coalesced loads; U, the upper
// Cholesky factor of the damped inverse Hessian, is column-major cols x cols (U(i, j) at
// U[j * cols + i]), which is what cuBLAS reads for the lazy trailing update.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace ql::cuda {

// The uniform INT-n grid of every unit (scale group) of a row, as the CPU codec fits it.
struct GptqGrid {
    int bits = 4;
    bool symmetric = true;
    bool perTensor = false;         // one grid for the tensor, fitted before the loop
    std::int64_t unitLen = 0;       // columns per scale group (cols for per-channel/-tensor)
    std::int64_t groupsPerRow = 1;  // units per row (1 for per-tensor: index 0 always)
};

// Arguments of one lazy block of the column loop.
struct GptqBlockArgs {
    float* wc = nullptr;                  // rows x cols, column-major, processing order
    const float* u = nullptr;             // cols x cols, column-major, upper
    std::int64_t rows = 0, cols = 0;      //
    std::int64_t i1 = 0;                  // first position of the block
    int count = 0;                        // positions in the block (<= kGptqMaxBlock)
    const std::int32_t* perm = nullptr;   // position -> original column
    const std::int32_t* pos = nullptr;    // original column -> position
    const std::int32_t* fitAt = nullptr;  // position -> unit to fit before it, or -1
    GptqGrid grid;                        //
    float* scales = nullptr;              // rows x groupsPerRow (or 1)
    std::int32_t* zeros = nullptr;        // same, asymmetric only
    std::uint8_t* codes = nullptr;        // rows x cols, column-major, processing order
    float* err = nullptr;                 // rows x count, column-major: (w - q) / U_pp
    double* loss = nullptr;               // += sum of err^2
};

constexpr int kGptqMaxBlock = 128;     // columns per device block (the Hinv block in shared memory)
constexpr int kGptqRowsPerCta = 32;    // rows per CTA: one warp runs the column loop
constexpr int kGptqLoadThreads = 128;  // threads per CTA: all load the block, one warp computes

// Shared memory of the column kernel for a block of `count` columns: the U block, the rows'
// weights, and the block's permutation and fit table.
constexpr std::size_t gptqBlockSharedBytes(int count)
{
    return std::size_t(count) * (std::size_t(count) + kGptqRowsPerCta) * sizeof(float) +
           2 * std::size_t(count) * sizeof(int);
}

// Wc(r, p) = dead[perm[p]] ? 0 : W[r * cols + perm[p]] (W row-major, original order).
void launchGptqPermuteIn(const float* w, const std::int32_t* perm, const std::uint8_t* dead,
                         std::int64_t rows, std::int64_t cols, float* wc, cudaStream_t stream);
// out[r * cols + perm[p]] = Wc(r, p); codesOut likewise from the column-major codes.
void launchGptqPermuteOut(const float* wc, const std::uint8_t* codesC, const std::int32_t* perm,
                          std::int64_t rows, std::int64_t cols, float* out, std::uint8_t* codesOut,
                          cudaStream_t stream);
// diag[i] = H[i * n + i].
void launchGptqDiag(const float* h, std::int64_t n, float* diag, cudaStream_t stream);
// *flag = 1 when any of x[0..n) is not finite (flag is not cleared here).
void launchGptqCheckFinite(const float* x, std::int64_t n, int* flag, cudaStream_t stream);
// The matrix whose lower Cholesky factor L gives U: R = J (P^T H' P + damp I) J in double
// (J the reversal, P the processing order, H' = H with dead diagonal entries set to 1).
void launchGptqFactorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead,
                           std::int64_t n, double damp, double* r, cudaStream_t stream);
// U(i, j) = Linv(n-1-i, n-1-j) for j >= i (Linv lower, column-major, in r), else 0, as float;
// *bad = 1 when an entry is not finite or a diagonal entry is not > 0.
void launchGptqExtractU(const double* linv, std::int64_t n, float* u, int* bad,
                        cudaStream_t stream);
// lohi[0] = min(0, x...), lohi[1] = max(0, x...).
void launchGptqMinMax(const float* x, std::int64_t n, float* lohi, cudaStream_t stream);
// Per-tensor grid from lohi (one entry in scales/zeros).
void launchGptqTensorGrid(const float* lohi, GptqGrid grid, float* scales, std::int32_t* zeros,
                          cudaStream_t stream);
// Every unit of every row fitted from the current Wc (static groups).
void launchGptqFitAll(const float* wc, const std::int32_t* pos, std::int64_t rows,
                      std::int64_t cols, GptqGrid grid, float* scales, std::int32_t* zeros,
                      cudaStream_t stream);
// One lazy block of the column loop; needs gptqBlockSharedBytes(count) of shared memory.
cudaError_t launchGptqBlock(const GptqBlockArgs& args, cudaStream_t stream);
// Round to nearest of w (row-major, original order) in the format, as quantizeRtn does; for a
// per-tensor grid, lohi is the min/max of w. out row-major.
void launchGptqRtn(const float* w, std::int64_t rows, std::int64_t cols, GptqGrid grid,
                   const float* lohi, float* out, cudaStream_t stream);
// d = a - b, with the columns where dead[c] (when dead is given) set to 0; row-major.
void launchGptqDiff(const float* a, const float* b, const std::uint8_t* dead, std::int64_t rows,
                    std::int64_t cols, float* d, cudaStream_t stream);
// *out += sum a[i] * b[i] (double accumulation).
void launchGptqDot(const float* a, const float* b, std::int64_t n, double* out,
                   cudaStream_t stream);
// *mismatches += count of (r, c) where scale * (code - offset - zero) != q bitwise.
void launchGptqDecodeCheck(const float* q, const std::uint8_t* codes, const float* scales,
                           const std::int32_t* zeros, std::int64_t rows, std::int64_t cols,
                           GptqGrid grid, unsigned long long* mismatches, cudaStream_t stream);

// Benchmark inputs (gptq_bench.cu), from a counter-based hash so every run is the same:
// activations tokens x cols row-major, heavy tailed (a normal times a log-normal scale), every
// 97th channel 20x larger; weights rows x cols row-major, heavy tailed, every 61st input channel
// 4x larger.
void launchGptqBenchActivations(float* x, std::int64_t tokens, std::int64_t cols,
                                unsigned long long seed, cudaStream_t stream);
void launchGptqBenchWeights(float* w, std::int64_t rows, std::int64_t cols, unsigned long long seed,
                            cudaStream_t stream);

}  // namespace ql::cuda
