// cuSOLVER, loaded on first use (dlopen) instead of linked: linking it maps libcusolver and its
// dependencies (cuSPARSE, nvJitLink) into every quantlens-cli process, about 30 MB of resident
// memory that `bench open`'s 200 MB budget has no room for, although only GPTQ factorizes. The
// functions keep cuSOLVER's own signatures (decltype of the header's declarations). GPTQ needs
// only the Cholesky factorization: the 64-bit API's Xpotrf takes the data type as an argument,
// so one entry point serves spotrf (CUDA_R_32F) and dpotrf (CUDA_R_64F).
#pragma once

#include <cusolverDn.h>

#include "util/result.h"

namespace ql::cuda {

struct CusolverApi {
    decltype(&cusolverDnCreate) create = nullptr;
    decltype(&cusolverDnDestroy) destroy = nullptr;
    decltype(&cusolverDnSetStream) setStream = nullptr;
    decltype(&cusolverDnCreateParams) createParams = nullptr;
    decltype(&cusolverDnDestroyParams) destroyParams = nullptr;
    decltype(&cusolverDnXpotrf_bufferSize) potrfBufferSize = nullptr;
    decltype(&cusolverDnXpotrf) potrf = nullptr;
};

// The library's functions (loaded once per process; thread-safe). Error: Unsupported, naming
// the library and where it was looked for.
Result<const CusolverApi*> cusolverApi();

}  // namespace ql::cuda
