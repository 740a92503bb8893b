// Calibration driver: runs token windows through a LlamaModel with a probe at the input of every
// linear layer and gathers ActivationStats per probe point, then resolves the token text around
// each probe's largest activations (massive activations) so the GUI can show what produced them.
#pragma once

#include <string>
#include <vector>

#include "calib/calibration.h"
#include "calib/dataset.h"
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
