// CudaBackend: the device, its context, and the factory of CUDA model runners
// (cuda_llama_runner.h).
#include "cuda_backend.cuh"

#include "compute/runner.h"
#include "cuda_context.h"
#include "cuda_llama_runner.h"

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

private:
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
