// CUDA error handling: every runtime call is checked and a failure becomes an ql::Error carrying
// the statement, file and line. Nothing here aborts: a GUI must survive a driver error.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "util/result.h"

namespace ql::cuda {

inline Error cudaError(cudaError_t err, const char* statement, const char* file, int line)
{
    ErrorCode code = err == cudaErrorMemoryAllocation ? ErrorCode::OutOfMemory : ErrorCode::Device;
    return makeError(code, std::string(cudaGetErrorString(err)) + " in `" + statement + "` at " +
                               file + ":" + std::to_string(line));
}

}  // namespace ql::cuda

#define QL_CUDA_TRY(stmt)                                                     \
    do {                                                                      \
        cudaError_t ql_err_ = (stmt);                                         \
        if (ql_err_ != cudaSuccess)                                           \
            return ::ql::cuda::cudaError(ql_err_, #stmt, __FILE__, __LINE__); \
    } while (0)
