// `quantlens-cli bench hessian`: calibration statistics on the GPU (kernels/stats.cuh) on
// synthetic activations of real layer widths. For each channel count: one XᵀX accumulation
// (TFLOP/s = 2·n²·tokens per product, the useful work whatever the layout computes; entries
// checked against a double dot product; bf16 as DeviceStats runs it, GEMMs of 16384 rows, and
// once as a single GEMM for comparison), the Hessian layouts side by side (the full GEMM and the
// symmetric halves of HessianTiling), the statistics passes (GB/s of activations read; first
// batch and steady state), one add with both, the peak device memory above the CUDA context, and
// with --breakdown the time of each pass of one add. Target: bf16 XᵀX ≥ 400 TFLOP/s (the H100's
// dense bf16 tensor-core peak is about 990); exit status 1 when missed.
//
// Built only with CUDA; cmd_bench_hessian_nocuda.cpp stands in otherwise.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "cli_common.h"
#include "stats_bench.h"

namespace qlcli {

namespace {

constexpr double kTargetTflops = 400.0;

const std::string_view kBenchHessianHelp =
    "usage: quantlens-cli bench hessian [--channels N,N...] [--tokens N] [--dtype bf16|f32]\n"
    "                                   [--repeat N] [--breakdown] [--no-layouts]\n\n"
    "Calibration statistics on the GPU, on synthetic heavy-tailed activations (outlier\n"
    "channels, rare massive values) of tokens × channels made on the device:\n"
    "  XᵀX     the Hessian accumulation (cuBLAS; bf16 on tensor cores with float32\n"
    "          accumulation, f32 without TF32), TFLOP/s = 2·channels²·tokens per product,\n"
    "          with a check of sampled entries against a double dot product on the host;\n"
    "          bf16 in GEMMs of 16384 rows as calibration runs it (the symmetric half\n"
    "          from 4096 channels), and as one full GEMM;\n"
    "  stats   the fused pass (per-channel abs-max, Σ|x|, Σx², histogram, top-k) in GB/s of\n"
    "          activations read, first batch and later batches of fresh data;\n"
    "  layouts XᵀX as the full GEMM and as the symmetric half (tiles on and above the\n"
    "          diagonal: one strided-batched GEMM per tile diagonal, or one pointer-array\n"
    "          batched GEMM) with 1024- and 2048-channel tiles, in useful TFLOP/s, with the\n"
    "          share of the full work computed and the mirror into the lower triangle\n"
    "          (--no-layouts skips them);\n"
    "  add     both together, as calibration runs them;\n"
    "and the peak device memory above the CUDA context. --breakdown: the time of each pass of\n"
    "one add (fused pass, rebinning, top-k candidates, XᵀX; the serial work of the passes'\n"
    "last blocks) for a fresh probe and a later batch, on heavy-tailed data and on data with\n"
    "massive first-token activations; e.g. --channels 2048,8192 --tokens 32768 --breakdown\n"
    "is one Llama-3.2-1B calibration batch of 16 × 2048 tokens. Defaults: --channels\n"
    "4096,14336 --tokens 262144 --dtype bf16 --repeat 3. Target: bf16 XᵀX >= 400 TFLOP/s\n"
    "(exit status 1 when missed).\n";

std::string formatMs(double seconds)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f ms", seconds * 1e3);
    return buf;
}

void printLayouts(const ql::cuda::StatsBenchResult& r)
{
    if (r.layouts.empty()) return;
    std::printf("  layouts   XᵀX per product, useful TFLOP/s (2·channels²·tokens / time):\n");
    for (const auto& l : r.layouts) {
        std::printf("    %-16s %9s  %6.1f TFLOP/s  computes %3.0f%% of the full GEMM  check %.2g",
                    l.name.c_str(), formatMs(l.seconds).c_str(), l.tflops, l.computed * 100,
                    l.checkError);
        if (l.mirrorSeconds > 0) std::printf("  mirror %s", formatMs(l.mirrorSeconds).c_str());
        std::printf("\n");
    }
}

void printPhases(const ql::cuda::StatsBenchResult& r, std::int64_t tokens, std::int64_t channels)
{
    if (r.phases.empty()) return;
    const auto& p0 = r.phases.front();
    std::printf("  breakdown one add of %s × %s, grid of %d blocks, XᵀX %s:\n",
                formatCount(tokens).c_str(), formatCount(channels).c_str(), p0.blocks,
                p0.hessianLayout.c_str());
    for (const auto& p : r.phases) {
        const double total = p.statsMs + p.rebinMs + p.candidatesMs;
        std::printf(
            "    %-7s %-11s fused %.3f ms  rebin %.3f ms  top-k %.3f ms  (statistics "
            "%.3f ms, %.0f GB/s of X)  XᵀX %.3f ms\n",
            p.data.c_str(), p.first ? "fresh probe" : "later batch", p.statsMs, p.rebinMs,
            p.candidatesMs, total, total > 0 ? double(r.inputBytes) / (total * 1e-3) * 1e-9 : 0.0,
            p.hessianMs);
        std::printf("    %-19s last blocks: grow %.1f µs, threshold %.1f µs, merge %.1f µs; %s\n",
                    "", p.growUs, p.thresholdUs, p.mergeUs,
                    p.onePass    ? "binned once, at block ranges merged at the end"
                    : p.rebinned ? "binned twice (range grew)"
                                 : "binned once (range kept)");
        std::printf(
            "    %-19s top-k threshold %.4g: %s of %s tiles read, %u keys (histogram "
            "bound %u), %s\n",
            "", double(p.threshold), formatCount(std::int64_t(p.tilesScanned)).c_str(),
            formatCount(std::int64_t(p.tiles)).c_str(), p.candidates, p.passing,
            p.direct ? "straight to the list" : "per-block top-k");
    }
}

}  // namespace

