// CUDA error handling: every runtime and cuBLAS call is checked and a failure becomes an ql::Error
// carrying the statement, file and line. Nothing here aborts: a GUI must survive a driver error.
// An allocation failure (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED) is
// ErrorCode::OutOfMemory, everything else ErrorCode::Device. Host-only: .cpp files include it too.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <string>

#include "util/result.h"

namespace ql::cuda {

inline Error cudaError(cudaError_t err, const char* statement, const char* file, int line)
{
    ErrorCode code = err == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Device;
    return makeError(code, std::string(cudaGetErrorString(err)) + " in `" + statement + "` at " +
                               file + ":" + std::to_string(line));
}

inline Error cublasError(cublasStatus_t status, const char* statement, const char* file, int line)
{
    ErrorCode code =
        status == CUBLAS_STATUS_ALLOC_FAILED ? ErrorCode::OutOfMemory
        : status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_ARCH_MISMATCH
            ? ErrorCode::Unsupported
            : ErrorCode::Device;
    return makeError(code, std::string("cuBLAS: ") + cublasGetStatusString(status) + " in `" +
                               statement + "` at " + file + ":" + std::to_string(line));
}

inline Error cusolverError(cusolverStatus_t status, const char* statement, const char* file,
                           int line)
{
    ErrorCode code =
        status == CUSOLVER_STATUS_ALLOC_FAILED ? ErrorCode::OutOfMemory
        : status == CUSOLVER_STATUS_NOT_SUPPORTED || status == CUSOLVER_STATUS_ARCH_MISMATCH
            ? ErrorCode::Unsupported
            : ErrorCode::Device;
    return makeError(code, "cuSOLVER: status " + std::to_string(int(status)) + " in `" + statement +
                               "` at " + file + ":" + std::to_string(line));
}

}  // namespace ql::cuda

#define QL_CUDA_TRY(stmt)                                                     \
    do {                                                                      \
        cudaError_t ql_err_ = (stmt);                                         \
        if (ql_err_ != cudaSuccess)                                           \
            return ::ql::cuda::cudaError(ql_err_, #stmt, __FILE__, __LINE__); \
    } while (0)

#define QL_CUBLAS_TRY(stmt)                                                        \
    do {                                                                           \
        cublasStatus_t ql_status_ = (stmt);                                        \
        if (ql_status_ != CUBLAS_STATUS_SUCCESS)                                   \
            return ::ql::cuda::cublasError(ql_status_, #stmt, __FILE__, __LINE__); \
    } while (0)

#define QL_CUSOLVER_TRY(stmt)                                                        \
    do {                                                                             \
        cusolverStatus_t ql_status_ = (stmt);                                        \
        if (ql_status_ != CUSOLVER_STATUS_SUCCESS)                                   \
            return ::ql::cuda::cusolverError(ql_status_, #stmt, __FILE__, __LINE__); \
    } while (0)
