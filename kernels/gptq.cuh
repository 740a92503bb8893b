// Device side of GPTQ (kernels/gptq.cu): plain launch wrappers over the kernels the host
// orchestration (cuda_gptq.cpp) strings together. Every pointer is device memory; every launch
// goes on `stream` and is checked by the caller with CudaContext::checkLaunch.
//
// Layouts: the working weights Wc are column-major in processing order (element (r, p) at
// Wc[p * rows + r]), so a warp reads a column's rows coalesced; they hold W0 (the original
// weights) until a column is quantized, then D = W0 - Q. F, the upper Cholesky factor of the
// damped Hessian in processing order (Hd = F F^T), is stored row-major as float (F(i, k) at
// F[i * cols + k], zero below the diagonal): the kernel reads a row of its block with vector
// loads and cuBLAS reads F[0:i1, block] as a transposed operand.
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

constexpr int kGptqMaxBlock = 128;   // columns per device block (F's block in shared memory)
constexpr int kGptqMaxSplits = 8;    // K slices of the left-looking GEMM (acc holds one each)
constexpr int kGptqRowsPerCta = 32;  // rows per CTA of the column kernel: 8 lanes per row

// Arguments of one lazy block [i1, i1 + count) of the column loop.
struct GptqBlockArgs {
    float* wc = nullptr;                  // rows x cols, column-major, processing order
    const float* f = nullptr;             // cols x cols, row-major, upper
    const float* fDiag = nullptr;         // F_pp per position
    const float* fInv = nullptr;          // 1 / F_pp per position (U_pp)
    const float* acc = nullptr;           // accParts x (rows x kGptqMaxBlock), column-major:
    int accParts = 0;                     //   sum_j<i1 D_j F_jk, in K slices (none at i1 = 0)
    std::int64_t rows = 0, cols = 0;      //
    std::int64_t i1 = 0;                  // first position of the block
    int count = 0;                        // positions in the block (<= kGptqMaxBlock)
    const std::int32_t* perm = nullptr;   // position -> original column
    const std::int32_t* fitAt = nullptr;  // position -> unit to fit before it, or -1
    GptqGrid grid;                        //
    float* scales = nullptr;              // rows x groupsPerRow (or 1)
    std::int32_t* zeros = nullptr;        // same, asymmetric only
    std::uint8_t* codes = nullptr;        // rows x cols, column-major, processing order
    double* loss = nullptr;               // += sum of e^2, e = (w - q) F_pp
    // Units fitted here with columns beyond the block (gptq_plan.h): their positions, the first
    // uRows rows of U at them (uRows x n, column-major), the scaled errors of positions < uRows
    // (rows x uRows, column-major, written here), and pre(:, j) = E[:, 0:i1] U[0:i1, beyond[j]]
    // for the block's own beyond columns j >= preFirst (rows x ..., column-major; none at i1 = 0).
    const std::int32_t* beyond = nullptr;
    const std::int32_t* unitBeyond = nullptr;  // [begin, end) into beyond, per unit
    const float* uRowsAt = nullptr;
    std::int64_t uRows = 0;
    float* e = nullptr;
    const float* pre = nullptr;
    std::int64_t preFirst = 0;
};

// Shared memory of the column kernel.
std::size_t gptqBlockSharedBytes();

// Wc(r, p) = dead[perm[p]] ? 0 : W[r * cols + perm[p]] (W row-major, original order).
void launchGptqPermuteIn(const float* w, const std::int32_t* perm, const std::uint8_t* dead,
                         std::int64_t rows, std::int64_t cols, float* wc, cudaStream_t stream);
// codesOut[r * cols + perm[p]] = codesC(r, p) and out there the value the code decodes to
// (scale * (code - offset - zero), the decoder's expression), row-major original order.
void launchGptqPermuteOut(const std::uint8_t* codesC, const std::int32_t* perm, const float* scales,
                          const std::int32_t* zeros, GptqGrid grid, std::int64_t rows,
                          std::int64_t cols, float* out, std::uint8_t* codesOut,
                          cudaStream_t stream);
