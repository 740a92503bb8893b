// CudaBackend: the device, its context, and the factory of CUDA model runners
// (cuda_llama_runner.h).
#include "cuda_backend.cuh"

#include "compute/runner.h"
#include "cuda_context.h"
#include "cuda_gptq.h"
#include "cuda_llama_runner.h"
#include "gptq.cuh"

namespace ql::cuda {
namespace {

class CudaBackend final : public Backend {
public:
    explicit CudaBackend(std::shared_ptr<CudaContext> ctx) : m_ctx(std::move(ctx)) {}
    DeviceInfo device() const override { return m_ctx->info(); }
    Result<std::unique_ptr<ModelRunner>> createRunner(const LlamaWeightsView& weights,
                                                      Precision precision,
                                                      const RunnerOptions& options) override
    {
        return createCudaLlamaRunner(m_ctx, weights, precision, options);
    }
    Result<GptqResult> quantizeGptq(const float* w, std::int64_t rows, std::int64_t cols,
                                    std::span<const double> hessian, const QuantFormat& format,
                                    const GptqOptions& options, const float* importance,
                                    const ProgressFn& progress, const GptqMonitor& monitor) override
    {
        if (!gptqDeviceSupports(format)) {
            auto r = ql::quantizeGptq(w, rows, cols, hessian, format, options, importance, progress,
                                      monitor);
            if (r)
                r->note = "cpu: gptq on the GPU has no " + formatToString(format) +
                          " (uniform int2..int8 only)";
            return r;
        }
        // The Hessian goes up as it is and becomes float on the device: no host copy.
        return onDevice(w, rows, cols, hessian.size(), format, options, progress, monitor,
                        [&](float* dH, MemoryTracker& tracker) -> Status {
                            auto dH64 = DeviceBuffer<double>::allocate(
                                hessian.size(), &tracker, "the Hessian for gptq (double)");
                            if (!dH64) return dH64.error();
                            QL_TRY_STATUS(m_ctx->copyToDevice(dH64->data(), hessian.data(),
                                                              hessian.size() * sizeof(double)));
                            launchGptqToFloat(dH64->data(), std::int64_t(hessian.size()), dH,
                                              m_ctx->stream());
                            QL_TRY_STATUS(CudaContext::checkLaunch("gptq Hessian"));
                            return m_ctx->synchronize();
                        });
    }
    Result<GptqResult> quantizeGptqF32(const float* w, std::int64_t rows, std::int64_t cols,
                                       std::span<const float> hessian, const QuantFormat& format,
                                       const GptqOptions& options, const float* importance,
                                       const ProgressFn& progress,
                                       const GptqMonitor& monitor) override
    {
        if (!gptqDeviceSupports(format))
            return Backend::quantizeGptqF32(w, rows, cols, hessian, format, options, importance,
                                            progress, monitor);
        return onDevice(w, rows, cols, hessian.size(), format, options, progress, monitor,
                        [&](float* dH, MemoryTracker&) {
                            return m_ctx->copyToDevice(dH, hessian.data(), hessian.size() * 4);
                        });
    }

private:
    // Checks, W and H on the device (uploadHessian fills the float32 H), then the device GPTQ.
    template <class Upload>
    Result<GptqResult> onDevice(const float* w, std::int64_t rows, std::int64_t cols,
                                std::size_t hessianSize, const QuantFormat& format,
                                const GptqOptions& options, const ProgressFn& progress,
                                const GptqMonitor& monitor, Upload uploadHessian)
    {
        if (!w || rows <= 0 || cols <= 0)
            return makeError(ErrorCode::InvalidArgument, "gptq: no weights given");
        if (std::int64_t(hessianSize) != cols * cols)
            return makeError(ErrorCode::InvalidArgument,
                             "gptq: the Hessian has " + std::to_string(hessianSize) +
                                 " values, a " + std::to_string(cols) + " x " +
                                 std::to_string(cols) + " matrix needs " +
                                 std::to_string(cols * cols));
        QL_TRY_STATUS(m_ctx->activate());
        MemoryTracker tracker;
        auto dW = DeviceBuffer<float>::allocate(std::size_t(rows * cols), &tracker,
                                                "the weights for gptq");
        if (!dW) return dW.error();
        auto dH = DeviceBuffer<float>::allocate(std::size_t(cols * cols), &tracker,
                                                "the Hessian for gptq");
        if (!dH) return dH.error();
        QL_TRY_STATUS(m_ctx->copyToDevice(dW->data(), w, std::size_t(rows * cols) * 4));
        QL_TRY_STATUS(uploadHessian(dH->data(), tracker));
        return quantizeGptqDevice(*m_ctx, dW->data(), dH->data(), rows, cols, format, options,
                                  progress, monitor);
    }

    std::shared_ptr<CudaContext> m_ctx;
};

}  // namespace

std::vector<DeviceInfo> listDevices()
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) return {};
    std::vector<DeviceInfo> devices;
    for (int i = 0; i < count; ++i) devices.push_back(describeDevice(i));
    return devices;
}

Result<std::unique_ptr<Backend>> createCudaBackend(int deviceIndex)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0)
        return makeError(ErrorCode::Device,
                         std::string("no CUDA device: ") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "none present"));
    if (deviceIndex < 0 || deviceIndex >= count)
        return makeError(ErrorCode::InvalidArgument, "CUDA device index out of range");
    auto ctx = CudaContext::create(deviceIndex);
    if (!ctx) return ctx.error();
    return std::unique_ptr<Backend>(new CudaBackend(std::move(ctx).value()));
}

}  // namespace ql::cuda
