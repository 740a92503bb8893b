// `quantlens-cli bench forward`: throughput of whole causal forward passes of a model on the
// device a job would use (a ModelRunner; the GPU when there is one). Random token ids (seeded),
// `--batch` sequences of `--seqlen` tokens per pass, logits computed for every position but not
// copied back (as a training or prefill step would leave them on the device). One warm-up pass,
// then `--repeat` timed ones; each forward returns when the device is done, so wall-clock time is
// device time. FLOPs are the model's: 2 per weight per token for every linear layer and the head,
// plus causal attention's Q·Kᵀ and P·V over the visible keys only (4·D·T(T+1)/2 per head).
//
// `quantlens-cli bench calibrate`: what collecting the calibration statistics costs. The same
// random windows (`--samples` of `--seqlen` tokens, `--batch` per forward) run twice through the
// runner: with the statistics off (plain forwards), then on (per-channel abs-max, mean |x|,
// mean x², histogram, top-k and the Hessian XᵀX of every linear-layer input), the timed run
// ending with takeStats (the download of every probe's statistics). Each run follows an untimed
// warm-up batch in the same mode. tests/bench/hf_calibrate.py measures PyTorch hooks the same way.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "cli_device.h"
#include "calib/calibration.h"
#include "io/model_loader.h"
#include "model/llama_runner.h"

namespace qlcli {

namespace {

const std::string_view kBenchForwardHelp =
    "usage: quantlens-cli bench forward MODEL [--seqlen N] [--batch N] [--repeat N]\n"
    "                                         [--device cpu|cuda|auto] [--precision f32|bf16]\n"
    "                                         [--gpu-memory SIZE] [--stream-weights] [--json]\n\n"
    "Times whole causal forward passes (all positions' logits computed, none copied back) and\n"
    "prints tokens/s, model TFLOP/s and the peak device memory. Defaults: --seqlen 2048,\n"
    "--batch 1, --repeat 5 (1 on the CPU), bf16 on a GPU and f32 on the CPU.\n";

double forwardFlops(const ql::LlamaShape& s, std::int64_t batch, std::int64_t seqLen)
{
    const double q = double(s.heads * s.headDim), kv = double(s.kvHeads * s.headDim);
    const double dim = double(s.dim), ffn = double(s.ffnDim);
    const double perToken =
        2.0 * double(s.blocks) * (dim * (q + 2 * kv) + q * dim + 3 * dim * ffn) +
        2.0 * dim * double(s.vocab);
    const double T = double(seqLen);
    const double attention =
        4.0 * double(s.headDim) * T * (T + 1) / 2 * double(s.heads) * double(s.blocks);
    return double(batch) * (T * perToken + attention);
}

const std::string_view kBenchCalibrateHelp =
    "usage: quantlens-cli bench calibrate MODEL [--seqlen N] [--samples N] [--batch N]\n"
    "                                           [--hessian none|f32|f64]\n"
    "                                           [--device cpu|cuda|auto] [--precision f32|bf16]\n"
    "                                           [--gpu-memory SIZE] [--stream-weights] [--json]\n\n"
    "Runs --samples random windows of --seqlen tokens, --batch per forward pass, with the\n"
    "calibration statistics off and on (abs-max, mean |x|, mean x^2, 2048-bin histogram,\n"
    "top-32 and the Hessian), and prints tokens/s of each, the overhead of the statistics and\n"
    "the peak device memory. Defaults: --seqlen 2048, --samples 32, --batch: as many windows as\n"
    "make 16384 tokens, --hessian f32, bf16 on a GPU and f32 on the CPU.\n";

// A model opened and handed to a runner on the device the options pick.
struct BenchRunner {
    std::unique_ptr<ql::Backend> backend;
    std::unique_ptr<ql::LlamaModel> llama;  // the CPU runner reads it: a stable address
    std::unique_ptr<ql::ModelRunner> runner;
    double loadSeconds = 0, uploadSeconds = 0;
};

ql::Result<BenchRunner> openBenchRunner(const std::string& path, DeviceOptions& device,
                                        ProgressLine& progress)
{
    BenchRunner b;
    auto backend = openBackend(device);
    if (!backend) return backend.error();
    b.backend = std::move(backend).value();
    if (!device.precisionGiven)
        device.precision =
            b.backend->device().isGpu ? ql::Precision::BFloat16 : ql::Precision::Float32;
    const auto loadStart = std::chrono::steady_clock::now();
    auto model = ql::openModel(path);
    if (!model) return model.error();
    auto llama = ql::LlamaModel::create(*model, {}, progress.part(0.0, 0.3));
    if (!llama) return llama.error();
    b.llama = std::make_unique<ql::LlamaModel>(std::move(llama).value());
    b.loadSeconds = secondsSince(loadStart);
    const auto uploadStart = std::chrono::steady_clock::now();
    auto runner = ql::createLlamaRunner(*b.backend, *b.llama, device.precision, device.runner);
    if (!runner) return runner.error();
    b.runner = std::move(runner).value();
    b.uploadSeconds = secondsSince(uploadStart);
    // The weights are on the device now, unless the runner streams them from this copy.
    if (b.backend->device().isGpu && !b.runner->streamsWeights()) b.llama.reset();
    return b;
}

std::vector<std::int32_t> randomTokens(std::int64_t vocab, std::int64_t count)
{
    std::mt19937 rng(1);
    std::uniform_int_distribution<std::int32_t> pick(0, std::int32_t(vocab - 1));
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(count));
    for (auto& t : tokens) t = pick(rng);
    return tokens;
}

}  // namespace

