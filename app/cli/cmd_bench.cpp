// `quantlens-cli bench open|stats|quant`.
//
// open: opening must touch headers only, so a 7B-shaped model opens in well under a second with
// little memory. It times ql::openModel (every repeat; the slowest run is checked), walks the
// tensor list, and reports peak resident memory two ways: getrusage's ru_maxrss and VmHWM from
// /proc/self/status (they agree on Linux; both include the executable and its libraries).
// Targets: open < 1 s and peak RSS < 200 MB; exit status 1 when one is missed.
//
// stats: decoding + statistics throughput per stored type, tensor by tensor.
// quant: RTN quantization throughput (app/cli/cmd_bench_quant.cpp).
// hessian: calibration statistics on the GPU (app/cli/cmd_bench_hessian.cpp).
// forward: whole forward passes on the GPU or CPU (app/cli/cmd_bench_gpu.cpp).
// calibrate: forward passes with and without the calibration statistics (cmd_bench_gpu.cpp).
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "cli_common.h"
#include "io/model_loader.h"
#include "quant/ggml_dequant.h"
#include "stats/tensor_stats.h"

namespace qlcli {

int runBenchForward(Args args);     // app/cli/cmd_bench_gpu.cpp
int runBenchCalibrate(Args args);   // app/cli/cmd_bench_gpu.cpp
int runBenchGptq(Args args);        // app/cli/cmd_bench_gptq.cpp
int runBenchSequential(Args args);  // app/cli/cmd_bench_sequential.cpp

const std::string_view kBenchHelp =
    "usage: quantlens-cli bench open MODEL [--repeat N] [--list]\n"
    "       quantlens-cli bench stats MODEL [--max-tensors N]\n"
    "       quantlens-cli bench quant [MODEL] [options]   (see: bench quant --help)\n"
    "       quantlens-cli bench forward MODEL [options]   (see: bench forward --help)\n"
    "       quantlens-cli bench calibrate MODEL [options] (see: bench calibrate --help)\n"
    "       quantlens-cli bench hessian [options]         (see: bench hessian --help)\n"
    "       quantlens-cli bench gptq [options]            (see: bench gptq --help)\n"
    "       quantlens-cli bench gptq-model MODEL [options] (see: bench gptq-model --help)\n\n"
    "open   opens MODEL (a .gguf file, a safetensors folder or a llama2.c .bin) reading\n"
    "       headers only, walks its tensor list (--list prints it), and prints the wall time\n"
    "       of each open and the peak resident memory (getrusage ru_maxrss and VmHWM), then\n"
    "       PASS/FAIL against the targets: open < 1 s, peak RSS < 200 MB. Exit status 1 when a\n"
    "       target is missed.\n"
    "stats  decodes every tensor and computes its statistics, and prints the throughput in\n"
    "       weights per second per stored type (decode, statistics, both).\n"
    "quant  round-to-nearest quantization throughput per format.\n"
    "hessian  GPU calibration statistics: XᵀX TFLOP/s and the statistics pass in GB/s\n"
    "       (see: bench hessian --help).\n"
    "forward  tokens/s, TFLOP/s and peak memory of whole forward passes (GPU when present).\n"
    "gptq   GPTQ of generated layers on the GPU: ms per layer with its breakdown, peak memory,\n"
    "       GPTQ/RTN loss (see: bench gptq --help).\n"
    "gptq-model  true-sequential GPTQ of a whole model end to end (GPU when present): time per\n"
    "       phase, peak memory (see: bench gptq-model --help).\n"
    "calibrate  tokens/s of calibration with the statistics off and on, the overhead and the\n"
    "       peak memory (GPU when present).\n";

namespace {

constexpr double kOpenTargetSeconds = 1.0;
constexpr double kRssTargetBytes = 200e6;

// Peak and current resident memory in bytes, from /proc/self/status (0 when unavailable).
struct ProcMemory {
    std::uint64_t vmHwm = 0, vmRss = 0;
};

ProcMemory procMemory()
{
    ProcMemory m;
    std::ifstream f("/proc/self/status");
    std::string key;
    while (f >> key) {
        std::uint64_t kb = 0;
        if (key == "VmHWM:" && f >> kb)
            m.vmHwm = kb * 1024;
        else if (key == "VmRSS:" && f >> kb)
            m.vmRss = kb * 1024;
        f.ignore(1 << 20, '\n');
    }
    return m;
}

std::uint64_t maxRssBytes()
{
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return std::uint64_t(u.ru_maxrss) * 1024;  // kilobytes on Linux
}

std::string formatSeconds(double s)
{
    char buf[32];
    if (s < 1.0)
        std::snprintf(buf, sizeof buf, "%.2f ms", s * 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.3f s", s);
    return buf;
}

int benchOpen(Args args)
{
    std::string path;
    int repeat = 3;
    bool list = false;
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kBenchHelp.data(), 1, kBenchHelp.size(), stdout);
            return kExitOk;
        } else if (p.is("--repeat")) {
            if (auto n = p.integer(1, 1000)) repeat = int(*n);
        } else if (p.is("--list")) {
            list = true;
        } else if (!p.isOption() && path.empty()) {
            path = p.current();
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "bench");
    if (path.empty()) return usageError("bench open needs a MODEL", "bench");

