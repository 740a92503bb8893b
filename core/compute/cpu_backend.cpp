#include <thread>

#include "compute/backend.h"
#include "compute/runner.h"

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
    Result<std::unique_ptr<ModelRunner>> createRunner(const LlamaWeightsView&, Precision,
                                                      const RunnerOptions&) override
    {
        return makeError(ErrorCode::Unsupported,
                         "the CPU runs models through LlamaModel (createLlamaRunner), not from a "
                         "weights view");
    }
    Result<GptqResult> quantizeGptq(const float* w, std::int64_t rows, std::int64_t cols,
                                    std::span<const double> hessian, const QuantFormat& format,
                                    const GptqOptions& options, const float* importance,
                                    const ProgressFn& progress, const GptqMonitor& monitor) override
    {
        auto r = ql::quantizeGptq(w, rows, cols, hessian, format, options, importance, progress,
                                  monitor);
        if (r) r->note = "cpu";
        return r;
    }
};

}  // namespace

Result<GptqResult> Backend::quantizeGptqF32(const float* w, std::int64_t rows, std::int64_t cols,
                                            std::span<const float> hessian,
                                            const QuantFormat& format, const GptqOptions& options,
                                            const float* importance, const ProgressFn& progress,
                                            const GptqMonitor& monitor)
{
    std::vector<double> wide;
    try {
        wide.assign(hessian.begin(), hessian.end());
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory widening a Hessian for gptq");
    }
    return quantizeGptq(w, rows, cols, wide, format, options, importance, progress, monitor);
}

std::unique_ptr<Backend> createCpuBackend()
{
    return std::make_unique<CpuBackend>();
}

}  // namespace ql
