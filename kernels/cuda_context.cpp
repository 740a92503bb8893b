// CudaContext and the device-memory handles (design in cuda_context.h, device_buffer.h).
#include "cuda_context.h"

#include "cusolver_api.h"

#include <cstdio>

namespace ql::cuda {

std::string formatGiB(std::uint64_t bytes)
{
    char buf[48];
    if (bytes >= (1ull << 30))
        std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(1ull << 30));
    else
        std::snprintf(buf, sizeof buf, "%.1f MiB", double(bytes) / double(1ull << 20));
    return buf;
}

Result<DeviceMemory> DeviceMemory::allocate(std::size_t bytes, MemoryTracker* tracker,
                                            const std::string& what)
{
    DeviceMemory m;
    if (bytes == 0) return m;
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        cudaGetLastError();  // an allocation failure is not sticky; clear it
        std::size_t freeBytes = 0, totalBytes = 0;
        cudaMemGetInfo(&freeBytes, &totalBytes);
        return makeError(
            err == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Device,
            "out of GPU memory: " + what + " needs " + formatGiB(bytes) + ", " +
                formatGiB(freeBytes) + " of " + formatGiB(totalBytes) + " are free (" +
                cudaGetErrorString(err) + ")");
    }
    m.m_ptr = p;
    m.m_bytes = bytes;
    m.m_tracker = tracker;
    if (tracker) tracker->add(bytes);
    return m;
}

void DeviceMemory::release()
{
    if (!m_ptr) return;
    cudaFree(m_ptr);
    if (m_tracker) m_tracker->remove(m_bytes);
    m_ptr = nullptr;
    m_bytes = 0;
}

DeviceInfo describeDevice(int index)
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

Result<std::shared_ptr<CudaContext>> CudaContext::create(int deviceIndex)
{
    std::shared_ptr<CudaContext> ctx(new CudaContext());
    ctx->m_device = deviceIndex;
    QL_CUDA_TRY(cudaSetDevice(deviceIndex));
    QL_CUDA_TRY(cudaStreamCreateWithFlags(&ctx->m_stream, cudaStreamNonBlocking));
    QL_CUBLAS_TRY(cublasCreate(&ctx->m_blas));
    QL_CUBLAS_TRY(cublasSetStream(ctx->m_blas, ctx->m_stream));
    // Float32 GEMMs stay float32: no TF32 unless a call asks for it by compute type.
    QL_CUBLAS_TRY(cublasSetMathMode(ctx->m_blas, CUBLAS_DEFAULT_MATH));
    QL_CUBLAS_TRY(cublasLtCreate(&ctx->m_blasLt));
    // cuBLAS recommends a 32 MiB workspace on Hopper; one for the context's stream.
    auto ws = DeviceMemory::allocate(32u << 20, &ctx->m_tracker, "the cuBLAS workspace");
    if (!ws) return ws.error();
    ctx->m_workspace = std::move(ws).value();
    QL_CUBLAS_TRY(
        cublasSetWorkspace(ctx->m_blas, ctx->m_workspace.data(), ctx->m_workspace.bytes()));
    return ctx;
}

CudaContext::~CudaContext()
{
    if (m_stream) cudaStreamSynchronize(m_stream);
    if (m_solver) {
        if (auto api = cusolverApi()) (*api)->destroy(m_solver);
    }
    if (m_blasLt) cublasLtDestroy(m_blasLt);
    if (m_blas) cublasDestroy(m_blas);
    m_workspace.release();
    if (m_stream) cudaStreamDestroy(m_stream);
}

DeviceInfo CudaContext::info() const
{
    return describeDevice(m_device);
}

Result<cusolverDnHandle_t> CudaContext::solver()
{
    if (m_solver) return m_solver;
    QL_CUDA_TRY(cudaSetDevice(m_device));
    auto api = cusolverApi();
    if (!api) return api.error();
    QL_CUSOLVER_TRY((*api)->create(&m_solver));
    QL_CUSOLVER_TRY((*api)->setStream(m_solver, m_stream));
    return m_solver;
}

Status CudaContext::activate() const
{
    QL_CUDA_TRY(cudaSetDevice(m_device));
    return {};
}

Status CudaContext::synchronize() const
{
    QL_CUDA_TRY(cudaStreamSynchronize(m_stream));
    return {};
}

Status CudaContext::copyToDevice(void* dst, const void* src, std::size_t bytes) const
{
    QL_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, m_stream));
    QL_CUDA_TRY(cudaStreamSynchronize(m_stream));
    return {};
}

Status CudaContext::copyToHost(void* dst, const void* src, std::size_t bytes) const
{
    QL_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, m_stream));
    QL_CUDA_TRY(cudaStreamSynchronize(m_stream));
    return {};
}

Status CudaContext::checkLaunch(const char* what)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return makeError(ErrorCode::Device,
                         std::string("launching ") + what + " failed: " + cudaGetErrorString(err));
    return {};
}

}  // namespace ql::cuda