    const ProcMemory before = procMemory();
    std::vector<double> times;
    ql::Result<ql::Model> model = ql::makeError(ql::ErrorCode::InvalidArgument, "not opened");
    for (int r = 0; r < repeat; ++r) {
        model = ql::makeError(ql::ErrorCode::InvalidArgument, "not opened");  // close the last
        const auto start = std::chrono::steady_clock::now();
        model = ql::openModel(path);
        times.push_back(secondsSince(start));
        if (!model) return fail(model.error().message);
    }

    // Walk the tensor list as a viewer would: every name, shape and type.
    const auto walkStart = std::chrono::steady_clock::now();
    std::map<std::string, std::pair<std::size_t, std::int64_t>> byType;
    for (const ql::TensorInfo& t : model->tensors) {
        auto& e = byType[std::string(ql::tensorTypeName(t.type))];
        ++e.first;
        e.second += t.elementCount();
        if (list)
            std::printf("  %-40s %-5s %-14s %s\n", t.name.c_str(),
                        std::string(ql::tensorTypeName(t.type)).c_str(),
                        formatShape(t.shape).c_str(), formatBytes(t.bytes).c_str());
    }
    const double walk = secondsSince(walkStart);

    const std::uint64_t ruMax = maxRssBytes();
    const ProcMemory after = procMemory();
    const std::uint64_t peak = std::max(ruMax, after.vmHwm);
    const double worst = *std::max_element(times.begin(), times.end());
    const double best = *std::min_element(times.begin(), times.end());

