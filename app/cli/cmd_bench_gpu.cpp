// `quantlens-cli bench forward`: throughput of whole causal forward passes of a model on the
// device a job would use (a ModelRunner; the GPU when there is one). Random token ids (seeded),
// `--batch` sequences of `--seqlen` tokens per pass, logits computed for every position but not
// copied back (as a training or prefill step would leave them on the device). One warm-up pass,
// then `--repeat` timed ones; each forward returns when the device is done, so wall-clock time is
// device time. FLOPs are the model's: 2 per weight per token for every linear layer and the head,
// plus causal attention's Q·Kᵀ and P·V over the visible keys only (4·D·T(T+1)/2 per head).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_common.h"
#include "cli_device.h"
#include "io/model_loader.h"
#include "model/llama_runner.h"

namespace qlcli {

namespace {

const std::string_view kBenchForwardHelp =
    "usage: quantlens-cli bench forward MODEL [--seqlen N] [--batch N] [--repeat N]\n"
    "                                         [--device cpu|cuda|auto] [--precision f32|bf16]\n"
    "                                         [--json]\n\n"
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

}  // namespace

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
    auto runner = ql::createLlamaRunner(**backend, *llama, device.precision);
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
