// Calibration driver: runs token windows through a LlamaModel with a probe at the input of every
// linear layer and gathers ActivationStats per probe point, then resolves the token text around
// each probe's largest activations (massive activations) so the GUI can show what produced them.
//
// The same driver runs on a ModelRunner (compute/runner.h; the GPU's when there is one): windows
// go through in batches with the runner's statistics enabled, and the result is built exactly as
// the LlamaModel path builds it. The LlamaModel path stays the reference.
#pragma once

#include <string>
#include <vector>

#include "calib/calibration.h"
#include "calib/dataset.h"
#include "compute/runner.h"
#include "eval/evaluator.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

// Reads the config's text files, makes the windows and calibrates. `device` is recorded.
Result<CalibrationResult> calibrate(const LlamaModel& model, const Tokenizer& tokenizer,
                                    const CalibrationConfig& config,
                                    const ProgressFn& progress = {},
                                    const std::string& device = "CPU");

// Calibrates on windows already made.
Result<CalibrationResult> calibrateWindows(const LlamaModel& model, const Tokenizer& tokenizer,
                                           const std::vector<TokenWindow>& windows,
                                           const CalibrationConfig& config,
                                           const ProgressFn& progress = {},
                                           const std::string& device = "CPU");

// The windows the config describes: its text files read and cut as makeCalibrationWindows does.
Result<std::vector<TokenWindow>> calibrationWindows(const Tokenizer& tokenizer,
                                                    const CalibrationConfig& config);

struct RunnerCalibrationOptions {
    std::int32_t batch = 0;            // windows per forward pass; 0: as many as fit batchTokens
    std::int64_t batchTokens = 16384;  // (at least one window)
};

// Calibrates on `runner`: windows of equal length run `batch` at a time (window i is sample i),
// then the runner's statistics become the probes. The recorded device is the runner's, with its
// precision ("NVIDIA H100 80GB HBM3, f32"). Statistics are disabled again on return.
Result<CalibrationResult> calibrateWindows(ModelRunner& runner, const Tokenizer& tokenizer,
                                           const std::vector<TokenWindow>& windows,
                                           const CalibrationConfig& config,
                                           const ProgressFn& progress = {},
                                           const RunnerCalibrationOptions& options = {});
Result<CalibrationResult> calibrate(ModelRunner& runner, const Tokenizer& tokenizer,
                                    const CalibrationConfig& config,
                                    const ProgressFn& progress = {},
                                    const RunnerCalibrationOptions& options = {});

ProbeSite probeSiteOf(LinearGroup group);

// The evaluator's view of a LlamaModel.
class LlamaLogitsSource : public LogitsSource {
public:
    explicit LlamaLogitsSource(const LlamaModel& model) : m_model(model) {}
    Status forward(std::span<const TokenId> tokens, const PositionFn& onLogits,
                   const ProgressFn& progress) override
    {
        return m_model.forward(tokens, onLogits, progress);
    }
    std::int32_t vocabSize() const override
    {
        return static_cast<std::int32_t>(m_model.config().vocab);
    }

private:
    const LlamaModel& m_model;
};

}  // namespace ql
