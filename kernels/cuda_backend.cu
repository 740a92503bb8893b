#include "cuda_backend.cuh"
#include "cuda_check.cuh"

#include <cublas_v2.h>

namespace ql::cuda {
namespace {

DeviceInfo describe(int index)
{
    DeviceInfo info;
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) return info;
    info.name = prop.name;
    info.isGpu = true;
    info.totalMemory = prop.totalGlobalMem;
    info.computeCapability = prop.major * 10 + prop.minor;
    int previous = 0;
    if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(index) == cudaSuccess) {
        size_t freeBytes = 0, totalBytes = 0;
        if (cudaMemGetInfo(&freeBytes, &totalBytes) == cudaSuccess) info.freeMemory = freeBytes;
        cudaSetDevice(previous);
    }
    return info;
}

class CudaBackend final : public Backend {
public:
    ~CudaBackend() override
    {
        if (m_blas) cublasDestroy(m_blas);
        if (m_stream) cudaStreamDestroy(m_stream);
    }
    static Result<std::unique_ptr<Backend>> create(int index)
    {
        std::unique_ptr<CudaBackend> backend(new CudaBackend());
        backend->m_index = index;
        QL_CUDA_TRY(cudaSetDevice(index));
        QL_CUDA_TRY(cudaStreamCreateWithFlags(&backend->m_stream, cudaStreamNonBlocking));
        if (cublasCreate(&backend->m_blas) != CUBLAS_STATUS_SUCCESS)
            return makeError(ErrorCode::Device, "cublasCreate failed");
        cublasSetStream(backend->m_blas, backend->m_stream);
        return std::unique_ptr<Backend>(std::move(backend));
    }
    DeviceInfo device() const override { return describe(m_index); }

private:
    CudaBackend() = default;
    int m_index = 0;
    cudaStream_t m_stream = nullptr;
    cublasHandle_t m_blas = nullptr;
};

}  // namespace

std::vector<DeviceInfo> listDevices()
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) return {};
    std::vector<DeviceInfo> devices;
    for (int i = 0; i < count; ++i) devices.push_back(describe(i));
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
    return CudaBackend::create(deviceIndex);
}

}  // namespace ql::cuda
