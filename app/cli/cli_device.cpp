#include "cli_device.h"

namespace qlcli {

bool parseDeviceOption(ArgParser& p, DeviceOptions& options)
{
    if (p.is("--device")) {
        if (auto v = p.value()) {
            if (*v == "cpu")
                options.kind = ql::BackendKind::Cpu;
            else if (*v == "cuda" || *v == "gpu")
                options.kind = ql::BackendKind::Cuda;
            else if (*v == "auto")
                options.kind = ql::BackendKind::Auto;
            else
                p.error("--device is cpu, cuda or auto, not '" + *v + "'");
        }
        return true;
    }
    if (p.is("--precision")) {
        if (auto v = p.value()) {
            if (auto precision = ql::parsePrecision(*v)) {
                options.precision = *precision;
                options.precisionGiven = true;
            } else {
                p.error("--precision is f32 or bf16, not '" + *v + "'");
            }
        }
        return true;
    }
    return false;
}

ql::Result<std::unique_ptr<ql::Backend>> openBackend(const DeviceOptions& options)
{
    return ql::createBackend(options.kind);
}

std::string describeRunner(const ql::ModelRunner& runner)
{
    return runner.device().name + ", " + ql::precisionName(runner.precision());
}

}  // namespace qlcli
