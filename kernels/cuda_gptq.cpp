// GPTQ on the GPU, host side. The steps mirror core/quant/gptq.cpp one for one, so the results
// agree with the CPU oracle up to float rounding in the column loop:
//  1. checks (finite W and H) and H's diagonal on the host: dead columns (H_ii = 0: H_ii = 1 and
//     W_:i = 0), the act-order permutation (stable sort by descending H_ii), mean(diag H), and
//     for each unit (scale group) the position where the loop first reaches it;
//  2. W is transposed into Wc, column-major in processing order, so one thread per row reads a
//     column coalesced;
//  3. U, the upper Cholesky factor of (P^T H P + damp I)^-1, in double with one potrf and one
//     trtri: with J the reversal, J M J = L L^T gives M = (J L J)(J L J)^T with J L J upper, so
//     U = J L^-1 J is upper with M^-1 = U^T U; damp is raised x10 (and every raise reported) when
//     potrf fails or U is not finite, exactly as the CPU does. U is kept as float;
//  4. per lazy block of up to kGptqMaxBlock columns: the column kernel (gptq.cu: one thread per
//     row, the block's U in shared memory, units fitted from the current weights when first
//     reached), then Wc[:, i2:] -= Err U[i1:i2, i2:] as one float32 cuBLAS GEMM (no TF32: the
//     context's handle keeps CUBLAS_DEFAULT_MATH). Lazy batching is exact algebra, so the device
//     block (at most 128) may differ from options.blockSize without changing the result;
//  5. the quantized weights and codes back to row-major original order; RTN on the device; the
//     Hessian-weighted errors as tr(D H D^T) = sum((D H) .* D) with one GEMM each; a decode check
//     that the stored codes and scales give exactly the weights; copies to the host.
// All device memory is RAII (DeviceBuffer); the stream is drained before any return, so an error
// or a cancel never frees memory a kernel still uses.
#include "cuda_gptq.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_check.cuh"
#include "cuda_context.h"
#include "cusolver_api.h"
#include "device_buffer.h"
#include "gptq.cuh"

