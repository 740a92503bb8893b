#include "cli_device.h"

#include <cctype>
#include <cstdio>

#include "model/llama_runner.h"

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

ql::Result<ql::SequentialQuantization> quantizeSequentialOn(
    DeviceOptions device, const ql::Model& model, ql::LlamaModel& llama,
    const std::vector<ql::TokenWindow>& windows, const ql::Layout& layout,
    const ql::ProgressFn& progress, ql::QuantizeOptions options)
{
    auto backend = openBackend(device);
    if (!backend) return backend.error();
    if (!(*backend)->device().isGpu) {
        if (device.precision != ql::Precision::Float32)
            return ql::makeError(ql::ErrorCode::InvalidArgument,
                                 std::string("--precision ") + ql::precisionName(device.precision) +
                                     " needs a CUDA GPU; the CPU runs f32");
        return ql::quantizeModelSequential(model, llama, windows, layout, progress, options);
    }
    if (!device.precisionGiven) device.precision = ql::Precision::BFloat16;
    std::string failure;
    {  // the runner and its device memory go before a CPU run
        auto runner = ql::createLlamaRunner(**backend, llama, device.precision, device.runner);
        if (!runner) {
            failure = "could not load the model onto " + (*backend)->device().name + ": " +
                      runner.error().message;
        } else {
            std::fprintf(stderr, "note: true-sequential quantization on %s\n",
                         describeRunner(**runner).c_str());
            options.backend = backend->get();
            auto q = ql::quantizeModelSequential(model, llama, **runner, windows, layout, progress,
                                                 options);
            if (q || q.error().code == ql::ErrorCode::Cancelled ||
                q.error().code == ql::ErrorCode::InvalidArgument)
                return q;
            failure =
                "quantization on " + (*runner)->device().name + " failed: " + q.error().message;
        }
    }
    std::fprintf(stderr, "\nnote: %s\nnote: quantizing on the CPU instead\n", failure.c_str());
    auto fresh = ql::LlamaModel::create(model);  // the GPU run changed some of its weights
    if (!fresh) return fresh.error();
    llama = std::move(fresh).value();
    options.backend = nullptr;
    return ql::quantizeModelSequential(model, llama, windows, layout, progress, options);
}

std::string describeRunner(const ql::ModelRunner& runner)
{
    return runner.device().name + ", " + ql::precisionName(runner.precision()) +
           (runner.streamsWeights() ? ", weights streamed block by block" : "");
}

}  // namespace qlcli
