// `quantlens-cli bench hessian` and `bench gptq` in a build without CUDA (app/CMakeLists.txt picks
// this file or cmd_bench_hessian.cpp): the benchmark needs the GPU kernels, so it says so.
#include "cli_common.h"

namespace qlcli {

int runBenchHessian(Args args)
{
    return fail("bench hessian needs the CUDA kernels, and this build of quantlens-cli has none");
}

int runBenchGptq(Args)
{
    return fail("bench gptq needs the CUDA kernels, and this build of quantlens-cli has none");
}

}  // namespace qlcli
