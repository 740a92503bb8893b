#include "calib/calibrate.h"

#include <algorithm>
#include <chrono>
#include <map>

namespace ql {

ProbeSite probeSiteOf(LinearGroup group)
{
    switch (group) {
        case LinearGroup::AttnQkv: return ProbeSite::AttnQkv;
        case LinearGroup::AttnOutput: return ProbeSite::AttnOutput;
        case LinearGroup::FfnGateUp: return ProbeSite::FfnGateUp;
        case LinearGroup::FfnDown: return ProbeSite::FfnDown;
    }
    return ProbeSite::AttnQkv;
}

namespace {

class StatsProbe final : public ForwardProbe {
public:
    StatsProbe(const CalibrationConfig& config) : m_config(config) {}

    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        const auto key = std::make_pair(block, static_cast<int>(group));
        auto it = m_stats.find(key);
        if (it == m_stats.end())
            it = m_stats
                     .emplace(key,
                              ActivationStats(static_cast<std::int32_t>(x.cols()), m_config.hessian,
                                              m_config.histogramBins, m_config.topK))
                     .first;
        if (x.outerStride() == x.cols()) {
            it->second.add(std::span<const float>(x.data(), x.size()), x.rows(), m_sample);
        } else {
            MatrixXfRowMajor copy = x;
            it->second.add(std::span<const float>(copy.data(), copy.size()), copy.rows(), m_sample);
        }
    }

