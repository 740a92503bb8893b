#include <thread>

#include "compute/backend.h"

namespace ql {
namespace {

class CpuBackend final : public Backend {
public:
    DeviceInfo device() const override
    {
        DeviceInfo info;
        unsigned threads = std::thread::hardware_concurrency();
        info.name = "CPU (" + std::to_string(threads ? threads : 1) + " threads)";
        return info;
    }
};

}  // namespace

std::unique_ptr<Backend> createCpuBackend()
{
    return std::make_unique<CpuBackend>();
}

}  // namespace ql
