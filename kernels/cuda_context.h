// One CUDA device in use: the stream every op of QuantLens runs on, the cuBLAS and cuBLASLt
// handles bound to it and cuBLAS's workspace. The backend owns one context; runners share it
// (std::shared_ptr), so a runner stays valid if the backend goes first. Not thread-safe: one job
// worker drives a context at a time, as ARCHITECTURE.md's thread model has it.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <memory>

#include "compute/backend.h"
#include "device_buffer.h"

namespace ql::cuda {

class CudaContext {
public:
    static Result<std::shared_ptr<CudaContext>> create(int deviceIndex);
    ~CudaContext();
    CudaContext(const CudaContext&) = delete;
    CudaContext& operator=(const CudaContext&) = delete;

    int deviceIndex() const { return m_device; }
    cudaStream_t stream() const { return m_stream; }
    cublasHandle_t blas() const { return m_blas; }
    cublasLtHandle_t blasLt() const { return m_blasLt; }
    // The cuSOLVER handle on the stream, created on first use (GPTQ's factorizations).
    Result<cusolverDnHandle_t> solver();
    DeviceInfo info() const;

    // Makes this context's device current on the calling thread.
    Status activate() const;
    // Waits for the stream; reports an error a kernel raised asynchronously.
    Status synchronize() const;
    // Copies on the context's stream that return once the copy is complete, so the host buffer
    // may change right after (plain cudaMemcpy from pageable memory runs on the legacy stream
    // and may return before its DMA lands, which a non-blocking stream does not wait for).
    Status copyToDevice(void* dst, const void* src, std::size_t bytes) const;
    Status copyToHost(void* dst, const void* src, std::size_t bytes) const;
    // After kernel launches: a launch error (bad configuration) as an ql::Error.
    static Status checkLaunch(const char* what);

private:
    CudaContext() = default;
    int m_device = 0;
    cudaStream_t m_stream = nullptr;
    cublasHandle_t m_blas = nullptr;
    cublasLtHandle_t m_blasLt = nullptr;
    cusolverDnHandle_t m_solver = nullptr;
    MemoryTracker m_tracker;  // the cuBLAS workspace
    DeviceMemory m_workspace;
};

DeviceInfo describeDevice(int index);

}  // namespace ql::cuda
