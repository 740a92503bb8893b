// GPTQ on the GPU, host side. The steps mirror core/quant/gptq.cpp, so the results agree with
// the CPU oracle up to float rounding in the column loop, but the loop runs left-looking on the
// Cholesky factor of the Hessian itself rather than on the factor of its inverse:
//  1. checks (finite W and H) and H's diagonal on the host: dead columns (H_ii = 1, W_:i = 0),
//     the act-order permutation (stable sort by descending H_ii), mean(diag H), and the schedule
//     (gptq_plan.h: lazy blocks, where each unit is fitted, its columns beyond that block);
//  2. W is transposed into Wc, column-major in processing order (a warp reads a column's rows
//     coalesced); grids fitted before the loop (static groups, per tensor) come from it;
//  3. F, upper with Hd = F F^T (Hd = P^T H P + damp I): one potrf, no inverse. With J the
//     reversal, J Hd J = L L^T gives F = J L J. The CPU's U (Hd^-1 = U^T U) is F^-1, so
//     U_ii = 1 / F_ii. Precision as GptqFactorPrecision says (F32 falls back to F64 before the
//     dampening is raised); damp is raised x10 (and every raise reported) when potrf fails or F is
//     not finite, as the CPU does. F is kept as float. Where a unit is fitted before the loop
//     reaches its block, the first rows of U are solved for (gptq_plan.h);
//  4. per lazy block [i1, i2) of at most kGptqMaxBlock columns: GPTQ's updates give
//     W0 - Q = E U with E the scaled errors, so with D = W0 - Q the weight the loop sees is
//     w_i = w0_i + (1/F_ii) sum_{j<i} D_j F_ji. One float32 cuBLAS GEMM adds up the part from
//     the earlier blocks, D[:, 0:i1] F[0:i1, i1:i2] (split along K so that short-and-wide shapes
//     fill the GPU; no TF32: the context's handle keeps CUBLAS_DEFAULT_MATH), then the column
//     kernel (gptq.cu) does the in-block part column by column, rounds, and leaves D in Wc. The
//     FLOPs are those of the right-looking trailing updates; lazy batching is exact algebra, so
//     the device blocks may differ from options.blockSize without changing the result;
//  5. the codes back to row-major original order, with the weights decoded from them (so the
//     two agree by construction; the tests decode with core's codec); RTN on the device; the
//     Hessian-weighted errors as tr(D H D^T) = sum((D H) .* D) with one GEMM each; copies to the
//     host.
// The monitor's events are the CPU's: layerStarted, dampRaised per raise, layerProgress per lazy
// block of options.blockSize (at synchronization points every kSyncEvery device blocks, only
// when someone watches), the pause gate there, layerFinished. All device memory is RAII
// (DeviceBuffer); the stream is drained before any return, so an error or a cancel never frees
// memory a kernel still uses.
#include "cuda_gptq.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_check.cuh"
#include "cuda_context.h"
#include "cusolver_api.h"
#include "device_buffer.h"
#include "gptq.cuh"
#include "gptq_plan.h"
#include "util/pause_gate.h"