namespace ql::cuda {
namespace {

std::string sci(double v)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// Drains the stream when it goes out of scope (declared after the buffers it protects).
struct StreamDrain {
    cudaStream_t stream;
    ~StreamDrain() { cudaStreamSynchronize(stream); }
};

// CUDA events for the timing breakdown; nothing is recorded when disabled.
class Events {
public:
    Events(bool enabled, cudaStream_t stream) : m_enabled(enabled), m_stream(stream) {}
    ~Events()
    {
        for (cudaEvent_t e : m_events) cudaEventDestroy(e);
    }
    Events(const Events&) = delete;
    Events& operator=(const Events&) = delete;
    // Index of a new event recorded now, or -1.
    int record()
    {
        if (!m_enabled) return -1;
        cudaEvent_t e = nullptr;
        if (cudaEventCreate(&e) != cudaSuccess) return -1;
        m_events.push_back(e);
        cudaEventRecord(e, m_stream);
        return int(m_events.size()) - 1;
    }
    double ms(int from, int to) const
    {
        if (from < 0 || to < 0) return 0;
        float t = 0;
        cudaEventElapsedTime(&t, m_events[std::size_t(from)], m_events[std::size_t(to)]);
        return double(t);
    }

private:
    bool m_enabled;
    cudaStream_t m_stream;
    std::vector<cudaEvent_t> m_events;
};

struct SolverParams {
    const CusolverApi* api = nullptr;
    cusolverDnParams_t params = nullptr;
    ~SolverParams()
    {
        if (params) api->destroyParams(params);
    }
};

template <class T>
Status allocate(DeviceBuffer<T>& buffer, std::size_t count, MemoryTracker& tracker,
                const std::string& what)
{
    auto b = DeviceBuffer<T>::allocate(std::max<std::size_t>(count, 1), &tracker, what);
    if (!b) return b.error();
    buffer = std::move(b).value();
    return {};
}

Error cancelled()
{
    return makeError(ErrorCode::Cancelled, "gptq cancelled");
}

}  // namespace

bool gptqDeviceSupports(const QuantFormat& format)
{
    return format.kind == QuantKind::Uniform && format.bits >= 2 && format.bits <= 8;
}

Result<GptqResult> quantizeGptqDevice(CudaContext& ctx, float* dW, float* dH, std::int64_t rows,
                                      std::int64_t cols, const QuantFormat& format,
                                      const GptqOptions& options, const ProgressFn& progress)
{
    return quantizeGptqDeviceTimed(ctx, dW, dH, rows, cols, format, options, progress, nullptr);
}

Result<GptqResult> quantizeGptqDeviceTimed(CudaContext& ctx, float* dW, float* dH,
                                           std::int64_t rows, std::int64_t cols,
                                           const QuantFormat& format, const GptqOptions& options,
                                           const ProgressFn& progress, GptqDeviceTimings* timings)
{
    const auto start = std::chrono::steady_clock::now();
    if (!dW || !dH || rows <= 0 || cols <= 0)
        return makeError(ErrorCode::InvalidArgument, "gptq: no weights given");
    if (format.kind == QuantKind::Float)
        return makeError(
            ErrorCode::InvalidArgument,
            "gptq needs a quantized format; " + formatToString(format) + " is a float format");
    QL_TRY_STATUS(checkFormatFits(format, rows, cols));
    if (!gptqDeviceSupports(format))
        return makeError(ErrorCode::Unsupported,
                         "gptq on the GPU handles the uniform int2..int8 formats; " +
                             formatToString(format) + " runs on the CPU (quantizeGptq)");
    if (!(options.blockSize >= 1) || !(options.damp >= 0))
        return makeError(ErrorCode::InvalidArgument, "gptq: bad options");
    if (rows > (std::int64_t(1) << 31) / 2 || cols > (std::int64_t(1) << 31) / 2)
        return makeError(ErrorCode::InvalidArgument, "gptq: the matrix is too large for cuBLAS");
    QL_TRY_STATUS(ctx.activate());
    if (!reportProgress(progress, 0.0, "gptq")) return cancelled();

    const cudaStream_t s = ctx.stream();
    const std::size_t nW = std::size_t(rows * cols), nH = std::size_t(cols * cols);
    MemoryTracker tracker;
    DeviceBuffer<int> dFlags;  // 0: W not finite, 1: H not finite, 2: U bad, 3: cuSOLVER info
    DeviceBuffer<float> dDiag, dWc, dU, dErr, dScales, dLohi, dQ, dRtn, dT;
    DeviceBuffer<double> dR, dAcc;
    DeviceBuffer<std::int32_t> dPerm, dPos, dFitAt, dZeros;
    DeviceBuffer<std::uint8_t> dDead, dCodesC, dCodes;
    DeviceBuffer<char> dWork;
    DeviceBuffer<unsigned long long> dMismatch;
    const StreamDrain drain{s};
    Events events(timings != nullptr, s);

    GptqResult out;
    const int evStart = events.record();

    // 1. Checks and the diagonal.
    QL_TRY_STATUS(allocate(dFlags, 4, tracker, "gptq flags"));
    QL_TRY_STATUS(allocate(dDiag, std::size_t(cols), tracker, "the Hessian diagonal"));
    QL_CUDA_TRY(cudaMemsetAsync(dFlags.data(), 0, 4 * sizeof(int), s));
    launchGptqCheckFinite(dW, std::int64_t(nW), dFlags.data(), s);
    launchGptqCheckFinite(dH, std::int64_t(nH), dFlags.data() + 1, s);
    launchGptqDiag(dH, cols, dDiag.data(), s);
    QL_TRY_STATUS(CudaContext::checkLaunch("gptq checks"));
    int flags[4] = {};
    std::vector<float> diag(static_cast<std::size_t>(cols));
    QL_TRY_STATUS(ctx.copyToHost(flags, dFlags.data(), sizeof flags));
    QL_TRY_STATUS(ctx.copyToHost(diag.data(), dDiag.data(), diag.size() * sizeof(float)));
    if (flags[0]) return makeError(ErrorCode::InvalidArgument, "gptq: a weight is not finite");
    if (flags[1]) return makeError(ErrorCode::InvalidArgument, "gptq: the Hessian is not finite");

    std::vector<std::uint8_t> dead(std::size_t(cols), 0);
    std::vector<double> h(static_cast<std::size_t>(cols));
    for (std::int64_t i = 0; i < cols; ++i) {
        h[std::size_t(i)] = double(diag[std::size_t(i)]);
        if (h[std::size_t(i)] < 0)
            return makeError(ErrorCode::InvalidArgument, "gptq: Hessian diagonal entry " +
                                                             std::to_string(i) +
                                                             " is negative (not a sum of x x^T)");
        if (h[std::size_t(i)] == 0) {
            dead[std::size_t(i)] = 1;
            h[std::size_t(i)] = 1;
            ++out.deadColumns;
        }
    }
    std::vector<std::int32_t> perm(static_cast<std::size_t>(cols));
    std::iota(perm.begin(), perm.end(), 0);
    if (options.actOrder)
        std::stable_sort(perm.begin(), perm.end(), [&](std::int32_t a, std::int32_t b) {
            return h[std::size_t(a)] > h[std::size_t(b)];
        });
    std::vector<std::int32_t> pos(static_cast<std::size_t>(cols));
    for (std::int64_t p = 0; p < cols; ++p)
        pos[std::size_t(perm[std::size_t(p)])] = std::int32_t(p);
    double meanDiag = 0;
    for (double v : h) meanDiag += v;
    meanDiag /= double(cols);

    GptqGrid grid;
    grid.bits = format.bits;
    grid.symmetric = format.symmetric;
    grid.perTensor = format.granularity == Granularity::PerTensor;
    grid.unitLen = scaleGroupSize(format, cols);
    const std::int64_t units = (cols + grid.unitLen - 1) / grid.unitLen;
    grid.groupsPerRow = grid.perTensor ? 1 : units;
    const std::int64_t scaleSlots = grid.perTensor ? 1 : rows * units;
    std::vector<std::int32_t> fitAt(std::size_t(cols), -1);
    if (!grid.perTensor && !options.staticGroups) {
        for (std::int64_t u = 0; u < units; ++u) {
            std::int32_t first = std::int32_t(cols);
            for (std::int64_t c = u * grid.unitLen; c < std::min(cols, (u + 1) * grid.unitLen); ++c)
                first = std::min(first, pos[std::size_t(c)]);
            fitAt[std::size_t(first)] = std::int32_t(u);
        }
    }
    out.groupIndex.resize(std::size_t(cols));
    for (std::int64_t c = 0; c < cols; ++c)
        out.groupIndex[std::size_t(c)] = std::int32_t(c / grid.unitLen);

    QL_TRY_STATUS(allocate(dPerm, std::size_t(cols), tracker, "the gptq permutation"));
    QL_TRY_STATUS(allocate(dPos, std::size_t(cols), tracker, "the gptq permutation"));
    QL_TRY_STATUS(allocate(dFitAt, std::size_t(cols), tracker, "the gptq unit table"));
    QL_TRY_STATUS(allocate(dDead, std::size_t(cols), tracker, "the dead-column table"));
    QL_TRY_STATUS(ctx.copyToDevice(dPerm.data(), perm.data(), perm.size() * 4));
    QL_TRY_STATUS(ctx.copyToDevice(dPos.data(), pos.data(), pos.size() * 4));
    QL_TRY_STATUS(ctx.copyToDevice(dFitAt.data(), fitAt.data(), fitAt.size() * 4));
    QL_TRY_STATUS(ctx.copyToDevice(dDead.data(), dead.data(), dead.size()));

    // 2. Wc and the grids fitted before the loop.
    QL_TRY_STATUS(allocate(dWc, nW, tracker, "the gptq working weights"));
    QL_TRY_STATUS(allocate(dScales, std::size_t(scaleSlots), tracker, "the gptq scales"));
    QL_TRY_STATUS(allocate(dZeros, std::size_t(scaleSlots), tracker, "the gptq zero points"));
    QL_TRY_STATUS(allocate(dLohi, 4, tracker, "the gptq ranges"));
    launchGptqPermuteIn(dW, dPerm.data(), dDead.data(), rows, cols, dWc.data(), s);
    if (grid.perTensor) {
        launchGptqMinMax(dWc.data(), std::int64_t(nW), dLohi.data(), s);
        launchGptqTensorGrid(dLohi.data(), grid, dScales.data(), dZeros.data(), s);
    } else if (options.staticGroups) {
        launchGptqFitAll(dWc.data(), dPos.data(), rows, cols, grid, dScales.data(), dZeros.data(),
                         s);
    }
    QL_TRY_STATUS(CudaContext::checkLaunch("gptq preparation"));
    const int evPrepared = events.record();

    // 3. U, raising the dampening until the factorization succeeds.
    auto solver = ctx.solver();
    if (!solver) return solver.error();
    auto api = cusolverApi();
    if (!api) return api.error();
    const CusolverApi& sol = **api;
    SolverParams params;
    params.api = &sol;
    QL_CUSOLVER_TRY(sol.createParams(&params.params));
    QL_TRY_STATUS(allocate(dR, nH, tracker, "the Hessian factorization (double)"));
    QL_TRY_STATUS(allocate(dU, nH, tracker, "the inverse Hessian factor"));
    std::size_t potrfDevice = 0, potrfHost = 0, trtriDevice = 0, trtriHost = 0;
    QL_CUSOLVER_TRY(sol.potrfBufferSize(*solver, params.params, CUBLAS_FILL_MODE_LOWER, cols,
                                        CUDA_R_64F, dR.data(), cols, CUDA_R_64F, &potrfDevice,
                                        &potrfHost));
    QL_CUSOLVER_TRY(sol.trtriBufferSize(*solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, cols,
                                        CUDA_R_64F, dR.data(), cols, &trtriDevice, &trtriHost));
    QL_TRY_STATUS(
        allocate(dWork, std::max(potrfDevice, trtriDevice), tracker, "the cuSOLVER workspace"));
    std::vector<char> hostWork(std::max<std::size_t>(std::max(potrfHost, trtriHost), 1));
    double frac = options.damp;
    for (int attempt = 0;; ++attempt) {
        const double damp = frac * meanDiag;
        launchGptqFactorInput(dH, dPerm.data(), dDead.data(), cols, damp, dR.data(), s);
        QL_TRY_STATUS(CudaContext::checkLaunch("gptq factorization input"));
        QL_CUDA_TRY(cudaMemsetAsync(dFlags.data() + 2, 0, 2 * sizeof(int), s));
        QL_CUSOLVER_TRY(sol.potrf(*solver, params.params, CUBLAS_FILL_MODE_LOWER, cols, CUDA_R_64F,
                                  dR.data(), cols, CUDA_R_64F, dWork.data(), potrfDevice,
                                  hostWork.data(), potrfHost, dFlags.data() + 3));
        int info[2] = {};
        QL_TRY_STATUS(ctx.copyToHost(info, dFlags.data() + 2, sizeof info));
        std::string failure;
        if (info[1] != 0) {
            failure = "H + damp I is not positive definite";
        } else {
            QL_CUSOLVER_TRY(sol.trtri(*solver, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, cols,
                                      CUDA_R_64F, dR.data(), cols, dWork.data(), trtriDevice,
                                      hostWork.data(), trtriHost, dFlags.data() + 3));
            launchGptqExtractU(dR.data(), cols, dU.data(), dFlags.data() + 2, s);
            QL_TRY_STATUS(CudaContext::checkLaunch("gptq factor"));
            QL_TRY_STATUS(ctx.copyToHost(info, dFlags.data() + 2, sizeof info));
            if (info[1] != 0)
                failure = "its inverse is not positive definite";
            else if (info[0] != 0)
                failure = "the factor is not finite";
        }
        if (failure.empty()) {
            out.damp = frac;
            out.dampAbsolute = damp;
            break;
        }
        const double next = frac > 0 ? frac * 10 : 1e-4;
        if (attempt >= 12 || next > 1e6)
            return makeError(ErrorCode::InvalidArgument,
                             "gptq: the Hessian cannot be factorized even with damp " + sci(frac) +
                                 " x mean diagonal (" + failure + ")");
        out.dampRaises.push_back("Cholesky failed at damp=" + sci(frac) + " (" + failure +
                                 "); raised to damp=" + sci(next));
        frac = next;
    }
    const int evFactored = events.record();
    dR.release();
    dWork.release();
    if (!reportProgress(progress, 0.05, "gptq")) return cancelled();

    // 4. The column loop in lazy blocks.
    const std::int64_t bs = std::min<std::int64_t>(options.blockSize, kGptqMaxBlock);
    QL_TRY_STATUS(allocate(dErr, std::size_t(rows * bs), tracker, "the gptq block errors"));
    QL_TRY_STATUS(allocate(dCodesC, nW, tracker, "the gptq codes"));
    QL_TRY_STATUS(allocate(dAcc, 8, tracker, "the gptq sums"));
    QL_CUDA_TRY(cudaMemsetAsync(dAcc.data(), 0, 8 * sizeof(double), s));
    std::vector<int> loopEvents;
    const std::int64_t blocks = (cols + bs - 1) / bs;
    for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t i1 = b * bs, i2 = std::min(cols, i1 + bs);
        GptqBlockArgs a;
        a.wc = dWc.data();
        a.u = dU.data();
        a.rows = rows;
        a.cols = cols;
        a.i1 = i1;
        a.count = int(i2 - i1);
        a.perm = dPerm.data();
        a.pos = dPos.data();
        a.fitAt = dFitAt.data();
        a.grid = grid;
        a.scales = dScales.data();
        a.zeros = dZeros.data();
        a.codes = dCodesC.data();
        a.err = dErr.data();
        a.loss = dAcc.data();
        loopEvents.push_back(events.record());
        QL_CUDA_TRY(launchGptqBlock(a, s));
        loopEvents.push_back(events.record());
        if (i2 < cols) {
            const float minusOne = -1.0f, one = 1.0f;
            QL_CUBLAS_TRY(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(rows),
                                      int(cols - i2), int(i2 - i1), &minusOne, dErr.data(),
                                      int(rows), dU.data() + std::size_t(i2 * cols + i1), int(cols),
                                      &one, dWc.data() + std::size_t(i2 * rows), int(rows)));
        }
        if (progress && (b % 8 == 7 || b + 1 == blocks)) {
            QL_TRY_STATUS(ctx.synchronize());
            if (!reportProgress(progress, 0.05 + 0.85 * double(i2) / double(cols), "gptq"))
                return cancelled();
        }
    }
    loopEvents.push_back(events.record());

    // 5. Back to row-major original order; the quantized weights land in dW at the end.
    QL_TRY_STATUS(allocate(dQ, nW, tracker, "the quantized weights"));
    QL_TRY_STATUS(allocate(dCodes, nW, tracker, "the gptq codes"));
    launchGptqPermuteOut(dWc.data(), dCodesC.data(), dPerm.data(), rows, cols, dQ.data(),
                         dCodes.data(), s);
    QL_TRY_STATUS(CudaContext::checkLaunch("gptq output"));
    const int evQuantized = events.record();
    dCodesC.release();
    dU.release();
    dErr.release();

    // Metrics: RTN on the original weights and tr(D H D^T) for each D (Wc is scratch now).
    QL_TRY_STATUS(allocate(dRtn, nW, tracker, "the RTN weights"));
    QL_TRY_STATUS(allocate(dT, nW, tracker, "the Hessian-weighted error"));
    QL_TRY_STATUS(allocate(dMismatch, 1, tracker, "the decode check"));
    QL_CUDA_TRY(cudaMemsetAsync(dMismatch.data(), 0, sizeof(unsigned long long), s));
    if (grid.perTensor) launchGptqMinMax(dW, std::int64_t(nW), dLohi.data() + 2, s);
    launchGptqRtn(dW, rows, cols, grid, dLohi.data() + 2, dRtn.data(), s);
    auto quadratic = [&](const float* d, double* acc) -> Status {
        const float one = 1.0f, zero = 0.0f;
        QL_CUBLAS_TRY(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(cols), int(rows),
                                  int(cols), &one, dH, int(cols), d, int(cols), &zero, dT.data(),
                                  int(cols)));
        launchGptqDot(dT.data(), d, std::int64_t(nW), acc, s);
        return {};
    };
    double* acc =
        dAcc.data();  // 0 loss, 1 reference, 2 gptq error, 3 rtn error, 4 rtnLoss, 5 |dR|^2
    QL_TRY_STATUS(quadratic(dW, acc + 1));
    launchGptqDiff(dQ.data(), dW, nullptr, rows, cols, dWc.data(), s);
    QL_TRY_STATUS(quadratic(dWc.data(), acc + 2));
    launchGptqDiff(dRtn.data(), dW, nullptr, rows, cols, dWc.data(), s);
    QL_TRY_STATUS(quadratic(dWc.data(), acc + 3));
    if (out.deadColumns > 0) {
        launchGptqDiff(dRtn.data(), dW, dDead.data(), rows, cols, dWc.data(), s);
        QL_TRY_STATUS(quadratic(dWc.data(), acc + 4));
    }
    launchGptqDot(dWc.data(), dWc.data(), std::int64_t(nW), acc + 5, s);
    launchGptqDecodeCheck(dQ.data(), dCodes.data(), dScales.data(), dZeros.data(), rows, cols, grid,
                          dMismatch.data(), s);
    QL_TRY_STATUS(CudaContext::checkLaunch("gptq metrics"));

    QuantizedTensor q;
    q.format = format;
    q.rows = rows;
    q.cols = cols;
    q.codes.resize(nW);
    q.scales.resize(std::size_t(scaleSlots));
    std::vector<std::int32_t> zeros(static_cast<std::size_t>(scaleSlots));
    out.weights.resize(nW);
    double sums[8] = {};
    unsigned long long mismatches = 0;
    QL_TRY_STATUS(ctx.copyToHost(out.weights.data(), dQ.data(), nW * sizeof(float)));
    QL_TRY_STATUS(ctx.copyToHost(q.codes.data(), dCodes.data(), nW));
    QL_TRY_STATUS(ctx.copyToHost(q.scales.data(), dScales.data(), q.scales.size() * 4));
    if (!format.symmetric)
        QL_TRY_STATUS(ctx.copyToHost(zeros.data(), dZeros.data(), zeros.size() * 4));
    QL_TRY_STATUS(ctx.copyToHost(sums, dAcc.data(), sizeof sums));
    QL_TRY_STATUS(ctx.copyToHost(&mismatches, dMismatch.data(), sizeof mismatches));
    QL_CUDA_TRY(cudaMemcpyAsync(dW, dQ.data(), nW * sizeof(float), cudaMemcpyDeviceToDevice, s));
    QL_TRY_STATUS(ctx.synchronize());
    const int evDone = events.record();
    if (mismatches)
        return makeError(ErrorCode::InvalidArgument,
                         "gptq (GPU): internal error: " + std::to_string(mismatches) +
                             " weights of the encoded " + formatToString(format) +
                             " tensor do not decode to the values the loop chose");
    if (!format.symmetric) {
        q.zeroPoints.resize(zeros.size());
        for (std::size_t i = 0; i < zeros.size(); ++i) q.zeroPoints[i] = std::uint8_t(zeros[i]);
    }

    out.loss = sums[0];
    out.error.reference = sums[1];
    out.error.weighted = sums[2];
    out.error.relative = sums[1] > 0 ? sums[2] / sums[1] : 0.0;
    out.rtnError.reference = sums[1];
    out.rtnError.weighted = sums[3];
    out.rtnError.relative = sums[1] > 0 ? sums[3] / sums[1] : 0.0;
    out.rtnLoss = (out.deadColumns > 0 ? sums[4] : sums[3]) + out.dampAbsolute * sums[5];
    out.order = std::move(perm);
    out.quantized = std::move(q);
    out.note = "cuda";
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    if (timings) {
        GptqDeviceTimings& t = *timings;
        t = {};
        t.prepareMs = events.ms(evStart, evPrepared);
        t.factorMs = events.ms(evPrepared, evFactored);
        for (std::size_t i = 0; i + 1 < loopEvents.size(); i += 2) {
            t.loopMs += events.ms(loopEvents[i], loopEvents[i + 1]);
            t.updateMs += events.ms(loopEvents[i + 1], loopEvents[i + 2]);
        }
        t.gptqMs = events.ms(evStart, evQuantized);
        t.metricsMs = events.ms(evQuantized, evDone);
        t.peakBytes = tracker.peak;
        t.deviceBlock = int(bs);
    }
    (void)reportProgress(progress, 1.0, "gptq");
    return out;
}

}  // namespace ql::cuda
