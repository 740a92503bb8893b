#include "cli_device.h"

#include <cctype>

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
    if (p.is("--gpu-memory")) {
        if (auto v = p.value()) {
            if (auto bytes = parseByteSize(*v); bytes && *bytes > 0)
                options.runner.memoryLimit = *bytes;
            else
                p.error("--gpu-memory takes a size such as 12GiB, 800MiB or a byte count, not '" +
                        *v + "'");
        }
        return true;
    }
    if (p.is("--stream-weights")) {
        options.runner.residency = ql::WeightResidency::Streamed;
        return true;
    }
    return false;
}

std::optional<std::uint64_t> parseByteSize(std::string_view text)
{
    std::size_t i = 0;
    double value = 0;
    bool digits = false;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i, digits = true)
        value = value * 10 + (text[i] - '0');
    if (i < text.size() && text[i] == '.') {
        double scale = 0.1;
        for (++i; i < text.size() && text[i] >= '0' && text[i] <= '9';
             ++i, scale /= 10, digits = true)
            value += (text[i] - '0') * scale;
    }
    if (!digits) return std::nullopt;
    std::string unit(text.substr(i));
    for (char& c : unit) c = char(std::tolower(static_cast<unsigned char>(c)));
    double factor = 1;
    if (unit.empty() || unit == "b")
        factor = 1;
    else if (unit == "k" || unit == "kib" || unit == "kb")
        factor = 1024.0;
    else if (unit == "m" || unit == "mib" || unit == "mb")
        factor = 1024.0 * 1024;
    else if (unit == "g" || unit == "gib" || unit == "gb")
        factor = 1024.0 * 1024 * 1024;
    else if (unit == "t" || unit == "tib" || unit == "tb")
        factor = 1024.0 * 1024 * 1024 * 1024;
    else
        return std::nullopt;
    return std::uint64_t(value * factor);
}

ql::Result<std::unique_ptr<ql::Backend>> openBackend(const DeviceOptions& options)
{
    return ql::createBackend(options.kind);
}

std::string describeRunner(const ql::ModelRunner& runner)
{
    return runner.device().name + ", " + ql::precisionName(runner.precision()) +
           (runner.streamsWeights() ? ", weights streamed block by block" : "");
}

}  // namespace qlcli