namespace ql::cuda {
namespace {

constexpr std::int64_t kSyncEvery = 8;    // device blocks between monitor/progress syncs
constexpr std::int64_t kMinSliceK = 256;  // the shortest K slice of the left-looking GEMM

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

template <class T>
Status upload(const CudaContext& ctx, DeviceBuffer<T>& buffer, const std::vector<T>& host,
              MemoryTracker& tracker, const std::string& what)
{
    QL_TRY_STATUS(allocate(buffer, host.size(), tracker, what));
    if (!host.empty())
        QL_TRY_STATUS(ctx.copyToDevice(buffer.data(), host.data(), host.size() * sizeof(T)));
    return {};
}

Error cancelled()
{
    return makeError(ErrorCode::Cancelled, "gptq cancelled");
}

GptqFactorPrecision resolve(GptqFactorPrecision p)
{
    if (p != GptqFactorPrecision::Default) return p;
    const char* env = std::getenv("QL_GPTQ_FACTOR");
    if (env && std::string(env) == "f64") return GptqFactorPrecision::F64;
    return GptqFactorPrecision::F32;
}

// X op(L) = B in place (B m x n, L lower n x n), as cuBLAS's trsm from the right.
cublasStatus_t trsmRightLower(cublasHandle_t h, int m, int n, const double* l, double* b)
{
    const double one = 1.0;
    return cublasDtrsm(h, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                       CUBLAS_DIAG_NON_UNIT, m, n, &one, l, n, b, m);
}

cublasStatus_t trsmRightLower(cublasHandle_t h, int m, int n, const float* l, float* b)
{
    const float one = 1.0f;
    return cublasStrsm(h, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                       CUBLAS_DIAG_NON_UNIT, m, n, &one, l, n, b, m);
}

}  // namespace

bool gptqDeviceSupports(const QuantFormat& format)
{
    return format.kind == QuantKind::Uniform && format.bits >= 2 && format.bits <= 8;
}

Result<GptqResult> quantizeGptqDevice(CudaContext& ctx, float* dW, float* dH, std::int64_t rows,
                                      std::int64_t cols, const QuantFormat& format,
                                      const GptqOptions& options, const ProgressFn& progress,
                                      const GptqMonitor& monitor)
{
    return quantizeGptqDeviceTimed(ctx, dW, dH, rows, cols, format, options, progress, monitor,
                                   GptqFactorPrecision::Default, nullptr);
}

Result<GptqResult> quantizeGptqDeviceTimed(CudaContext& ctx, float* dW, float* dH,
                                           std::int64_t rows, std::int64_t cols,
                                           const QuantFormat& format, const GptqOptions& options,
                                           const ProgressFn& progress, const GptqMonitor& monitor,
                                           GptqFactorPrecision factor, GptqDeviceTimings* timings)
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
    const GptqFactorPrecision precision = resolve(factor);

    const cudaStream_t s = ctx.stream();
    const std::size_t nW = std::size_t(rows * cols), nH = std::size_t(cols * cols);
    MemoryTracker tracker;
    // dFlags: 0 W not finite, 1 H not finite, 2 potrf info, 3 F bad, 4 a pivot small.
    DeviceBuffer<int> dFlags;
    DeviceBuffer<float> dDiag, dWc, dF, dFDiag, dFInv, dUc, dE, dPre, dParts, dScales, dLohi, dQ,
        dRtn, dT;
    DeviceBuffer<double> dR64, dY64, dSums;
    DeviceBuffer<float> dR32, dY32;
    DeviceBuffer<std::int32_t> dPerm, dPos, dFitAt, dBeyond, dUnitBeyond, dZeros;
    DeviceBuffer<std::uint8_t> dDead, dCodesC, dCodes;
    DeviceBuffer<char> dWork;
    const StreamDrain drain{s};
    Events events(timings != nullptr, s);

    GptqResult out;
    const int evStart = events.record();

    // 1. Checks, the diagonal, the order and the schedule.
    QL_TRY_STATUS(allocate(dFlags, 8, tracker, "gptq flags"));
    QL_TRY_STATUS(allocate(dDiag, std::size_t(cols), tracker, "the Hessian diagonal"));
    QL_CUDA_TRY(cudaMemsetAsync(dFlags.data(), 0, 8 * sizeof(int), s));
    launchGptqCheckFinite(dW, std::int64_t(nW), dFlags.data(), s);
    launchGptqCheckFinite(dH, std::int64_t(nH), dFlags.data() + 1, s);
    launchGptqDiag(dH, cols, dDiag.data(), s);
    QL_TRY_STATUS(CudaContext::checkLaunch("gptq checks"));
    int flags[2] = {};
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
    if (monitor.observer) {
        GptqLayerStart e;
        e.tensor = monitor.tensor;
        e.rows = rows;
        e.cols = cols;
        e.format = formatToString(format);
        e.hessianDiagonal.assign(diag.begin(), diag.end());
        e.order = perm;
        e.actOrder = options.actOrder;
        e.damp = options.damp;
        e.blockSize = options.blockSize;
        e.deadColumns = out.deadColumns;
        monitor.observer->layerStarted(e);
    }

    GptqGrid grid;
    grid.bits = format.bits;
    grid.symmetric = format.symmetric;
    grid.perTensor = format.granularity == Granularity::PerTensor;
    grid.unitLen = scaleGroupSize(format, cols);
    const std::int64_t units = (cols + grid.unitLen - 1) / grid.unitLen;
    grid.groupsPerRow = grid.perTensor ? 1 : units;
    const std::int64_t scaleSlots = grid.perTensor ? 1 : rows * units;
    const GptqPlan plan =
        planGptq(pos, grid.unitLen, !grid.perTensor && !options.staticGroups, options.actOrder);
    const std::int64_t uRows = plan.uRows;
    out.groupIndex.resize(std::size_t(cols));
    for (std::int64_t c = 0; c < cols; ++c)
        out.groupIndex[std::size_t(c)] = std::int32_t(c / grid.unitLen);