int runBenchCalibrate(Args args)
{
    std::string path;
    std::int64_t seqLen = 2048, samples = 32, batch = 0;
    bool json = false;
    ql::HessianPrecision hessian = ql::HessianPrecision::Float32;
    DeviceOptions device;
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kBenchCalibrateHelp.data(), 1, kBenchCalibrateHelp.size(), stdout);
            return kExitOk;
        } else if (parseDeviceOption(p, device)) {
        } else if (p.is("--seqlen")) {
            if (auto v = p.integer(1, 1 << 20)) seqLen = *v;
        } else if (p.is("--samples")) {
            if (auto v = p.integer(1, 1 << 20)) samples = *v;
        } else if (p.is("--batch")) {
            if (auto v = p.integer(1, 4096)) batch = *v;
        } else if (p.is("--hessian")) {
            auto v = p.value();
            if (v && *v == "none")
                hessian = ql::HessianPrecision::None;
            else if (v && *v == "f32")
                hessian = ql::HessianPrecision::Float32;
            else if (v && *v == "f64")
                hessian = ql::HessianPrecision::Float64;
            else if (v)
                p.error("--hessian takes none, f32 or f64");
        } else if (p.is("--json")) {
            json = true;
        } else if (!p.isOption() && path.empty()) {
            path = p.current();
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "bench");
    if (path.empty()) return usageError("bench calibrate needs a MODEL", "bench");
    if (batch == 0) batch = std::max<std::int64_t>(1, 16384 / seqLen);
    batch = std::min(batch, samples);

    ProgressLine progress;
    auto opened = openBenchRunner(path, device, progress);
    if (!opened) return fail(opened.error().message);
    ql::ModelRunner& r = *opened->runner;
    const ql::LlamaShape& shape = r.shape();
    const std::vector<std::int32_t> tokens = randomTokens(shape.vocab, samples * seqLen);

    // All windows in batches of `batch` (the last one may be smaller); seconds of the whole pass.
    auto pass = [&](const ql::ProgressFn& part) -> ql::Result<double> {
        const auto start = std::chrono::steady_clock::now();
        for (std::int64_t s = 0; s < samples; s += batch) {
            const std::int64_t n = std::min(batch, samples - s);
            const auto first = std::size_t(s * seqLen);
            auto st = r.forward(
                std::span(tokens).subspan(first, std::size_t(n * seqLen)), n, {},
                [&](double f, std::string_view what) {
                    return part ? part((double(s) + f * double(n)) / double(samples), what) : true;
                },
                static_cast<std::int32_t>(s));
            if (!st) return st.error();
        }
        return secondsSince(start);
    };
    auto warmUp = [&]() -> ql::Status {
        return r.forward(std::span(tokens).first(std::size_t(batch * seqLen)), batch, {});
    };

    if (auto st = warmUp(); !st) return fail(st.error().message);
    auto off = pass(progress.part(0.3, 0.6));
    if (!off) return fail(off.error().message);
    const std::uint64_t peakOff = r.peakMemoryBytes();

    ql::RunnerStatsOptions options;
    options.hessian = hessian;
    if (auto st = r.enableStats(options); !st) return fail(st.error().message);
    if (auto st = warmUp(); !st) return fail(st.error().message);
    if (auto st = r.takeStats(); !st) return fail(st.error().message);  // starts afresh
    const auto onStart = std::chrono::steady_clock::now();
    auto on = pass(progress.part(0.6, 1.0));
    if (!on) return fail(on.error().message);
    const auto downloadStart = std::chrono::steady_clock::now();
    auto stats = r.takeStats();
    if (!stats) return fail(stats.error().message);
    const double downloadSeconds = secondsSince(downloadStart);
    const double onSeconds = secondsSince(onStart);
    const std::uint64_t peakOn = r.peakMemoryBytes();
    const ql::DeviceInfo info = r.device();  // free memory while the statistics are held
    r.disableStats();
    progress.finish();

    const double tokenCount = double(samples * seqLen);
    const double offRate = tokenCount / *off, onRate = tokenCount / onSeconds;
    const double overhead = 100.0 * (onSeconds - *off) / *off;
    const std::uint64_t deviceUsed =
        info.isGpu && info.totalMemory >= info.freeMemory ? info.totalMemory - info.freeMemory : 0;
    const char* hessianText = hessian == ql::HessianPrecision::None      ? "none"
                              : hessian == ql::HessianPrecision::Float32 ? "f32"
                                                                         : "f64";
    if (json) {
        nlohmann::json j;
        j["model"] = path;
        j["device"] = info.name;
        j["precision"] = ql::precisionName(r.precision());
        j["seqlen"] = seqLen;
        j["samples"] = samples;
        j["batch"] = batch;
        j["hessian"] = hessianText;
        j["probes"] = stats->size();
        j["seconds_off"] = *off;
        j["seconds_on"] = onSeconds;
        j["seconds_download"] = downloadSeconds;
        j["tokens_per_second_off"] = offRate;
        j["tokens_per_second_on"] = onRate;
        j["overhead_percent"] = overhead;
        j["peak_runner_bytes_off"] = peakOff;
        j["peak_runner_bytes_on"] = peakOn;
        j["device_used_bytes"] = deviceUsed;
        std::cout << j.dump(2) << "\n";
        return kExitOk;
    }
    std::printf("model        %s (%lld blocks, dim %lld, ffn %lld, vocab %lld)\n", path.c_str(),
                (long long)shape.blocks, (long long)shape.dim, (long long)shape.ffnDim,
                (long long)shape.vocab);
    std::printf("device       %s\n", describeRunner(r).c_str());
    std::printf("load         %.2f s to float32 on the host, %.2f s to the device\n",
                opened->loadSeconds, opened->uploadSeconds);
    std::printf("windows      %lld x %lld tokens, %lld per forward\n", (long long)samples,
                (long long)seqLen, (long long)batch);
    std::printf("stats off    %10.0f tokens/s  (%.3f s, plain forward)\n", offRate, *off);
    std::printf(
        "stats on     %10.0f tokens/s  (%.3f s: abs-max, mean |x|, mean x^2, %d-bin "
        "histogram, top-%d, Hessian %s over %zu probes; download %.3f s)\n",
        onRate, onSeconds, options.histogramBins, options.topK, hessianText, stats->size(),
        downloadSeconds);
    std::printf("overhead     %+.1f%%\n", overhead);
    if (info.isGpu)
        std::printf("memory       runner peak %s off, %s on; device in use %s of %s\n",
                    formatBytes(peakOff).c_str(), formatBytes(peakOn).c_str(),
                    formatBytes(deviceUsed).c_str(), formatBytes(info.totalMemory).c_str());
    else
        std::printf("memory       %s of float32 weights on the host\n",
                    formatBytes(peakOn).c_str());
    return kExitOk;
}