// diag[i] = H[i * n + i].
void launchGptqDiag(const float* h, std::int64_t n, float* diag, cudaStream_t stream);
// *flag = 1 when any of x[0..n) is not finite (flag is not cleared here).
void launchGptqCheckFinite(const float* x, std::int64_t n, int* flag, cudaStream_t stream);
// out[i] = float(x[i]).
void launchGptqToFloat(const double* x, std::int64_t n, float* out, cudaStream_t stream);
// The matrix whose lower Cholesky factor L gives F: R = J (P^T H' P + damp I) J, column-major
// (J the reversal, P the processing order, H' = H with dead diagonal entries set to 1), so that
// J R J = F F^T with F = J L J upper.
void launchGptqFactorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead,
                           std::int64_t n, double damp, double* r, cudaStream_t stream);
void launchGptqFactorInput(const float* h, const std::int32_t* perm, const std::uint8_t* dead,
                           std::int64_t n, double damp, float* r, cudaStream_t stream);
// F(i, k) = L(n-1-i, n-1-k) for k >= i (L lower, column-major, in l), else 0, into f as float
// row-major; fDiag[i] = F_ii and fInv[i] = 1 / F_ii (divided in the factor's precision).
// flags[0] = 1 when an entry is not finite or a diagonal entry is not > 0; flags[1] = 1 when a
// pivot is small, F_ii^2 < minPivot * Hd_ii (Hd_ii from diag, the original diagonal of H, with
// dead entries 1, plus damp). flags are not cleared here.
void launchGptqExtractF(const double* l, std::int64_t n, const float* diag,
                        const std::int32_t* perm, const std::uint8_t* dead, double damp,
                        double minPivot, float* f, float* fDiag, float* fInv, int* flags,
                        cudaStream_t stream);
void launchGptqExtractF(const float* l, std::int64_t n, const float* diag, const std::int32_t* perm,
                        const std::uint8_t* dead, double damp, double minPivot, float* f,
                        float* fDiag, float* fInv, int* flags, cudaStream_t stream);
// y (m x n, column-major) = [I_m 0] J: the right-hand side whose solve Y L = y gives the first m
// rows of U = F^-1 as X = Y J.
void launchGptqUnitRows(double* y, std::int64_t m, std::int64_t n, cudaStream_t stream);
void launchGptqUnitRows(float* y, std::int64_t m, std::int64_t n, cudaStream_t stream);
// uc[j * m + i] = X(i, at[j]) = y[(n-1-at[j]) * m + i] for i < m, j < count, as float.
void launchGptqGatherURows(const double* y, std::int64_t m, std::int64_t n, const std::int32_t* at,
                           std::int64_t count, float* uc, cudaStream_t stream);
void launchGptqGatherURows(const float* y, std::int64_t m, std::int64_t n, const std::int32_t* at,
                           std::int64_t count, float* uc, cudaStream_t stream);
// lohi[0] = min(0, x...), lohi[1] = max(0, x...).
void launchGptqMinMax(const float* x, std::int64_t n, float* lohi, cudaStream_t stream);
// Per-tensor grid from lohi (one entry in scales/zeros).
void launchGptqTensorGrid(const float* lohi, GptqGrid grid, float* scales, std::int32_t* zeros,
                          cudaStream_t stream);
// Every unit of every row fitted from the current Wc (static groups).
void launchGptqFitAll(const float* wc, const std::int32_t* pos, std::int64_t rows,
                      std::int64_t cols, GptqGrid grid, float* scales, std::int32_t* zeros,
                      cudaStream_t stream);
// One lazy block of the column loop (gptqBlockSharedBytes() of shared memory).
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

// Benchmark inputs (gptq_bench.cu), from a counter-based hash so every run is the same:
// activations tokens x cols row-major, heavy tailed (a normal times a log-normal scale), every
// 97th channel 20x larger; weights rows x cols row-major, heavy tailed, every 61st input channel
// 4x larger.
void launchGptqBenchActivations(float* x, std::int64_t tokens, std::int64_t cols,
                                unsigned long long seed, cudaStream_t stream);
void launchGptqBenchWeights(float* w, std::int64_t rows, std::int64_t cols, unsigned long long seed,
                            cudaStream_t stream);

}  // namespace ql::cuda