    QL_TRY_STATUS(upload(ctx, dPerm, perm, tracker, "the gptq permutation"));
    QL_TRY_STATUS(upload(ctx, dPos, pos, tracker, "the gptq permutation"));
    QL_TRY_STATUS(upload(ctx, dFitAt, plan.fitAt, tracker, "the gptq unit table"));
    QL_TRY_STATUS(upload(ctx, dDead, dead, tracker, "the dead-column table"));
    if (!plan.beyond.empty()) {
        QL_TRY_STATUS(upload(ctx, dBeyond, plan.beyond, tracker, "the gptq unit table"));
        QL_TRY_STATUS(upload(ctx, dUnitBeyond, plan.unitBeyond, tracker, "the gptq unit table"));
    }

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

    // 3. F, raising the dampening until the factorization succeeds.
    auto solver = ctx.solver();
    if (!solver) return solver.error();
    auto api = cusolverApi();
    if (!api) return api.error();
    const CusolverApi& sol = **api;
    SolverParams params;
    params.api = &sol;
    QL_CUSOLVER_TRY(sol.createParams(&params.params));
    QL_TRY_STATUS(allocate(dF, nH, tracker, "the Hessian factor"));
    QL_TRY_STATUS(allocate(dFDiag, std::size_t(cols), tracker, "the Hessian factor's diagonal"));
    QL_TRY_STATUS(allocate(dFInv, std::size_t(cols), tracker, "the Hessian factor's diagonal"));
    std::vector<char> hostWork;
    // One factorization at `damp` in R's precision: "" when F (dF, dFDiag, dFInv) is good, else
    // why not ("small" only with minPivot > 0).
    auto factorIn = [&]<class T>(DeviceBuffer<T>& dR, double damp,
                                 double minPivot) -> Result<std::string> {
        constexpr cudaDataType type = std::is_same_v<T, double> ? CUDA_R_64F : CUDA_R_32F;
        if (dR.empty())
            QL_TRY_STATUS(allocate(dR, nH, tracker,
                                   std::is_same_v<T, double>
                                       ? "the Hessian factorization (double)"
                                       : "the Hessian factorization (float)"));
        std::size_t deviceBytes = 0, hostBytes = 0;
        QL_CUSOLVER_TRY(sol.potrfBufferSize(*solver, params.params, CUBLAS_FILL_MODE_LOWER, cols,
                                            type, dR.data(), cols, type, &deviceBytes, &hostBytes));
        if (dWork.size() < std::max<std::size_t>(deviceBytes, 1)) {
            dWork.release();
            QL_TRY_STATUS(allocate(dWork, deviceBytes, tracker, "the cuSOLVER workspace"));
        }
        if (hostWork.size() < std::max<std::size_t>(hostBytes, 1))
            hostWork.resize(std::max<std::size_t>(hostBytes, 1));
        launchGptqFactorInput(dH, dPerm.data(), dDead.data(), cols, damp, dR.data(), s);
        QL_TRY_STATUS(CudaContext::checkLaunch("gptq factorization input"));
        QL_CUDA_TRY(cudaMemsetAsync(dFlags.data() + 2, 0, 3 * sizeof(int), s));
        QL_CUSOLVER_TRY(sol.potrf(*solver, params.params, CUBLAS_FILL_MODE_LOWER, cols, type,
                                  dR.data(), cols, type, dWork.data(), deviceBytes, hostWork.data(),
                                  hostBytes, dFlags.data() + 2));
        int info = 0;
        QL_TRY_STATUS(ctx.copyToHost(&info, dFlags.data() + 2, sizeof info));
        if (info != 0) return std::string("H + damp I is not positive definite");
        launchGptqExtractF(dR.data(), cols, dDiag.data(), dPerm.data(), dDead.data(), damp,
                           minPivot, dF.data(), dFDiag.data(), dFInv.data(), dFlags.data() + 3, s);
        QL_TRY_STATUS(CudaContext::checkLaunch("gptq factor"));
        int bad[2] = {};
        QL_TRY_STATUS(ctx.copyToHost(bad, dFlags.data() + 3, sizeof bad));
        if (bad[0]) return std::string("the factor is not finite");
        if (bad[1]) return std::string("a pivot is too small for float32");
        return std::string();
    };
    // The first uRows rows of U = F^-1 at the beyond columns (gptq_plan.h), from R's factor:
    // X F = [I 0] is (X J) L = [I 0] J.
    auto rowsOfU = [&]<class T>(DeviceBuffer<T>& dR, DeviceBuffer<T>& dY) -> Status {
        QL_TRY_STATUS(allocate(dY, std::size_t(uRows * cols), tracker, "the rows of U"));
        launchGptqUnitRows(dY.data(), uRows, cols, s);
        QL_TRY_STATUS(CudaContext::checkLaunch("gptq rows of U"));
        QL_CUBLAS_TRY(trsmRightLower(ctx.blas(), int(uRows), int(cols), dR.data(), dY.data()));
        QL_TRY_STATUS(
            allocate(dUc, std::size_t(uRows) * plan.beyond.size(), tracker, "the rows of U"));
        launchGptqGatherURows(dY.data(), uRows, cols, dBeyond.data(),
                              std::int64_t(plan.beyond.size()), dUc.data(), s);
        QL_TRY_STATUS(CudaContext::checkLaunch("gptq rows of U"));
        dY.release();
        return {};
    };
    double frac = options.damp;
    bool fellBack = false;
    int factorBits = 0;
    for (int attempt = 0;; ++attempt) {
        const double damp = frac * meanDiag;
        std::string failure;
        if (precision == GptqFactorPrecision::F32) {
            auto r = factorIn(dR32, damp, kGptqF32MinPivot);
            if (!r) return r.error();
            failure = *r;
            if (failure.empty()) {
                factorBits = 32;
                if (uRows > 0) QL_TRY_STATUS(rowsOfU(dR32, dY32));
            }
            dR32.release();
        }
        if (precision == GptqFactorPrecision::F64 || !failure.empty()) {
            fellBack = fellBack || precision == GptqFactorPrecision::F32;
            auto r = factorIn(dR64, damp, 0.0);
            if (!r) return r.error();
            failure = *r;
            if (failure.empty()) {
                factorBits = 64;
                if (uRows > 0) QL_TRY_STATUS(rowsOfU(dR64, dY64));
            }
            dR64.release();
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
        if (monitor.observer)
            monitor.observer->dampRaised({monitor.tensor, frac, next, out.dampRaises.back()});
        frac = next;
    }
    dWork.release();
    const int evFactored = events.record();
    if (!reportProgress(progress, 0.05, "gptq")) return cancelled();

    // 4. The column loop in lazy blocks.
    const std::int64_t blocks = plan.blocks();
    int sms = 0;
    QL_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.deviceIndex()));
    // K slices so that (row tiles x slices) covers the SMs once; the kernel adds them up.
    const std::int64_t rowTiles = (rows + 127) / 128;
    const std::int64_t maxSplits =
        std::clamp<std::int64_t>(std::int64_t(sms) / rowTiles, 1, kGptqMaxSplits);
    std::int64_t maxBlockBeyond = 0, widest = 0;
    for (std::int64_t b = 0; b < blocks; ++b) {
        widest =
            std::max(widest, plan.blockStart[std::size_t(b + 1)] - plan.blockStart[std::size_t(b)]);
        if (plan.blockStart[std::size_t(b)] > 0)
            maxBlockBeyond = std::max(maxBlockBeyond, plan.blockBeyond[std::size_t(b + 1)] -
                                                          plan.blockBeyond[std::size_t(b)]);
    }
    QL_TRY_STATUS(allocate(dParts, std::size_t(maxSplits * rows * kGptqMaxBlock), tracker,
                           "the gptq block accumulators"));
    QL_TRY_STATUS(allocate(dCodesC, nW, tracker, "the gptq codes"));
    QL_TRY_STATUS(allocate(dSums, 8, tracker, "the gptq sums"));
    if (uRows > 0)
        QL_TRY_STATUS(allocate(dE, std::size_t(rows * uRows), tracker, "the gptq errors"));
    if (maxBlockBeyond > 0)
        QL_TRY_STATUS(
            allocate(dPre, std::size_t(rows * maxBlockBeyond), tracker, "the gptq unit fits"));
    QL_CUDA_TRY(cudaMemsetAsync(dSums.data(), 0, 8 * sizeof(double), s));
    const bool watching = progress || monitor.observer || monitor.gate;
    const std::int64_t lazyBlocks = (cols + options.blockSize - 1) / options.blockSize;
    std::int64_t reported = 0;  // lazy blocks of options.blockSize reported to the monitor
    std::vector<int> loopEvents;
    const float one = 1.0f, zero = 0.0f;
    for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t i1 = plan.blockStart[std::size_t(b)];
        const std::int64_t i2 = plan.blockStart[std::size_t(b + 1)];
        const std::int64_t count = i2 - i1;
        const std::int64_t kb0 = plan.blockBeyond[std::size_t(b)];
        const std::int64_t kb1 = plan.blockBeyond[std::size_t(b + 1)];
        loopEvents.push_back(events.record());
        int parts = 0;
        if (i1 > 0) {
            // acc = D[:, 0:i1] F[0:i1, i1:i2], F row-major, i.e. F^T column-major.
            const std::int64_t splits = std::clamp<std::int64_t>(i1 / kMinSliceK, 1, maxSplits);
            const std::int64_t kc = (i1 + splits - 1) / splits;
            const std::int64_t full = i1 / kc, rest = i1 - full * kc;
            const float* done = dWc.data();       // D of the columns before i1
            const float* above = dF.data() + i1;  // F[0:i1, i1:i2]
            if (full == 1) {
                QL_CUBLAS_TRY(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_T, int(rows),
                                          int(count), int(kc), &one, done, int(rows), above,
                                          int(cols), &zero, dParts.data(), int(rows)));
            } else {
                QL_CUBLAS_TRY(cublasSgemmStridedBatched(
                    ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_T, int(rows), int(count), int(kc), &one,
                    done, int(rows), kc * rows, above, int(cols), kc * cols, &zero, dParts.data(),
                    int(rows), rows * kGptqMaxBlock, int(full)));
            }
            if (rest > 0)
                QL_CUBLAS_TRY(cublasSgemm(
                    ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_T, int(rows), int(count), int(rest), &one,
                    done + std::size_t(full * kc * rows), int(rows),
                    above + std::size_t(full * kc * cols), int(cols), &zero,
                    dParts.data() + std::size_t(full * rows * kGptqMaxBlock), int(rows)));
            parts = int(full + (rest > 0 ? 1 : 0));
        }
        const bool pre = kb1 > kb0 && i1 > 0;
        if (pre)  // E[:, 0:i1] U[0:i1, beyond columns of the block's fits]
            QL_CUBLAS_TRY(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(rows),
                                      int(kb1 - kb0), int(i1), &one, dE.data(), int(rows),
                                      dUc.data() + std::size_t(kb0 * uRows), int(uRows), &zero,
                                      dPre.data(), int(rows)));
        GptqBlockArgs a;
        a.wc = dWc.data();
        a.f = dF.data();
        a.fDiag = dFDiag.data();
        a.fInv = dFInv.data();
        a.acc = parts > 0 ? dParts.data() : nullptr;
        a.accParts = parts;
        a.rows = rows;
        a.cols = cols;
        a.i1 = i1;
        a.count = int(count);
        a.perm = dPerm.data();
        a.fitAt = dFitAt.data();
        a.grid = grid;
        a.scales = dScales.data();
        a.zeros = dZeros.data();
        a.codes = dCodesC.data();
        a.loss = dSums.data();
        a.beyond = plan.beyond.empty() ? nullptr : dBeyond.data();
        a.unitBeyond = plan.beyond.empty() ? nullptr : dUnitBeyond.data();
        a.uRowsAt = dUc.empty() ? nullptr : dUc.data();
        a.uRows = uRows;
        a.e = dE.empty() ? nullptr : dE.data();
        a.pre = pre ? dPre.data() : nullptr;
        a.preFirst = kb0;
        loopEvents.push_back(events.record());
        QL_CUDA_TRY(launchGptqBlock(a, s));
        loopEvents.push_back(events.record());
        if (watching && (b % kSyncEvery == kSyncEvery - 1 || b + 1 == blocks)) {
            QL_TRY_STATUS(ctx.synchronize());
            // Every lazy block of options.blockSize done by now, as the CPU reports them.
            while (reported < lazyBlocks &&
                   std::min(cols, (reported + 1) * options.blockSize) <= i2) {
                const std::int64_t column = std::min(cols, (reported + 1) * options.blockSize);
                const double fraction = 0.05 + 0.85 * double(column) / double(cols);
                if (!reportProgress(progress, fraction, "gptq")) return cancelled();
                if (monitor.observer)
                    monitor.observer->layerProgress({monitor.tensor, reported, lazyBlocks, column,
                                                     cols, double(column) / double(cols)});
                ++reported;
            }
            const double fraction = 0.05 + 0.85 * double(i2) / double(cols);
            if (monitor.gate && i2 < cols &&
                !monitor.gate->pass([&] { return reportProgress(progress, fraction, "paused"); }))
                return cancelled();
        }
    }
    loopEvents.push_back(events.record());

    // 5. Back to row-major original order; the quantized weights land in dW at the end.
    QL_TRY_STATUS(allocate(dQ, nW, tracker, "the quantized weights"));
    QL_TRY_STATUS(allocate(dCodes, nW, tracker, "the gptq codes"));
    launchGptqPermuteOut(dCodesC.data(), dPerm.data(), dScales.data(), dZeros.data(), grid, rows,
                         cols, dQ.data(), dCodes.data(), s);
    QL_TRY_STATUS(CudaContext::checkLaunch("gptq output"));
    const int evQuantized = events.record();
    dCodesC.release();
    dF.release();
    dParts.release();
    dE.release();
    dPre.release();
    dUc.release();

    // Metrics: RTN on the original weights and tr(D H D^T) for each D (Wc is scratch now).
    QL_TRY_STATUS(allocate(dRtn, nW, tracker, "the RTN weights"));
    QL_TRY_STATUS(allocate(dT, nW, tracker, "the Hessian-weighted error"));
    if (grid.perTensor) launchGptqMinMax(dW, std::int64_t(nW), dLohi.data() + 2, s);
    launchGptqRtn(dW, rows, cols, grid, dLohi.data() + 2, dRtn.data(), s);
    auto quadratic = [&](const float* d, double* acc) -> Status {
        QL_CUBLAS_TRY(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_N, int(cols), int(rows),
                                  int(cols), &one, dH, int(cols), d, int(cols), &zero, dT.data(),
                                  int(cols)));
        launchGptqDot(dT.data(), d, std::int64_t(nW), acc, s);
        return {};
    };
    double* sum =
        dSums.data();  // 0 loss, 1 reference, 2 gptq error, 3 rtn error, 4 rtnLoss, 5 |dR|^2
    QL_TRY_STATUS(quadratic(dW, sum + 1));
    launchGptqDiff(dQ.data(), dW, nullptr, rows, cols, dWc.data(), s);
    QL_TRY_STATUS(quadratic(dWc.data(), sum + 2));
    launchGptqDiff(dRtn.data(), dW, nullptr, rows, cols, dWc.data(), s);
    QL_TRY_STATUS(quadratic(dWc.data(), sum + 3));
    if (out.deadColumns > 0) {
        launchGptqDiff(dRtn.data(), dW, dDead.data(), rows, cols, dWc.data(), s);
        QL_TRY_STATUS(quadratic(dWc.data(), sum + 4));
    }
    launchGptqDot(dWc.data(), dWc.data(), std::int64_t(nW), sum + 5, s);
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
    QL_TRY_STATUS(ctx.copyToHost(out.weights.data(), dQ.data(), nW * sizeof(float)));
    QL_TRY_STATUS(ctx.copyToHost(q.codes.data(), dCodes.data(), nW));
    QL_TRY_STATUS(ctx.copyToHost(q.scales.data(), dScales.data(), q.scales.size() * 4));
    if (!format.symmetric)
        QL_TRY_STATUS(ctx.copyToHost(zeros.data(), dZeros.data(), zeros.size() * 4));
    QL_TRY_STATUS(ctx.copyToHost(sums, dSums.data(), sizeof sums));
    QL_CUDA_TRY(cudaMemcpyAsync(dW, dQ.data(), nW * sizeof(float), cudaMemcpyDeviceToDevice, s));
    QL_TRY_STATUS(ctx.synchronize());
    const int evDone = events.record();
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
        for (std::size_t i = 0; i + 3 < loopEvents.size(); i += 3) {
            t.updateMs += events.ms(loopEvents[i], loopEvents[i + 1]);
            t.loopMs += events.ms(loopEvents[i + 1], loopEvents[i + 2]);
        }
        t.gptqMs = events.ms(evStart, evQuantized);
        t.metricsMs = events.ms(evQuantized, evDone);
        t.peakBytes = tracker.peak;
        t.deviceBlock = int(widest);
        t.factorBits = factorBits;
        t.factorFellBack = fellBack;
        t.uRows = uRows;
    }
    if (monitor.observer) monitor.observer->layerFinished(gptqLayerDone(monitor.tensor, out));
    (void)reportProgress(progress, 1.0, "gptq");
    return out;
}

}  // namespace ql::cuda
