// The --device and --precision options of the commands that run a model (eval, bench forward),
// and the runner they get: a CUDA runner on the GPU, else the CPU runner over LlamaModel.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cli_common.h"
#include "compute/backend.h"
#include "calib/dataset.h"
#include "compute/runner.h"
#include "layout/layout.h"
#include "model/llama.h"
#include "quant/gptq_sequential.h"

namespace qlcli {

struct DeviceOptions {
    ql::BackendKind kind = ql::BackendKind::Auto;
    ql::Precision precision = ql::Precision::Float32;
    bool precisionGiven = false;
    ql::RunnerOptions runner;  // --gpu-memory, --stream-weights
};

// Consumes --device cpu|cuda|auto, --precision f32|bf16, --gpu-memory SIZE (what a GPU runner
// may plan to use: 12GiB, 800MiB, bytes; more than that streams the weights block by block) and
// --stream-weights (stream even when the model fits) when the parser stands on one; returns false
// for any other argument.
bool parseDeviceOption(ArgParser& p, DeviceOptions& options);

// The backend the options ask for (auto: CUDA when a GPU is present, else the CPU).
ql::Result<std::unique_ptr<ql::Backend>> openBackend(const DeviceOptions& options);

// "NVIDIA H100 80GB HBM3, bf16" / "CPU (16 threads), f32"; ", weights streamed" when they are.
std::string describeRunner(const ql::ModelRunner& runner);

// True-sequential quantization (quant/gptq_sequential.h) where the options say: with a GPU, the
// windows' block passes on a GPU runner made from `llama` (bf16 unless --precision says
// otherwise) and GPTQ on the GPU (for the formats it has). A GPU failure other than a cancel or
// bad input is noted on stderr and the run repeated on the CPU with `llama` rebuilt from `model`.
// Afterwards `llama` holds the quantized weights. The device used goes to stderr as a note.
ql::Result<ql::SequentialQuantization> quantizeSequentialOn(
    DeviceOptions device, const ql::Model& model, ql::LlamaModel& llama,
    const std::vector<ql::TokenWindow>& windows, const ql::Layout& layout,
    const ql::ProgressFn& progress, ql::QuantizeOptions options);

// "12GiB", "800MiB", "1.5g", "4096" (bytes; K/M/G/T are powers of 1024); nullopt when malformed.
std::optional<std::uint64_t> parseByteSize(std::string_view text);

}  // namespace qlcli
