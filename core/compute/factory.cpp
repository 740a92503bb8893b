// Backend factory: the one place outside kernels/ that knows whether CUDA was built.
#include "compute/backend.h"

#if QL_HAVE_CUDA
#include "cuda_backend.cuh"
#endif

namespace ql {

bool cudaBuilt()
{
#if QL_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

std::vector<DeviceInfo> listGpus()
{
#if QL_HAVE_CUDA
    return cuda::listDevices();
#else
    return {};
#endif
}

Result<std::unique_ptr<Backend>> createBackend(BackendKind kind)
{
    if (kind == BackendKind::Cpu) return createCpuBackend();
#if QL_HAVE_CUDA
    auto gpu = cuda::createCudaBackend(0);
    if (gpu) return std::move(gpu).value();
    if (kind == BackendKind::Cuda) return gpu.error();
    return createCpuBackend();
#else
    if (kind == BackendKind::Cuda)
        return makeError(ErrorCode::Unsupported, "this build of QuantLens has no CUDA support");
    return createCpuBackend();
#endif
}

}  // namespace ql
