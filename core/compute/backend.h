// The compute interface. Core defines what a backend must do; the CPU implementation lives in
// core, the CUDA one in kernels/. createBackend() (compute/factory.cpp, target ql_backend) is the
// only place that knows whether CUDA was built. Later issues add the forward-pass, statistics and
// GPTQ ops here; every op has a CPU reference that the CUDA one is tested against.
//
// A backend also makes model runners (compute/runner.h): createRunner() uploads a model's weights
// to the backend's device. The CPU backend has none of its own: the CPU runner wraps a
// LlamaModel (model/llama_runner.h, createLlamaRunner picks the one to use).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "quant/gptq.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct LlamaWeightsView;
class ModelRunner;
struct RunnerOptions;
enum class Precision;

struct DeviceInfo {
    std::string name;  // "CPU (2 threads)", "NVIDIA H100 80GB HBM3"
    bool isGpu = false;
    std::uint64_t totalMemory = 0;
    std::uint64_t freeMemory = 0;
    int computeCapability = 0;  // 90 for sm_90; 0 for CPU
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual DeviceInfo device() const = 0;
    // A runner holding `weights` on this backend's device (the view is read during the call
    // only). Unsupported where the backend has no runner of its own (the CPU).
    // With WeightResidency::Streamed (or Auto choosing it) the runner reads the view's host data
    // on every forward: it must then stay valid for the runner's lifetime.
    virtual Result<std::unique_ptr<ModelRunner>> createRunner(const LlamaWeightsView& weights,
                                                              Precision precision,
                                                              const RunnerOptions& options) = 0;
    // GPTQ of one matrix (quant/gptq.h: same arguments, same results, the same events to
    // `monitor`). The CPU backend runs quantizeGptq; the CUDA one runs the device path for the
    // formats it has (cuda::gptqDeviceSupports) and the CPU for the others, saying which in
    // GptqResult::note.
    virtual Result<GptqResult> quantizeGptq(const float* w, std::int64_t rows, std::int64_t cols,
                                            std::span<const double> hessian,
                                            const QuantFormat& format, const GptqOptions& options,
                                            const float* importance, const ProgressFn& progress,
                                            const GptqMonitor& monitor = {}) = 0;
    // The same with a float32 Hessian (a GPU calibration's accumulator as it is, so a
    // cols x cols matrix is not widened to double on the host and narrowed again on the device).
    // By default it is widened and handed to quantizeGptq.
    virtual Result<GptqResult> quantizeGptqF32(const float* w, std::int64_t rows, std::int64_t cols,
                                               std::span<const float> hessian,
                                               const QuantFormat& format,
                                               const GptqOptions& options, const float* importance,
                                               const ProgressFn& progress,
                                               const GptqMonitor& monitor = {});
};

enum class BackendKind { Auto, Cpu, Cuda };

std::unique_ptr<Backend> createCpuBackend();
// Auto picks CUDA when built and a device is present, else the CPU. Asking for Cuda where it is
// not available returns an error saying why.
Result<std::unique_ptr<Backend>> createBackend(BackendKind kind = BackendKind::Auto);
// The GPUs this build can use (empty when built without CUDA or no device is present).
std::vector<DeviceInfo> listGpus();
bool cudaBuilt();

}  // namespace ql
