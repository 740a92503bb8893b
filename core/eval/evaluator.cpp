#include "eval/evaluator.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace ql {

void logSoftmax(std::span<const float> logits, std::span<float> out)
{
    float mx = -INFINITY;
    for (float v : logits) mx = std::max(mx, v);
    double sum = 0;
    for (float v : logits) sum += std::exp(double(v) - mx);
    const double lse = mx + std::log(sum);
    for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<float>(logits[i] - lse);
}

namespace {

std::size_t argmax(std::span<const float> v)
{
    return static_cast<std::size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

double quantile(std::vector<float>& v, double q)
{
    if (v.empty()) return 0;
    std::size_t k =
        static_cast<std::size_t>(std::min<double>(v.size() - 1, q * (v.size() - 1) + 0.5));
    std::nth_element(v.begin(), v.begin() + k, v.end());
    return v[k];
}

}  // namespace

Result<EvalResult> evaluate(LogitsSource& model, const std::vector<TokenWindow>& windows,
                            LogitsSource* reference, const ProgressFn& progress)
{
    if (reference && reference->vocabSize() != model.vocabSize())
        return makeError(ErrorCode::InvalidArgument,
                         "the reference model has a different vocabulary");
    const std::int32_t vocab = model.vocabSize();
    const auto start = std::chrono::steady_clock::now();
    std::int64_t total = 0, processed = 0;
    for (const auto& w : windows) total += static_cast<std::int64_t>(w.tokens.size());

    EvalResult r;
    double nllSum = 0, nllSqSum = 0, refNllSum = 0, deltaPSum = 0;
    std::int64_t sameTop = 0;
    std::vector<float> klValues;
    std::vector<float> refLogProbs;  // one window: positions × vocab
    std::vector<float> lp(vocab);
    std::vector<std::int32_t> refTop;

    for (std::size_t wi = 0; wi < windows.size(); ++wi) {
        const TokenWindow& w = windows[wi];
        const std::int32_t n = static_cast<std::int32_t>(w.tokens.size());
        const std::int32_t first = std::max(0, w.scoreFrom - 1);
        const std::int32_t scored = std::max(0, n - 1 - first);
        auto sub = [&](double fraction) {
            return [&, fraction](double f, std::string_view what) {
                double done = (processed + f * n * fraction) / std::max<std::int64_t>(1, total);
                return reportProgress(progress, std::min(1.0, done), what);
            };
        };
        if (reference) {
            refLogProbs.assign(static_cast<std::size_t>(scored) * vocab, 0.0f);
            refTop.assign(scored, 0);
            QL_TRY_STATUS(reference->forward(
                w.tokens,
                [&](std::int32_t pos, std::span<const float> logits) {
                    if (pos < first || pos >= n - 1) return;
                    std::span<float> out(refLogProbs.data() + std::size_t(pos - first) * vocab,
                                         vocab);
                    logSoftmax(logits, out);
                    refTop[pos - first] = static_cast<std::int32_t>(argmax(logits));
                },
                sub(0.5)));
        }
        QL_TRY_STATUS(model.forward(
            w.tokens,
            [&](std::int32_t pos, std::span<const float> logits) {
                if (pos < first || pos >= n - 1) return;
                logSoftmax(logits, lp);
                const TokenId target = w.tokens[pos + 1];
                const double nll = -lp[target];
                nllSum += nll;
                nllSqSum += nll * nll;
                if (!reference) return;
                const float* ref = refLogProbs.data() + std::size_t(pos - first) * vocab;
                double kl = 0;
                for (std::int32_t v = 0; v < vocab; ++v) {
                    double p = std::exp(double(ref[v]));
                    kl += p * (double(ref[v]) - lp[v]);
                }
                klValues.push_back(static_cast<float>(std::max(0.0, kl)));
                refNllSum += -ref[target];
                deltaPSum += std::exp(double(lp[target])) - std::exp(double(ref[target]));
                sameTop += static_cast<std::int32_t>(argmax(lp)) == refTop[pos - first];
            },
            sub(reference ? 0.5 : 1.0)));
        r.tokens += scored;
        processed += n;
        if (!reportProgress(progress, double(processed) / std::max<std::int64_t>(1, total),
                            "evaluating"))
            return makeError(ErrorCode::Cancelled, "evaluation cancelled");
    }
    if (r.tokens == 0)
        return makeError(ErrorCode::InvalidArgument,
                         "no token was scored: the text is shorter than one window");
    r.windows = static_cast<std::int64_t>(windows.size());
    r.nll = nllSum / r.tokens;
    r.ppl = std::exp(r.nll);
    const double var = std::max(0.0, nllSqSum / r.tokens - r.nll * r.nll);
    r.pplStdError = r.ppl * std::sqrt(var / std::max<std::int64_t>(1, r.tokens - 1));
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    r.tokensPerSecond = r.seconds > 0 ? processed * (reference ? 2.0 : 1.0) / r.seconds : 0;
    if (reference) {
        KlStats k;
        double s = 0;
        for (float v : klValues) s += v;
        k.mean = s / klValues.size();
        k.max = *std::max_element(klValues.begin(), klValues.end());
        k.median = quantile(klValues, 0.5);
        k.p90 = quantile(klValues, 0.90);
        k.p99 = quantile(klValues, 0.99);
        k.sameTop = double(sameTop) / r.tokens;
        k.meanDeltaP = deltaPSum / r.tokens;
        r.kl = k;
        r.referencePpl = std::exp(refNllSum / r.tokens);
    }
    return r;
}

}  // namespace ql