int runBenchHessian(Args args)
{
    std::vector<std::int64_t> channels = {4096, 14336};
    std::int64_t tokens = 262144;
    bool bf16 = true;
    int repeat = 3;
    bool breakdown = false, layouts = true;
    ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kBenchHessianHelp.data(), 1, kBenchHessianHelp.size(), stdout);
            return kExitOk;
        } else if (p.is("--channels")) {
            if (auto v = p.value()) {
                channels.clear();
                std::stringstream list(*v);
                std::string item;
                while (std::getline(list, item, ',')) {
                    char* end = nullptr;
                    const long long n = std::strtoll(item.c_str(), &end, 10);
                    if (item.empty() || *end || n < 1 || n > 65536) {
                        p.error("--channels takes a comma-separated list of 1..65536, not '" + *v +
                                "'");
                        break;
                    }
                    channels.push_back(n);
                }
            }
        } else if (p.is("--tokens")) {
            if (auto n = p.integer(1, std::int64_t(1) << 31)) tokens = *n;
        } else if (p.is("--dtype")) {
            if (auto v = p.value()) {
                if (*v == "bf16")
                    bf16 = true;
                else if (*v == "f32")
                    bf16 = false;
                else
                    p.error("--dtype takes bf16 or f32, not '" + *v + "'");
            }
        } else if (p.is("--repeat")) {
            if (auto n = p.integer(1, 100)) repeat = int(*n);
        } else if (p.is("--breakdown")) {
            breakdown = true;
        } else if (p.is("--no-layouts")) {
            layouts = false;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "bench");
    if (channels.empty()) return usageError("--channels needs at least one count", "bench");

    const char* dtype = bf16 ? "bf16" : "f32";
    bool targetOk = true;
    bool header = false;
    for (std::int64_t c : channels) {
        ql::cuda::StatsBenchConfig config;
        config.channels = std::int32_t(c);
        config.tokens = tokens;
        config.bf16 = bf16;
        config.repeats = repeat;
        config.breakdown = breakdown;
        config.layouts = layouts;
        auto r = ql::cuda::benchCalibrationStats(config);
        if (!r) return fail(r.error().message);
        if (!header) {
            std::printf("device       %s\n", r->device.c_str());
            std::printf("input        %s activations, %s tokens, %d timed repeats\n", dtype,
                        formatCount(tokens).c_str(), repeat);
            header = true;
        }
        std::printf("channels %s (X %s)\n", formatCount(c).c_str(),
                    formatBytes(r->inputBytes).c_str());
        std::printf(
            "  XᵀX       %s per product, %.1f TFLOP/s, %s, GEMMs of %s rows (check: max "
            "error %.2g of sqrt(H_ii·H_jj))\n",
            formatMs(r->hessianSeconds).c_str(), r->hessianTflops, r->hessianLayout.c_str(),
            formatCount(std::min(r->hessianChunkRows, tokens)).c_str(), r->hessianCheckError);
        if (r->oneGemmSeconds > 0)
            std::printf(
                "  XᵀX       %s per product, %.1f TFLOP/s as one GEMM (check: max error "
                "%.2g: tensor-core accumulation truncates)\n",
                formatMs(r->oneGemmSeconds).c_str(), r->oneGemmTflops, r->oneGemmCheckError);
        printLayouts(*r);
        std::printf("  stats     %s per batch, %.0f GB/s (first batch %s, %.0f GB/s)\n",
                    formatMs(r->statsSeconds).c_str(), r->statsGBps,
                    formatMs(r->statsFirstSeconds).c_str(),
                    double(r->inputBytes) / r->statsFirstSeconds * 1e-9);
        std::printf("  add       %s per batch with both (accumulators %s)\n",
                    formatMs(r->addSeconds).c_str(), formatBytes(r->accumulatorBytes).c_str());
        std::printf("  memory    peak %s on the device above the CUDA context\n",
                    formatBytes(r->peakBytes).c_str());
        printPhases(*r, tokens, c);
        if (bf16) {
            const bool ok = r->hessianTflops >= kTargetTflops;
            targetOk = targetOk && ok;
            std::printf("  target    bf16 XᵀX >= %.0f TFLOP/s: %s (%.1f)\n", kTargetTflops,
                        ok ? "PASS" : "FAIL", r->hessianTflops);
        }
    }
    return targetOk ? kExitOk : kExitFailed;
}

}  // namespace qlcli
