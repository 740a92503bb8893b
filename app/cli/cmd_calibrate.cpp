// quantlens-cli calibrate: run calibration text through the model and save the activation
// statistics (per-channel abs-max, mean |x|, mean x², histograms, top activations, Hessians) to
// an HDF5 session, written atomically. On a GPU the windows run in batches through the CUDA
// runner; should the GPU fail (out of memory, a driver error) the run starts again on the CPU
// reference path with a note, and the session is only written once a run has finished.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>

#include "calib/calibrate.h"
#include "cli_common.h"
#include "cli_device.h"
#include "compute/backend.h"
#include "io/model_loader.h"
#include "model/llama_runner.h"
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
  --device D          cpu, cuda or auto (default: cuda when a GPU is present, else cpu); a GPU
                      failure (e.g. out of memory) falls back to the CPU with a note
  --precision P       f32 (default: matches the CPU to rounding) or bf16 (GPU only: bf16
                      weights and activations, faster)
  --batch N           windows per forward pass on the GPU (default: as many as make 16384
                      tokens; all of them when the weights stream)
  --gpu-memory SIZE   GPU memory the run may plan for (12GiB, 800MiB, bytes; default: what
                      is free); a model that does not fit streams block by block
  --stream-weights    keep the weights on the host and stream them block by block
)";

int runCalibrate(Args args)
{
    ArgParser p(args);
    std::string modelPath, outPath;
    ql::CalibrationConfig config;
    std::int64_t rangeBits = 0;
    DeviceOptions device;
    ql::RunnerCalibrationOptions batching;
    while (p.next()) {
        if (parseDeviceOption(p, device)) {
        } else if (!p.isOption()) {
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
        } else if (p.is("--batch")) {
            if (auto v = p.integer(1, 1 << 20)) batching.batch = static_cast<std::int32_t>(*v);
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
    auto backend = openBackend(device);
    if (!backend) return fail(backend.error().message);
    const bool gpu = (*backend)->device().isGpu;
    if (!gpu && device.precision != ql::Precision::Float32)
        return fail(std::string("--precision ") + ql::precisionName(device.precision) +
                    " needs a CUDA GPU; the CPU calibrates in f32");
    installInterruptHandler();

    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    auto tokenizer = ql::Tokenizer::create(*model);
    if (!tokenizer) return fail(tokenizer.error().message);
    auto windows = ql::calibrationWindows(**tokenizer, config);
    if (!windows) return fail(windows.error().message);
    ProgressLine progress;
    auto llama = ql::LlamaModel::create(*model, {}, progress.part(0, 0.05));
    if (!llama) return fail(llama.error().message);
    auto last = std::chrono::steady_clock::now();
    const bool tty = progress.enabled();
    auto inner = progress.part(0.05, 0.95);
    auto report = [&](double f, std::string_view what) {
        if (!tty && secondsSince(last) > 5.0) {
            last = std::chrono::steady_clock::now();
            std::fprintf(stderr, "%.*s (%.0f%%)\n", int(what.size()), what.data(), 100 * f);
        }
        return inner(f, what);
    };

    std::optional<ql::CalibrationResult> calibrated;
    if (gpu) {
        std::string failure;
        {  // the runner and its GPU memory go before any CPU run
            auto runner = ql::createLlamaRunner(**backend, *llama, device.precision, device.runner);
            if (!runner) {
                failure = "could not load the model onto " + (*backend)->device().name + ": " +
                          runner.error().message;
            } else {
                auto r =
                    ql::calibrateWindows(**runner, **tokenizer, *windows, config, report, batching);
                if (r)
                    calibrated = std::move(r).value();
                else if (r.error().code == ql::ErrorCode::Cancelled)
                    return fail(r.error().message);
                else
                    failure = "calibration on " + (*runner)->device().name +
                              " failed: " + r.error().message;
            }
        }
        if (!calibrated) {
            progress.finish();
            std::fprintf(stderr, "note: %s\nnote: calibrating on the CPU instead\n",
                         failure.c_str());
        }
    }
    if (!calibrated) {
        auto r = ql::calibrateWindows(*llama, **tokenizer, *windows, config, report,
                                      ql::createCpuBackend()->device().name);
        if (!r) return fail(r.error().message);
        calibrated = std::move(r).value();
    }
    auto identity = ql::identifyModel(*model, progress.part(0.95, 0.98));
    if (!identity) return fail(identity.error().message);
    ql::SessionData session{*identity, std::move(*calibrated)};
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
