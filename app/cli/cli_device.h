// The --device and --precision options of the commands that run a model (eval, bench forward),
// and the runner they get: a CUDA runner on the GPU, else the CPU runner over LlamaModel.
#pragma once

#include <memory>
#include <string>

#include "cli_common.h"
#include "compute/backend.h"
#include "compute/runner.h"
#include "model/llama.h"

namespace qlcli {

struct DeviceOptions {
    ql::BackendKind kind = ql::BackendKind::Auto;
    ql::Precision precision = ql::Precision::Float32;
    bool precisionGiven = false;
};

// Consumes --device cpu|cuda|auto and --precision f32|bf16 when the parser stands on one;
// returns false for any other argument.
bool parseDeviceOption(ArgParser& p, DeviceOptions& options);

// The backend the options ask for (auto: CUDA when a GPU is present, else the CPU).
ql::Result<std::unique_ptr<ql::Backend>> openBackend(const DeviceOptions& options);

// "NVIDIA H100 80GB HBM3, bf16" / "CPU (16 threads), f32".
std::string describeRunner(const ql::ModelRunner& runner);

}  // namespace qlcli