    void setSample(std::int32_t s) { m_sample = s; }
    std::map<std::pair<int, int>, ActivationStats>& stats() { return m_stats; }

private:
    const CalibrationConfig& m_config;
    std::int32_t m_sample = 0;
    std::map<std::pair<int, int>, ActivationStats> m_stats;  // (block, group) in model order
};

TopActivationContext contextOf(const Tokenizer& tok, const std::vector<TokenId>& window,
                               std::int32_t position)
{
    TopActivationContext c;
    if (position < 0 || position >= static_cast<std::int32_t>(window.size())) return c;
    const std::int32_t from = std::max(0, position - 8),
                       to = std::min<std::int32_t>(window.size(), position + 4);
    for (std::int32_t p = from; p < position; ++p)
        c.before += tok.decodeToken(p > 0 ? window[p - 1] : -1, window[p]);
    c.token = tok.piece(window[position]);
    for (std::int32_t p = position + 1; p < to; ++p)
        c.after += tok.decodeToken(window[p - 1], window[p]);
    return c;
}

// One probe of a result: its statistics and the text around its largest activations.
ProbeStats makeProbe(int block, ProbeSite site, ActivationStats stats, const Tokenizer& tokenizer,
                     const std::vector<TokenWindow>& windows)
{
    ProbeStats p;
    p.block = block;
    p.site = site;
    p.name = probeName(block, site);
    p.stats = std::move(stats);
    for (const auto& top : p.stats.top())
        p.topContext.push_back(
            top.sample >= 0 && std::size_t(top.sample) < windows.size()
                ? contextOf(tokenizer, windows[std::size_t(top.sample)].tokens, top.position)
                : TopActivationContext{});
    return p;
}

double secondsSince(std::chrono::steady_clock::time_point start)
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Result<CalibrationResult> calibrateWindows(const LlamaModel& model, const Tokenizer& tokenizer,
                                           const std::vector<TokenWindow>& windows,
                                           const CalibrationConfig& config,
                                           const ProgressFn& progress, const std::string& device)
{
    if (windows.empty()) return makeError(ErrorCode::InvalidArgument, "no calibration windows");
    const auto start = std::chrono::steady_clock::now();
    StatsProbe probe(config);
    CalibrationResult result;
    result.config = config;
    result.device = device;
    std::int64_t totalTokens = 0;
    for (const auto& w : windows) totalTokens += w.tokens.size();
    std::int64_t done = 0;
    for (std::size_t s = 0; s < windows.size(); ++s) {
        probe.setSample(static_cast<std::int32_t>(s));
        const auto& tokens = windows[s].tokens;
        auto sub = [&](double f, std::string_view) {
            double fraction = (done + f * tokens.size()) / double(totalTokens);
            double secs =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            std::string what = "calibrating: window " + std::to_string(s + 1) + "/" +
                               std::to_string(windows.size());
            if (secs > 0 && done > 0)
                what += ", " + std::to_string(static_cast<long long>(done / secs)) + " tokens/s";
            return reportProgress(progress, fraction, what);
        };
        // Logits are not needed: run the blocks only.
        auto hidden = model.embed(tokens);
        if (!hidden) return hidden.error();
        for (int b = 0; b < model.config().blocks; ++b) {
            QL_TRY_STATUS(model.runBlock(b, hidden.value(), &probe));
            if (!sub(double(b + 1) / model.config().blocks, {}))
                return makeError(ErrorCode::Cancelled, "calibration cancelled");
        }
        done += tokens.size();
    }
    result.tokens = done;
    for (auto& [key, stats] : probe.stats())
        result.probes.push_back(makeProbe(key.first,
                                          probeSiteOf(static_cast<LinearGroup>(key.second)),
                                          std::move(stats), tokenizer, windows));
    result.seconds = secondsSince(start);
    return result;
}

Result<CalibrationResult> calibrateWindows(ModelRunner& runner, const Tokenizer& tokenizer,
                                           const std::vector<TokenWindow>& windows,
                                           const CalibrationConfig& config,
                                           const ProgressFn& progress,
                                           const RunnerCalibrationOptions& options)
{
    if (windows.empty()) return makeError(ErrorCode::InvalidArgument, "no calibration windows");
    for (const auto& w : windows)
        if (w.tokens.empty())
            return makeError(ErrorCode::InvalidArgument, "an empty calibration window");
    const auto start = std::chrono::steady_clock::now();
    RunnerStatsOptions statsOptions;
    statsOptions.hessian = config.hessian;
    statsOptions.histogramBins = config.histogramBins;
    statsOptions.topK = config.topK;
    QL_TRY_STATUS(runner.enableStats(statsOptions));
    // Leaves the runner as it was found on every return path.
    struct Disable {
        ModelRunner& r;
        ~Disable() { r.disableStats(); }
    } disable{runner};

    CalibrationResult result;
    result.config = config;
    result.device = runner.device().name + ", " + precisionName(runner.precision());
    std::int64_t totalTokens = 0;
    for (const auto& w : windows) totalTokens += std::int64_t(w.tokens.size());
    std::int64_t done = 0;
    std::vector<TokenId> batchTokens;
    for (std::size_t first = 0; first < windows.size();) {
        // The next batch: consecutive windows of the first one's length, within the budget.
        const std::size_t length = windows[first].tokens.size();
        // A runner that streams its weights uploads the whole model on every forward: give it
        // every window at once (it runs them through each block in chunks of its own).
        const std::size_t limit =
            options.batch > 0 ? std::size_t(options.batch)
            : runner.streamsWeights()
                ? windows.size()
                : std::max<std::size_t>(
                      1, std::size_t(std::max<std::int64_t>(options.batchTokens, 1)) / length);
        std::size_t end = first + 1;
        while (end < windows.size() && end - first < limit && windows[end].tokens.size() == length)
            ++end;
        const auto count = std::int64_t(end - first);
        batchTokens.clear();
        for (std::size_t i = first; i < end; ++i)
            batchTokens.insert(batchTokens.end(), windows[i].tokens.begin(),
                               windows[i].tokens.end());
        auto sub = [&](double f, std::string_view) {
            const double fraction =
                (double(done) + f * double(batchTokens.size())) / double(totalTokens);
            const double secs = secondsSince(start);
            std::string what = "calibrating: windows " + std::to_string(first + 1) + "-" +
                               std::to_string(end) + "/" + std::to_string(windows.size());
            if (secs > 0 && done > 0)
                what += ", " + std::to_string(static_cast<long long>(double(done) / secs)) +
                        " tokens/s";
            return reportProgress(progress, fraction, what);
        };
        auto st = runner.forward(batchTokens, count, {}, sub, static_cast<std::int32_t>(first));
        if (!st) {
            if (st.error().code == ErrorCode::Cancelled)
                return makeError(ErrorCode::Cancelled, "calibration cancelled");
            return st.error();
        }
        done += std::int64_t(batchTokens.size());
        first = end;
    }
    auto stats = runner.takeStats();
    if (!stats) return stats.error();
    const std::int64_t blocks = runner.shape().blocks;
    if (std::int64_t(stats->size()) != blocks * 4)
        return makeError(ErrorCode::InvalidArgument,
                         "the runner returned " + std::to_string(stats->size()) +
                             " probes, expected " + std::to_string(blocks * 4));
    result.tokens = done;
    result.probes.reserve(stats->size());
    for (std::size_t i = 0; i < stats->size(); ++i)
        result.probes.push_back(makeProbe(int(i / 4), probeSiteOf(static_cast<LinearGroup>(i % 4)),
                                          std::move((*stats)[i]), tokenizer, windows));
    result.seconds = secondsSince(start);
    return result;
}

Result<std::vector<TokenWindow>> calibrationWindows(const Tokenizer& tokenizer,
                                                    const CalibrationConfig& config)
{
    std::vector<std::string> texts;
    for (const auto& f : config.textFiles) {
        auto t = readTextFile(f);
        if (!t) return t.error();
        texts.push_back(std::move(t).value());
    }
    WindowOptions wo;
    wo.samples = config.samples;
    wo.seqLen = config.seqLen;
    wo.seed = config.seed;
    wo.consecutive = config.consecutive;
    wo.addBos = tokenizer.addBosByDefault();
    return makeCalibrationWindows(tokenizer, texts, wo);
}

Result<CalibrationResult> calibrate(const LlamaModel& model, const Tokenizer& tokenizer,
                                    const CalibrationConfig& config, const ProgressFn& progress,
                                    const std::string& device)
{
    auto windows = calibrationWindows(tokenizer, config);
    if (!windows) return windows.error();
    return calibrateWindows(model, tokenizer, *windows, config, progress, device);
}

Result<CalibrationResult> calibrate(ModelRunner& runner, const Tokenizer& tokenizer,
                                    const CalibrationConfig& config, const ProgressFn& progress,
                                    const RunnerCalibrationOptions& options)
{
    auto windows = calibrationWindows(tokenizer, config);
    if (!windows) return windows.error();
    return calibrateWindows(runner, tokenizer, *windows, config, progress, options);
}

}  // namespace ql