int runBenchForward(Args args)
{
    std::string path;
    std::int64_t seqLen = 2048, batch = 1, repeat = 0;
    bool json = false;
    DeviceOptions device;
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kBenchForwardHelp.data(), 1, kBenchForwardHelp.size(), stdout);
            return kExitOk;
        } else if (parseDeviceOption(p, device)) {
        } else if (p.is("--seqlen")) {
            if (auto v = p.integer(1, 1 << 20)) seqLen = *v;
        } else if (p.is("--batch")) {
            if (auto v = p.integer(1, 4096)) batch = *v;
        } else if (p.is("--repeat")) {
            if (auto v = p.integer(1, 1000)) repeat = *v;
        } else if (p.is("--json")) {
            json = true;
        } else if (!p.isOption() && path.empty()) {
            path = p.current();
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "bench");
    if (path.empty()) return usageError("bench forward needs a MODEL", "bench");

    auto backend = openBackend(device);
    if (!backend) return fail(backend.error().message);
    const bool gpu = (*backend)->device().isGpu;
    if (!device.precisionGiven)
        device.precision = gpu ? ql::Precision::BFloat16 : ql::Precision::Float32;
    if (repeat == 0) repeat = gpu ? 5 : 1;

    ProgressLine progress;
    const auto loadStart = std::chrono::steady_clock::now();
    auto model = ql::openModel(path);
    if (!model) return fail(model.error().message);
    auto llama = ql::LlamaModel::create(*model, {}, progress.part(0.0, 0.5));
    if (!llama) return fail(llama.error().message);
    const double loadSeconds = secondsSince(loadStart);
    const auto uploadStart = std::chrono::steady_clock::now();
    auto runner = ql::createLlamaRunner(**backend, *llama, device.precision, device.runner);
    if (!runner) return fail(runner.error().message);
    const double uploadSeconds = secondsSince(uploadStart);
    ql::ModelRunner& r = **runner;
    const ql::LlamaShape& shape = r.shape();

    std::mt19937 rng(1);
    std::uniform_int_distribution<std::int32_t> pick(0, std::int32_t(shape.vocab - 1));
    std::vector<std::int32_t> tokens(std::size_t(batch * seqLen));
    for (auto& t : tokens) t = pick(rng);

    auto warm = r.forward(tokens, batch, {}, progress.part(0.5, 0.6));
    if (!warm) return fail(warm.error().message);
    std::vector<double> seconds;
    for (std::int64_t i = 0; i < repeat; ++i) {
        const double f0 = 0.6 + 0.4 * double(i) / double(repeat);
        const auto start = std::chrono::steady_clock::now();
        auto st = r.forward(tokens, batch, {}, progress.part(f0, f0 + 0.4 / double(repeat)));
        if (!st) return fail(st.error().message);
        seconds.push_back(secondsSince(start));
    }
    progress.finish();
    const ql::DeviceInfo info = r.device();

    double total = 0;
    for (double s : seconds) total += s;
    const double mean = total / double(seconds.size());
    const double best = *std::min_element(seconds.begin(), seconds.end());
    const double tokensPerSecond = double(batch * seqLen) / mean;
    const double flops = forwardFlops(shape, batch, seqLen);
    const double tflops = flops / mean / 1e12;
    const std::uint64_t deviceUsed =
        info.isGpu && info.totalMemory >= info.freeMemory ? info.totalMemory - info.freeMemory : 0;

    if (json) {
        nlohmann::json j;
        j["model"] = path;
        j["device"] = info.name;
        j["precision"] = ql::precisionName(r.precision());
        j["batch"] = batch;
        j["seqlen"] = seqLen;
        j["repeat"] = repeat;
        j["seconds_mean"] = mean;
        j["seconds_best"] = best;
        j["tokens_per_second"] = tokensPerSecond;
        j["tflops"] = tflops;
        j["flops_per_forward"] = flops;
        j["peak_runner_bytes"] = r.peakMemoryBytes();
        j["device_used_bytes"] = deviceUsed;
        j["load_seconds"] = loadSeconds;
        j["upload_seconds"] = uploadSeconds;
        std::cout << j.dump(2) << "\n";
        return kExitOk;
    }
    std::printf(
        "model        %s (%lld blocks, dim %lld, ffn %lld, %lld/%lld heads of %lld, vocab "
        "%lld)\n",
        path.c_str(), (long long)shape.blocks, (long long)shape.dim, (long long)shape.ffnDim,
        (long long)shape.heads, (long long)shape.kvHeads, (long long)shape.headDim,
        (long long)shape.vocab);
    std::printf("device       %s\n", describeRunner(r).c_str());
    std::printf("load         %.2f s to float32 on the host, %.2f s to the device\n", loadSeconds,
                uploadSeconds);
    std::printf("forward      %lld x %lld tokens: mean %.2f ms, best %.2f ms over %lld runs\n",
                (long long)batch, (long long)seqLen, mean * 1e3, best * 1e3, (long long)repeat);
    std::printf("throughput   %.0f tokens/s, %.3g TFLOP/s (%.3g FLOP per forward)\n",
                tokensPerSecond, tflops, flops);
    if (info.isGpu)
        std::printf("memory       runner peak %s; device in use %s of %s\n",
                    formatBytes(r.peakMemoryBytes()).c_str(), formatBytes(deviceUsed).c_str(),
                    formatBytes(info.totalMemory).c_str());
    return kExitOk;
}

}  // namespace qlcli
