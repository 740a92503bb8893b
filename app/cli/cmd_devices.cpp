// quantlens-cli devices: the compute devices this build can use, and the one a job would get.
#include <cstdio>

#include "cli_common.h"
#include "compute/backend.h"

namespace qlcli {

int runDevices(Args args)
{
    if (!args.empty()) return usageError("devices takes no arguments", "devices");
    std::printf("CUDA support built: %s\n", ql::cudaBuilt() ? "yes" : "no");
    const auto gpus = ql::listGpus();
    for (std::size_t i = 0; i < gpus.size(); ++i)
        std::printf("GPU %zu: %s, sm_%d, %s total, %s free\n", i, gpus[i].name.c_str(),
                    gpus[i].computeCapability, formatBytes(gpus[i].totalMemory).c_str(),
                    formatBytes(gpus[i].freeMemory).c_str());
    auto backend = ql::createBackend(ql::BackendKind::Auto);
    if (!backend) return fail(backend.error().message);
    std::printf("jobs run on: %s\n", (*backend)->device().name.c_str());
    return kExitOk;
}

}  // namespace qlcli
