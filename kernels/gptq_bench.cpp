// `bench gptq` on the device: inputs generated once per shape (gptq_bench.cu), then each repeat
// copies the pristine W and H into the buffers GPTQ consumes (not timed) and times the call with
// CUDA events (cuda_gptq.h's GptqDeviceTimings), upload excluded and factorization included.
#include "gptq_bench.h"

#include <algorithm>
#include <chrono>

#include "cuda_check.cuh"
#include "cuda_context.h"
#include "cuda_gptq.h"
#include "device_buffer.h"
#include "gptq.cuh"

namespace ql::cuda {

Result<GptqBenchResult> benchGptq(const GptqBenchConfig& config)
{
    const std::int64_t rows = config.rows, cols = config.cols;
    if (rows <= 0 || cols <= 0 || config.repeats < 1)
        return makeError(ErrorCode::InvalidArgument, "bench gptq: bad shape or repeat count");
    auto ctxR = CudaContext::create(0);
    if (!ctxR) return ctxR.error();
    CudaContext& ctx = **ctxR;
    const cudaStream_t s = ctx.stream();
    GptqBenchResult out;
    out.device = ctx.info().name;
    out.tokens = config.tokens > 0 ? config.tokens : 2 * cols;
    MemoryTracker tracker;
    const std::size_t nW = std::size_t(rows * cols), nH = std::size_t(cols * cols);
    auto w0 = DeviceBuffer<float>::allocate(nW, &tracker, "the generated weights");
    if (!w0) return w0.error();
    auto h0 = DeviceBuffer<float>::allocate(nH, &tracker, "the generated Hessian");
    if (!h0) return h0.error();
    {
        // H = X^T X / tokens, X tokens x cols row-major = cols x tokens column-major.
        auto x = DeviceBuffer<float>::allocate(std::size_t(out.tokens * cols), &tracker,
                                               "the generated activations");
        if (!x) return x.error();
        launchGptqBenchActivations(x->data(), out.tokens, cols, 0x5eed0001ull, s);
        launchGptqBenchWeights(w0->data(), rows, cols, 0x5eed0002ull, s);
        QL_TRY_STATUS(CudaContext::checkLaunch("bench gptq inputs"));
        const float alpha = 1.0f / float(out.tokens), beta = 0.0f;
        QL_CUBLAS_TRY(cublasSgemm(ctx.blas(), CUBLAS_OP_N, CUBLAS_OP_T, int(cols), int(cols),
                                  int(out.tokens), &alpha, x->data(), int(cols), x->data(),
                                  int(cols), &beta, h0->data(), int(cols)));
        QL_TRY_STATUS(ctx.synchronize());
    }
    out.inputBytes = (nW + nH) * sizeof(float);

    if (config.cpu) {
        std::vector<float> w(nW), hf(nH);
        QL_TRY_STATUS(ctx.copyToHost(w.data(), w0->data(), nW * 4));
        QL_TRY_STATUS(ctx.copyToHost(hf.data(), h0->data(), nH * 4));
        std::vector<double> h(hf.begin(), hf.end());
        out.device = "CPU";
        GptqResult last;
        for (int rep = 0; rep < config.repeats; ++rep) {
            const auto t0 = std::chrono::steady_clock::now();
            auto r = quantizeGptq(w.data(), rows, cols, h, config.format, config.options);
            if (!r) return r.error();
            out.runMs.push_back(
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count());
            last = std::move(r).value();
        }
        std::vector<double> sorted = out.runMs;
        std::sort(sorted.begin(), sorted.end());
        out.ms = out.totalMs = sorted[sorted.size() / 2];
        out.loss = last.loss;
        out.rtnLoss = last.rtnLoss;
        out.errorRelative = last.error.relative;
        out.rtnErrorRelative = last.rtnError.relative;
        out.dampRaises = last.dampRaises;
        return out;
    }

    auto w = DeviceBuffer<float>::allocate(nW, &tracker, "the weights GPTQ quantizes");
    if (!w) return w.error();
    auto h = DeviceBuffer<float>::allocate(nH, &tracker, "the Hessian GPTQ consumes");
    if (!h) return h.error();
    struct Run {
        double ms;
        GptqDeviceTimings t;
        double totalMs;
    };
    std::vector<Run> runs;
    GptqResult last;
    for (int rep = 0; rep <= config.repeats; ++rep) {  // the first run warms up, untimed
        QL_CUDA_TRY(cudaMemcpyAsync(w->data(), w0->data(), nW * 4, cudaMemcpyDeviceToDevice, s));
        QL_CUDA_TRY(cudaMemcpyAsync(h->data(), h0->data(), nH * 4, cudaMemcpyDeviceToDevice, s));
        QL_TRY_STATUS(ctx.synchronize());
        GptqDeviceTimings t;
        const auto t0 = std::chrono::steady_clock::now();
        auto r = quantizeGptqDeviceTimed(ctx, w->data(), h->data(), rows, cols, config.format,
                                         config.options, {}, {}, config.factor, &t);
        if (!r) return r.error();
        const double total =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count();
        if (rep > 0) runs.push_back({t.gptqMs, t, total});
        last = std::move(r).value();
    }
    for (const Run& r : runs) out.runMs.push_back(r.ms);
    std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.ms < b.ms; });
    const Run& median = runs[runs.size() / 2];
    out.ms = median.ms;
    out.prepareMs = median.t.prepareMs;
    out.factorMs = median.t.factorMs;
    out.loopMs = median.t.loopMs;
    out.updateMs = median.t.updateMs;
    out.metricsMs = median.t.metricsMs;
    out.totalMs = median.totalMs;
    out.peakBytes = median.t.peakBytes;
    out.deviceBlock = median.t.deviceBlock;
    out.factorBits = median.t.factorBits;
    out.factorFellBack = median.t.factorFellBack;
    out.uRows = median.t.uRows;
    out.loss = last.loss;
    out.rtnLoss = last.rtnLoss;
    out.errorRelative = last.error.relative;
    out.rtnErrorRelative = last.rtnError.relative;
    out.dampRaises = last.dampRaises;
    return out;
}

}  // namespace ql::cuda
