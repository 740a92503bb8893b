// Evaluation of a model on token windows: perplexity, and — when a reference model is given — the
// KL divergence of the evaluated model from the reference (mean, median, 99th percentile), the
// share of tokens whose top choice is unchanged, and the mean change in the probability of the
// correct token (Δp). Both models run on the same window in the same pass; only one window of
// reference log-probabilities is held in memory, nothing goes to disk.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "calib/dataset.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

// Anything that turns a token window into logits, one position at a time, in order.
class LogitsSource {
public:
    virtual ~LogitsSource() = default;
    using PositionFn = std::function<void(std::int32_t position, std::span<const float> logits)>;
    virtual Status forward(std::span<const TokenId> tokens, const PositionFn& onLogits,
                           const ProgressFn& progress) = 0;
    virtual std::int32_t vocabSize() const = 0;
};

struct KlStats {
    double mean = 0, median = 0, p90 = 0, p99 = 0, max = 0;
    double sameTop = 0;     // share of scored tokens whose argmax is unchanged
    double meanDeltaP = 0;  // mean of p_model(target) - p_reference(target)
};

struct EvalResult {
    double ppl = 0;
    double nll = 0;           // mean negative log-likelihood (nats per token)
    double pplStdError = 0;   // standard error of ppl (delta method), as llama.cpp prints
    std::int64_t tokens = 0;  // scored tokens
    std::int64_t windows = 0;
    double seconds = 0;
    double tokensPerSecond = 0;  // processed (not only scored) tokens per second
    std::optional<double> referencePpl;
    std::optional<KlStats> kl;
};

Result<EvalResult> evaluate(LogitsSource& model, const std::vector<TokenWindow>& windows,
                            LogitsSource* reference = nullptr, const ProgressFn& progress = {});

// log-softmax of one row, in double for the normaliser.
void logSoftmax(std::span<const float> logits, std::span<float> out);

}  // namespace ql
