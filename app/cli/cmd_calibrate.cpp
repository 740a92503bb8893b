// quantlens-cli calibrate: run calibration text through the model and save the activation
// statistics (per-channel abs-max, mean |x|, mean x², histograms, top activations, Hessians) to
// an HDF5 session, written atomically.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "calib/calibrate.h"
#include "cli_common.h"
#include "compute/backend.h"
#include "io/model_loader.h"
#include "session/session.h"

namespace qlcli {

const std::string_view kCalibrateHelp =
    R"(usage: quantlens-cli calibrate MODEL --text FILE... --out SESSION.h5 [options]

Runs calibration windows through MODEL and stores, for the input of every linear layer (q/k/v
share one, gate/up share one): per-channel abs-max, mean |x| and mean x^2, a histogram, the
largest activations with the tokens around them, and the Hessian X^T X for GPTQ.

options:
  --text FILE         calibration text; repeat for several files
  --samples N         windows (default 128)
  --seqlen L          tokens per window, BOS included (default 512)
  --seed S            seed of the random window offsets (default 0)
  --consecutive       consecutive windows from the start instead of random ones
  --hessian P         none | f32 | f64 (default f32)
  --top-k K           largest activations kept per probe (default 32)
  --ranges BITS       also print each probe's activation ranges at BITS (min-max, percentile,
                      MSE, entropy) with their errors
)";

int runCalibrate(Args args)
{
    ArgParser p(args);
    std::string modelPath, outPath;
    ql::CalibrationConfig config;
    std::int64_t rangeBits = 0;
    while (p.next()) {
        if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--text")) {
            if (auto v = p.value()) config.textFiles.push_back(*v);
        } else if (p.is("--samples")) {
            if (auto v = p.integer(1, 1 << 20)) config.samples = static_cast<std::int32_t>(*v);
        } else if (p.is("--seqlen")) {
            if (auto v = p.integer(2, 1 << 20)) config.seqLen = static_cast<std::int32_t>(*v);
        } else if (p.is("--seed")) {
            if (auto v = p.integer(0, INT64_MAX)) config.seed = static_cast<std::uint64_t>(*v);
        } else if (p.is("--consecutive")) {
            config.consecutive = true;
        } else if (p.is("--top-k")) {
            if (auto v = p.integer(0, 4096)) config.topK = static_cast<std::int32_t>(*v);
        } else if (p.is("--ranges")) {
            if (auto v = p.integer(2, 16)) rangeBits = *v;
        } else if (p.is("--hessian")) {
            auto v = p.value();
            if (v && *v == "none")
                config.hessian = ql::HessianPrecision::None;
            else if (v && *v == "f32")
                config.hessian = ql::HessianPrecision::Float32;
            else if (v && *v == "f64")
                config.hessian = ql::HessianPrecision::Float64;
            else if (v)
                p.error("--hessian takes none, f32 or f64");
        } else if (p.is("--out")) {
            if (auto v = p.value()) outPath = *v;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "calibrate");
    if (modelPath.empty()) return usageError("calibrate needs a MODEL", "calibrate");
    if (config.textFiles.empty()) return usageError("calibrate needs --text FILE", "calibrate");
    if (outPath.empty()) return usageError("calibrate needs --out SESSION.h5", "calibrate");
    installInterruptHandler();

    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    auto tokenizer = ql::Tokenizer::create(*model);
    if (!tokenizer) return fail(tokenizer.error().message);
    ProgressLine progress;
    auto llama = ql::LlamaModel::create(*model, {}, progress.part(0, 0.05));
    if (!llama) return fail(llama.error().message);
    // The CPU path runs the forward pass here; the CUDA path comes with the GPU backend.
    const std::string device = ql::createCpuBackend()->device().name;
    const auto start = std::chrono::steady_clock::now();
    auto last = start;
    const bool tty = progress.enabled();
    auto inner = progress.part(0.05, 0.95);
    auto result = ql::calibrate(
        *llama, **tokenizer, config,
        [&](double f, std::string_view what) {
            if (!tty && secondsSince(last) > 5.0) {
                last = std::chrono::steady_clock::now();
                std::fprintf(stderr, "%.*s (%.0f%%)\n", int(what.size()), what.data(), 100 * f);
            }
            return inner(f, what);
        },
        device);
    if (!result) return fail(result.error().message);
    auto identity = ql::identifyModel(*model, progress.part(0.95, 0.98));
    if (!identity) return fail(identity.error().message);
    ql::SessionData session{*identity, std::move(result).value()};
    auto written = ql::writeSession(outPath, session, progress.part(0.98, 1.0));
    progress.finish();
    if (!written) return fail(written.error().message);

    const ql::CalibrationResult& c = *session.calibration;
    std::printf("calibrated  %s on %zu file(s): %lld tokens in %.1f s (%.0f tokens/s, %s)\n",
                modelPath.c_str(), config.textFiles.size(), (long long)c.tokens, c.seconds,
                c.seconds > 0 ? c.tokens / c.seconds : 0.0, c.device.c_str());
    std::printf("%-22s %8s %12s %12s %12s  %s\n", "probe", "channels", "abs-max", "mean |x|",
                "top |x|", "top token");
    for (const auto& probe : c.probes) {
        const auto& s = probe.stats;
        float mx = 0;
        for (float v : s.channelAbsMax()) mx = std::max(mx, v);
        double meanAbs = 0;
        for (double v : s.channelMeanAbs()) meanAbs += v;
        meanAbs /= std::max(1, s.channels());
        std::string token = probe.topContext.empty() ? "" : probe.topContext.front().token;
        std::printf("%-22s %8d %12s %12s %12s  %s\n", probe.name.c_str(), s.channels(),
                    formatNumber(mx).c_str(), formatNumber(meanAbs).c_str(),
                    s.top().empty() ? "-" : formatNumber(std::fabs(s.top().front().value)).c_str(),
                    token.c_str());
        if (rangeBits > 0)
            for (const auto& r :
                 ql::computeActivationRanges(s.histogram(), static_cast<int>(rangeBits)))
                std::printf("    %-18s clip %10s  mse %10s  clipped %.4f%%\n",
                            ql::rangeMethodName(r.method), formatNumber(r.clip).c_str(),
                            formatNumber(r.mse).c_str(), 100 * r.clippedShare);
    }
    std::printf("session     %s\n", outPath.c_str());
    return kExitOk;
}

}  // namespace qlcli