    std::printf("model        %s\n", path.c_str());
    std::printf("             %s, %s, %zu tensors, %s parameters, %s in %zu file%s\n",
                ql::modelFormatName(model->format), model->hparams.architecture.c_str(),
                model->tensors.size(), formatCount(model->totalParameters()).c_str(),
                formatBytes(model->totalBytes()).c_str(), model->files.size(),
                model->files.size() == 1 ? "" : "s");
    std::printf("open         ");
    for (std::size_t i = 0; i < times.size(); ++i)
        std::printf("%s%s", i ? ", " : "", formatSeconds(times[i]).c_str());
    std::printf("  (best %s, worst %s)\n", formatSeconds(best).c_str(),
                formatSeconds(worst).c_str());
    std::printf("tensors      listed in %s:", formatSeconds(walk).c_str());
    for (const auto& [type, e] : byType)
        std::printf(" %s %zu (%s weights)", type.c_str(), e.first, formatCount(e.second).c_str());
    std::printf("\n");
    std::printf("memory       peak RSS: ru_maxrss %s, VmHWM %s; VmRSS %s before open, %s after\n",
                formatBytes(ruMax).c_str(), formatBytes(after.vmHwm).c_str(),
                formatBytes(before.vmRss).c_str(), formatBytes(after.vmRss).c_str());
    const bool openOk = worst < kOpenTargetSeconds;
    const bool rssOk = double(peak) < kRssTargetBytes;
    std::printf("target       open < 1 s: %s (worst of %d: %s)\n", openOk ? "PASS" : "FAIL", repeat,
                formatSeconds(worst).c_str());
    std::printf("target       peak RSS < 200 MB: %s (%s)\n", rssOk ? "PASS" : "FAIL",
                formatBytes(peak).c_str());
    return openOk && rssOk ? kExitOk : kExitFailed;
}

int benchStats(Args args)
{
    std::string path;
    std::int64_t maxTensors = std::numeric_limits<std::int64_t>::max();
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kBenchHelp.data(), 1, kBenchHelp.size(), stdout);
            return kExitOk;
        } else if (p.is("--max-tensors")) {
            if (auto n = p.integer(1, std::numeric_limits<std::int64_t>::max())) maxTensors = *n;
        } else if (!p.isOption() && path.empty()) {
            path = p.current();
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "bench");
    if (path.empty()) return usageError("bench stats needs a MODEL", "bench");

    ProgressLine progress;
    auto model = ql::openModel(path);
    if (!model) return fail(model.error().message);

    struct PerType {
        std::size_t tensors = 0;
        std::int64_t weights = 0;
        double decode = 0, stats = 0;
    };
    std::map<std::string, PerType> byType;
    const ql::TensorStatsOptions options;  // the weight explorer's defaults
    const std::size_t n = std::min<std::size_t>(model->tensors.size(), std::size_t(maxTensors));
    for (std::size_t i = 0; i < n; ++i) {
        const ql::TensorInfo& t = model->tensors[i];
        const double p0 = double(i) / double(n), p1 = double(i + 1) / double(n);
        const auto t0 = std::chrono::steady_clock::now();
        auto values = ql::dequantizeTensor(*model, t, progress.part(p0, (p0 + p1) / 2));
        const double decode = secondsSince(t0);
        if (!values) return fail(values.error().message);
        const auto t1 = std::chrono::steady_clock::now();
        auto s = ql::computeTensorStats(*values, t.rows(), t.cols(), options,
                                        progress.part((p0 + p1) / 2, p1));
        const double stats = secondsSince(t1);
        if (!s) return fail(t.name + ": " + s.error().message);
        PerType& e = byType[std::string(ql::tensorTypeName(t.type))];
        ++e.tensors;
        e.weights += t.elementCount();
        e.decode += decode;
        e.stats += stats;
    }
    progress.finish();

    std::printf("decode + statistics of %zu tensors of %s (%u hardware threads)\n", n, path.c_str(),
                std::max(1u, std::thread::hardware_concurrency()));
    std::printf("%-6s %8s %16s %14s %14s %14s\n", "type", "tensors", "weights", "decode Mw/s",
                "stats Mw/s", "both Mw/s");
    PerType all;
    auto row = [](const std::string& name, const PerType& e) {
        auto rate = [&](double s) { return s > 0 ? double(e.weights) / s / 1e6 : 0.0; };
        std::printf("%-6s %8zu %16s %14.1f %14.1f %14.1f\n", name.c_str(), e.tensors,
                    formatCount(e.weights).c_str(), rate(e.decode), rate(e.stats),
                    rate(e.decode + e.stats));
    };
    for (const auto& [type, e] : byType) {
        row(type, e);
        all.tensors += e.tensors;
        all.weights += e.weights;
        all.decode += e.decode;
        all.stats += e.stats;
    }
    if (byType.size() > 1) row("all", all);
    return kExitOk;
}

}  // namespace

int runBench(Args args)
{
    if (args.empty()) return usageError("bench needs open, stats or quant", "bench");
    const std::string& which = args[0];
    if (which == "--help" || which == "-h") {
        std::fwrite(kBenchHelp.data(), 1, kBenchHelp.size(), stdout);
        return kExitOk;
    }
    if (which == "open") return benchOpen(args.subspan(1));
    if (which == "stats") return benchStats(args.subspan(1));
    if (which == "quant") return runArgvCommand(runBenchQuant, args);
    if (which == "hessian") return runBenchHessian(args.subspan(1));
    if (which == "gptq") return runBenchGptq(args.subspan(1));
    if (which == "gptq-model") return runBenchSequential(args.subspan(1));
    if (which == "forward") return runBenchForward(args.subspan(1));
    if (which == "calibrate") return runBenchCalibrate(args.subspan(1));
    return usageError("no benchmark '" + which +
                          "' (open, stats, quant, forward, calibrate, hessian, gptq, gptq-model)",
                      "bench");
}

}  // namespace qlcli
