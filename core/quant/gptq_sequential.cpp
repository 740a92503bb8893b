#include "quant/gptq_sequential.h"

#include <array>
#include <chrono>
#include <optional>

#include "calib/calibrate.h"
#include "model/llama_runner.h"
#include "util/pause_gate.h"

namespace ql {
namespace {

// Adds the seconds of its lifetime to `total`.
struct AddSeconds {
    double& total;
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    ~AddSeconds()
    {
        total += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
};

// Sublayer group of a block tensor, in execution order; 4 for tensors no probe feeds (norms).
int groupOf(const TensorInfo& t)
{
    switch (t.role) {
        case TensorRole::AttnQ:
        case TensorRole::AttnK:
        case TensorRole::AttnV: return 0;
        case TensorRole::AttnOutput: return 1;
        case TensorRole::FfnGate:
        case TensorRole::FfnUp: return 2;
        case TensorRole::FfnDown: return 3;
        default: return 4;
    }
}

constexpr std::array<LinearGroup, 4> kGroups = {LinearGroup::AttnQkv, LinearGroup::AttnOutput,
                                                LinearGroup::FfnGateUp, LinearGroup::FfnDown};

// Copied byte for byte by quantizeTensor: nothing to calibrate.
bool keepsStorage(const TensorPlan& p, const TensorInfo& t)
{
    return (p.format.kind == QuantKind::Float || p.format.kind == QuantKind::Ggml) &&
           p.format.type == t.type;
}

}  // namespace

Result<SequentialQuantization> quantizeModelSequential(const Model& model, LlamaModel& llama,
                                                       const std::vector<TokenWindow>& windows,
                                                       const Layout& layout,
                                                       const ProgressFn& progress,
                                                       const QuantizeOptions& options)
{
    CpuLlamaRunner runner(llama);
    return quantizeModelSequential(model, llama, runner, windows, layout, progress, options);
}

Result<SequentialQuantization> quantizeModelSequential(const Model& model, LlamaModel& llama,
                                                       ModelRunner& runner,
                                                       const std::vector<TokenWindow>& windows,
                                                       const Layout& layout,
                                                       const ProgressFn& progress,
                                                       const QuantizeOptions& options)
{
    const auto start = std::chrono::steady_clock::now();
    auto plan = layout.resolve(model);
    if (!plan) return plan.error();
    QL_TRY_STATUS(checkMethodsAvailable(layout, *plan));
    if (usesAwq(*plan))
        return makeError(ErrorCode::Unsupported,
                         "awq is not done true-sequentially: calibrate first (a session) and "
                         "quantize with it");
    if (windows.empty()) return makeError(ErrorCode::InvalidArgument, "no calibration windows");
    std::int64_t totalTokens = 0, longest = 0;
    for (const auto& w : windows) {
        if (w.tokens.empty())
            return makeError(ErrorCode::InvalidArgument, "an empty calibration window");
        if (w.tokens.size() != windows.front().tokens.size())
            return makeError(ErrorCode::InvalidArgument,
                             "calibration windows of different lengths (" +
                                 std::to_string(windows.front().tokens.size()) + " and " +
                                 std::to_string(w.tokens.size()) + " tokens)");
        totalTokens += std::int64_t(w.tokens.size());
        longest = std::max<std::int64_t>(longest, std::int64_t(w.tokens.size()));
    }
    const int blocks = int(llama.config().blocks);

    // Plan entries by stage: outside the blocks first, then per block and sublayer group.
    std::vector<std::size_t> outside;
    std::vector<std::array<std::vector<std::size_t>, 5>> inBlock(static_cast<std::size_t>(blocks));
    for (std::size_t i = 0; i < plan->tensors.size(); ++i) {
        const TensorInfo* info = model.find(plan->tensors[i].name);
        if (!info)
            return makeError(ErrorCode::InvalidArgument,
                             "the model has no tensor " + plan->tensors[i].name);
        if (info->block >= 0 && info->block < blocks)
            inBlock[std::size_t(info->block)][std::size_t(groupOf(*info))].push_back(i);
        else
            outside.push_back(i);
    }

    SequentialQuantization out;
    out.model.layout = layout.toString();
    out.model.plan = *plan;
    out.model.tensors.resize(plan->tensors.size());
    CalibrationResult& calib = out.calibration;
    calib.config.samples = std::int32_t(windows.size());
    calib.config.seqLen = std::int32_t(longest);
    calib.tokens = totalTokens;
    const DeviceInfo device = runner.device();
    calib.device = device.name + " (true-sequential)";
    // The CPU probes as calibrate() does with --hessian f64; a GPU accumulates in float32 (what
    // its GPTQ reads).
    RunnerStatsOptions statsOptions;
    statsOptions.hessian = device.isGpu ? HessianPrecision::Float32 : HessianPrecision::Float64;
    statsOptions.histogramBins = 512;
    statsOptions.topK = 8;
    calib.config.hessian = statsOptions.hessian;

    // Progress in steps: the tensors outside the blocks, then per block four groups and the pass
    // that carries the windows on.
    const double steps = 1.0 + 5.0 * blocks;
    double step = 0;
    auto report = [&](double within, const std::string& what) {
        return reportProgress(progress, (step + std::clamp(within, 0.0, 1.0)) / steps, what);
    };
    auto cancelled = [] {
        return makeError(ErrorCode::Cancelled, "sequential quantization cancelled");
    };
    // Cancellation and the pause gate, between calibration windows.
    auto proceed = [&](double within, const std::string& what) {
        if (!report(within, what)) return false;
        return !options.pauseGate ||
               options.pauseGate->pass([&] { return report(within, "paused"); });
    };
    std::vector<bool> finished(plan->tensors.size(), false);

    if (options.gptqObserver) {
        GptqRunStart start;
        start.sequential = true;
        auto add = [&](const std::vector<std::size_t>& list) {
            for (std::size_t i : list) {
                const TensorPlan& p = plan->tensors[i];
                if (runsGptq(model, p))
                    start.layers.push_back({p.name, p.rows, p.cols, formatToString(p.format)});
            }
        };
        add(outside);
        for (const auto& groups : inBlock)
            for (int g : {4, 0, 1, 2, 3}) add(groups[std::size_t(g)]);
        options.gptqObserver->runStarted(start);
    }

    QuantizeOptions tensorOptions = options;
    tensorOptions.keepDecoded = true;  // the values that replace the weights
    auto quantizeOne = [&](std::size_t i, const CalibrationResult* calibration, double from,
                           double to) -> Status {
        const AddSeconds timed{out.quantizeSeconds};
        const TensorPlan& p = plan->tensors[i];
        ProgressFn inner = [&](double f, std::string_view) {
            return report(from + (to - from) * f, p.name);
        };
        auto t = quantizeTensor(model, p, calibration, tensorOptions, inner);
        if (!t) return t.error();
        if (!llama.weights().values(p.name).empty()) {
            QL_TRY_STATUS(llama.weights().replaceWeights(p.name, t->decoded));
            QL_TRY_STATUS(runner.replaceWeight(p.name, t->decoded));
        }
        t->decoded = {};
        out.model.tensors[i] = std::move(t).value();
        finished[i] = true;
        return {};
    };
    auto quantizeAll = [&](const std::vector<std::size_t>& list,
                           const CalibrationResult* calibration, double from, double to) -> Status {
        for (std::size_t k = 0; k < list.size(); ++k) {
            const double a = from + (to - from) * double(k) / double(list.size());
            const double b = from + (to - from) * double(k + 1) / double(list.size());
            QL_TRY_STATUS(quantizeOne(list[k], calibration, a, b));
        }
        return {};
    };

    auto run = [&]() -> Status {
        QL_TRY_STATUS(quantizeAll(outside, nullptr, 0.0, 1.0));
        step += 1;

        std::vector<std::int32_t> tokens;
        tokens.reserve(std::size_t(totalTokens));
        for (const auto& w : windows) tokens.insert(tokens.end(), w.tokens.begin(), w.tokens.end());
        {
            const AddSeconds timed{out.passSeconds};
            QL_TRY_STATUS(runner.beginBlocks(tokens, std::int64_t(windows.size())));
        }
        struct End {
            ModelRunner& r;
            ~End() { r.endBlocks(); }
        } end{runner};

        for (int b = 0; b < blocks; ++b) {
            const auto& groups = inBlock[std::size_t(b)];
            QL_TRY_STATUS(quantizeAll(groups[4], nullptr, 0.0, 0.0));
            for (int g = 0; g < 4; ++g, step += 1) {
                const auto& list = groups[std::size_t(g)];
                if (list.empty()) continue;
                bool encodes = false;
                for (std::size_t i : list)
                    encodes = encodes ||
                              !keepsStorage(plan->tensors[i], *model.find(plan->tensors[i].name));
                if (!encodes) {
                    QL_TRY_STATUS(quantizeAll(list, nullptr, 0.0, 1.0));
                    continue;
                }
                const ProbeSite site = probeSiteOf(kGroups[std::size_t(g)]);
                const std::string name = probeName(b, site);
                std::optional<AddSeconds> timed(std::in_place, out.passSeconds);
                auto stats =
                    runner.probeBlock(b, int(site), statsOptions, [&](double f, std::string_view) {
                        return proceed(0.5 * f, "calibrating " + name);
                    });
                timed.reset();
                if (!stats) {
                    if (stats.error().code == ErrorCode::Cancelled) return cancelled();
                    return stats.error();
                }
                CalibrationResult partial;
                ProbeStats ps;
                ps.name = name;
                ps.block = b;
                ps.site = site;
                ps.stats = std::move(stats).value();
                partial.probes.push_back(std::move(ps));
                QL_TRY_STATUS(quantizeAll(list, &partial, 0.5, 1.0));
                calib.probes.push_back(std::move(partial.probes.front()));
            }
            std::optional<AddSeconds> timed(std::in_place, out.passSeconds);
            const Status advanced = runner.advanceBlock(b, [&](double f, std::string_view) {
                return proceed(f, "block " + std::to_string(b) + " done");
            });
            timed.reset();
            if (!advanced) {
                if (advanced.error().code == ErrorCode::Cancelled) return cancelled();
                return advanced.error();
            }
            step += 1;
        }
        return {};
    };
    try {
        Status status = run();
        if (!status && status.error().code == ErrorCode::Cancelled && options.partialOnCancel) {
            QL_TRY_STATUS(completePartialModel(model, finished, out.model));
            out.model.seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            calib.seconds = out.model.seconds;
            return out;
        }
        if (!status) return status.error();
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory in sequential quantization (" +
                                                     std::to_string(windows.size()) +
                                                     " windows of up to " +
                                                     std::to_string(longest) + " tokens)");
    }
    out.peakDeviceBytes = runner.peakMemoryBytes();
    (void)reportProgress(progress, 1.0, "done");
    out.model.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    calib.seconds = out.model.seconds;
    return out;
}

}  // namespace ql
