// `quantlens-cli bench quant [MODEL] [options]`: RTN quantization throughput per format on this
// CPU, in weights per second, with the error each format leaves, as a table on stdout.
//
// The tensor is a 2-D weight of MODEL (the largest, or --tensor NAME), decoded to float first, or
// without MODEL a generated heavy-tailed one (Student-t, 1% of input columns scaled 4-12x, seeded)
// of --rows x --cols. Each format runs --repeat times and the fastest run counts; formats whose
// block does not divide cols run their llama.cpp fallback, marked in the table. The time covers
// quantizeRtn alone (allocation of the result included, decoding and error measurement not).
//
// runBenchQuant receives argv[0] = the command word ("quant") and the options after it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_common.h"
#include "io/model_loader.h"
#include "quant/error_metrics.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"
#include "quant/rtn.h"

namespace {

constexpr const char* kUsage =
    "usage: quantlens-cli bench quant [MODEL] [--tensor NAME] [--formats a,b,...]\n"
    "                                 [--rows R] [--cols C] [--threads N] [--repeat N]\n"
    "Times round-to-nearest quantization per format (weights per second) on a 2-D tensor of\n"
    "MODEL (the largest, or --tensor NAME), or on a generated R x C heavy-tailed tensor\n"
    "(default 1024 x 4096). Formats are layout rules such as int4:g128, nf4:dq, mxfp4,\n"
    "fp8_e4m3, q4_k (default: every preset); a llama.cpp format whose block does not divide\n"
    "the columns runs its fallback, shown as q4_k->q5_0. --threads 0 (default) uses all cores;\n"
    "each format runs --repeat times (default 3) and the fastest run is reported.\n";

std::vector<std::string> splitList(const std::string& s)
{
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

std::vector<float> generated(std::int64_t rows, std::int64_t cols)
{
    std::mt19937 rng(1234);
    std::student_t_distribution<float> t(4.0f);
    std::uniform_real_distribution<float> u(0, 1);
    std::vector<float> colScale(static_cast<std::size_t>(cols), 1.0f);
    for (auto& s : colScale)
        if (u(rng) < 0.01f) s = 4.0f + 8.0f * u(rng);
    std::vector<float> w(static_cast<std::size_t>(rows * cols));
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) w[r * cols + c] = 0.02f * t(rng) * colScale[c];
    return w;
}

}  // namespace

int runBenchQuant(int argc, char** argv)
{
    const std::vector<std::string> args(argv + std::min(argc, 1), argv + argc);
    std::string modelPath, tensorName, formatList;
    std::int64_t rows = 1024, cols = 4096;
    int threads = 0, repeat = 3;
    qlcli::ArgParser p(args);
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fputs(kUsage, stdout);
            return qlcli::kExitOk;
        } else if (p.is("--tensor")) {
            if (auto v = p.value()) tensorName = *v;
        } else if (p.is("--formats")) {
            if (auto v = p.value()) formatList = *v;
        } else if (p.is("--rows")) {
            if (auto v = p.integer(1, std::int64_t(1) << 24)) rows = *v;
        } else if (p.is("--cols")) {
            if (auto v = p.integer(1, std::int64_t(1) << 24)) cols = *v;
        } else if (p.is("--threads")) {
            if (auto v = p.integer(0, 4096)) threads = int(*v);
        } else if (p.is("--repeat")) {
            if (auto v = p.integer(1, 1000)) repeat = int(*v);
        } else if (!p.isOption() && modelPath.empty()) {
            modelPath = p.current();
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return qlcli::usageError(p.errorMessage(), "bench");
    if (modelPath.empty() && rows * cols > (std::int64_t(1) << 31))
        return qlcli::usageError("--rows x --cols is over 2^31 weights", "bench");

    std::vector<std::string> rules = splitList(formatList);
    if (rules.empty())
        for (const ql::FormatPreset& preset : ql::formatPresets()) rules.emplace_back(preset.rule);
    std::vector<ql::QuantFormat> formats;
    for (const std::string& rule : rules) {
        auto parsed = ql::parseQuantFormat(rule);
        if (!parsed) return qlcli::usageError(parsed.error().message, "bench");
        formats.push_back(*parsed);
    }

    std::vector<float> w;
    std::string source;
    if (!modelPath.empty()) {
        auto model = ql::openModel(modelPath);
        if (!model) return qlcli::fail(model.error().message);
        const ql::TensorInfo* pick = nullptr;
        for (const ql::TensorInfo& t : model->tensors) {
            if (t.shape.size() != 2) continue;
            if (!tensorName.empty() ? t.name == tensorName
                                    : (!pick || t.elementCount() > pick->elementCount()))
                pick = &t;
        }
        if (!pick)
            return qlcli::fail("no 2-D tensor " + (tensorName.empty() ? "" : tensorName + " ") +
                               "in " + modelPath);
        auto decoded = ql::dequantizeTensor(*model, *pick);
        if (!decoded) return qlcli::fail(decoded.error().message);
        w = std::move(*decoded);
        rows = pick->rows();
        cols = pick->cols();
        source = pick->name + " of " + modelPath;
    } else {
        w = generated(rows, cols);
        source = "generated heavy-tailed tensor";
    }

    const int used = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
    std::printf("RTN quantization of %s, %lld x %lld (%.2f M weights), %d thread(s), best of %d\n",
                source.c_str(), (long long)rows, (long long)cols, double(rows * cols) / 1e6, used,
                repeat);
    std::printf("%-18s %7s %10s %12s %10s %9s\n", "format", "bpw", "time ms", "Mweights/s",
                "rel RMSE", "SQNR dB");
    for (const ql::QuantFormat& parsed : formats) {
        const ql::QuantFormat f = ql::fallbackFormat(parsed, rows, cols);
        std::string label = ql::formatToString(parsed);
        if (!(f == parsed)) label += "->" + ql::formatToString(f);
        double best = 1e300;
        ql::Result<ql::QuantizedTensor> q = ql::makeError(ql::ErrorCode::InvalidArgument, "");
        for (int r = 0; r < repeat; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            q = ql::quantizeRtn(w.data(), rows, cols, f, nullptr, {}, threads);
            if (!q) return qlcli::fail(label + ": " + q.error().message);
            best = std::min(best, qlcli::secondsSince(t0));
        }
        auto d = q->dequantize();
        if (!d) return qlcli::fail(label + ": " + d.error().message);
        auto e = ql::computeErrorMetrics(w, *d);
        std::printf("%-18s %7.4f %10.2f %12.2f %10.5f %9.2f\n", label.c_str(), q->bitsPerWeight(),
                    best * 1e3, double(rows * cols) / best / 1e6, e->relativeRmse, e->sqnrDb);
        std::fflush(stdout);
    }
    return qlcli::kExitOk;
}
