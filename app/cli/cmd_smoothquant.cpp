// quantlens-cli smoothquant: SmoothQuant scales from a calibration (a session, or text calibrated
// on the fly), per-site before/after activation and weight ranges, and the W8A8 perplexity / KL
// of the model without and with smoothing (quant/smoothquant.h, quant/w8a8.h). --out writes the
// smoothed float model as GGUF (the same function as the source; temp file renamed at the end).
// Evaluation runs on the CPU forward pass, where the W8A8 activation quantizer hooks in.
#include <cstdio>
#include <filesystem>
#include <optional>

#include "calib/calibrate.h"
#include "cli_common.h"
#include "export/gguf_writer.h"
#include "io/model_loader.h"
#include "quant/smoothquant.h"
#include "session/session.h"

namespace qlcli {

const std::string_view kSmoothQuantHelp =
    R"(usage: quantlens-cli smoothquant MODEL (--session S.h5 | --text FILE...) [options]

SmoothQuant: per input channel s = max|X|^alpha / max|W|^(1-alpha), folded exactly into
attn_norm (q/k/v), attn_v (attn_output; tied per KV head), ffn_norm (gate/up) and ffn_up
(ffn_down). Prints each site's activation and weight abs-max range (max / median over channels)
before and after, and with --eval-text the W8A8 perplexity and KL divergence from the float
model, without and with smoothing (weights int8 per output channel, activations int8 per token
or static per tensor, at every linear input of the blocks).

options:
  --session S.h5      calibration session (its per-channel abs-max)
  --text FILE         calibrate on the fly instead (repeatable); with --session, the text only
                      feeds the alpha search
  --samples N         calibration windows (default 128)
  --seqlen L          tokens per calibration window (default 512)
  --seed S            seed of the window offsets (default 0)
  --alpha A           migration strength 0..1 (default 0.5)
  --alpha-grid LIST   search alpha per site over LIST (e.g. 0.3,0.4,0.5,0.6,0.7), minimising
                      the W8A8 output error on --search-windows calibration windows; with
                      --eval-text every alpha of LIST is also evaluated for the whole model
  --search-windows N  calibration windows the search runs through the model (default 16)
  --act MODE          activation quantization: per-token (default) or static
  --w-bits N          weight bits (default 8; 2..8, per output channel)
  --a-bits N          activation bits (default 8; 2..16), e.g. W8A6 to see what smoothing
                      does where the activations dominate the error
  --eval-text FILE    evaluate W8A8 perplexity / KL (llama.cpp protocol)
  --ctx N             evaluation window (default 512)
  --chunks N          evaluate at most N windows (default: all)
  --out OUT.gguf      write the smoothed model (float, same types as the source)
)";

namespace {

struct Row {
    std::string label;
    ql::EvalResult result;
};

ql::Result<ql::EvalResult> evalModel(const ql::LlamaModel& model, const ql::LlamaModel& reference,
                                     const std::vector<ql::TokenWindow>& windows,
                                     const ql::ProgressFn& progress)
{
    ql::LlamaLogitsSource source(model), ref(reference);
    return ql::evaluate(source, windows, &ref, progress);
}

}  // namespace

int runSmoothQuant(Args args)
{
    ArgParser p(args);
    std::string modelPath, sessionPath, evalText, outPath, gridText;
    std::vector<std::string> texts;
    ql::WindowOptions windowOptions;
    ql::SmoothQuantOptions options;
    std::int64_t ctx = 512, chunks = 0, searchWindows = 16;
    bool haveAlpha = false;
    while (p.next()) {
        if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--session")) {
            if (auto v = p.value()) sessionPath = *v;
        } else if (p.is("--text")) {
            if (auto v = p.value()) texts.push_back(*v);
        } else if (p.is("--samples")) {
            if (auto v = p.integer(1, 1 << 20)) windowOptions.samples = std::int32_t(*v);
        } else if (p.is("--seqlen")) {
            if (auto v = p.integer(2, 1 << 20)) windowOptions.seqLen = std::int32_t(*v);
        } else if (p.is("--seed")) {
            if (auto v = p.integer(0, INT64_MAX)) windowOptions.seed = std::uint64_t(*v);
        } else if (p.is("--alpha")) {
            if (auto v = p.number(0.0, 1.0)) options.alpha = *v;
            haveAlpha = true;
        } else if (p.is("--alpha-grid")) {
            if (auto v = p.value()) gridText = *v;
        } else if (p.is("--search-windows")) {
            if (auto v = p.integer(1, 1 << 20)) searchWindows = *v;
        } else if (p.is("--act")) {
            if (auto v = p.value()) {
                auto m = ql::parseActivationQuant(*v);
                if (!m || *m == ql::ActivationQuant::None)
                    p.error("--act must be per-token or static, not '" + *v + "'");
                else
                    options.w8a8.activations = *m;
            }
        } else if (p.is("--w-bits")) {
            if (auto v = p.integer(2, 8)) options.w8a8.weightBits = int(*v);
        } else if (p.is("--a-bits")) {
            if (auto v = p.integer(2, 16)) options.w8a8.activationBits = int(*v);
        } else if (p.is("--eval-text")) {
            if (auto v = p.value()) evalText = *v;
        } else if (p.is("--ctx")) {
            if (auto v = p.integer(4, 1 << 20)) ctx = *v;
        } else if (p.is("--chunks")) {
            if (auto v = p.integer(1, 1 << 30)) chunks = *v;
        } else if (p.is("--out")) {
            if (auto v = p.value()) outPath = *v;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "smoothquant");
    if (modelPath.empty()) return usageError("smoothquant needs a MODEL", "smoothquant");
    if (sessionPath.empty() && texts.empty())
        return usageError("smoothquant needs --session S.h5 or --text FILE", "smoothquant");
    if (haveAlpha && !gridText.empty())
        return usageError("give --alpha or --alpha-grid, not both", "smoothquant");
    if (!gridText.empty()) {
        auto g = ql::parseAlphaGrid(gridText);
        if (!g) return fail(g.error().message);
        options.alphaGrid = *g;
        if (texts.empty())
            return usageError("--alpha-grid searches on calibration text: give --text FILE",
                              "smoothquant");
    }
    if (!outPath.empty()) {
        namespace fs = std::filesystem;
        const fs::path out(outPath);
        const fs::path folder = out.has_parent_path() ? out.parent_path() : fs::path(".");
        std::error_code ec;
        if (!fs::is_directory(folder, ec))
            return fail("cannot write " + outPath + ": folder " + folder.string() +
                        " does not exist");
    }
    installInterruptHandler();

    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    auto tokenizer = ql::Tokenizer::create(*model);
    if (!tokenizer) return fail(tokenizer.error().message);
    ProgressLine progress;
    auto reference = ql::LlamaModel::create(*model, {}, progress.part(0.0, 0.02));
    if (!reference) return fail(reference.error().message);

    std::vector<ql::TokenWindow> windows;
    if (!texts.empty()) {
        std::vector<std::string> contents;
        for (const auto& f : texts) {
            auto t = ql::readTextFile(f);
            if (!t) return fail(t.error().message);
            contents.push_back(std::move(t).value());
        }
        windowOptions.addBos = (*tokenizer)->addBosByDefault();
        auto w = ql::makeCalibrationWindows(**tokenizer, contents, windowOptions);
        if (!w) return fail(w.error().message);
        windows = std::move(w).value();
    }
    std::optional<ql::CalibrationResult> calibration;
    if (!sessionPath.empty()) {
        auto s = ql::readSession(sessionPath);
        if (!s) return fail(s.error().message);
        if (!s->calibration)
            return fail(sessionPath + " holds no calibration (run quantlens-cli calibrate)");
        auto id = ql::identifyModel(*model);
        if (!id) return fail(id.error().message);
        if (auto same = ql::checkModelIdentity(s->model, *id); !same)
            return fail(sessionPath + ": " + same.error().message);
        calibration = std::move(s->calibration);
    } else {
        ql::CalibrationConfig config;
        config.hessian = ql::HessianPrecision::None;
        config.samples = windowOptions.samples;
        config.seqLen = windowOptions.seqLen;
        config.seed = windowOptions.seed;
        config.textFiles = texts;
        auto c = ql::calibrateWindows(*reference, **tokenizer, windows, config,
                                      progress.part(0.02, 0.1));
        if (!c) return fail(c.error().message);
        calibration = std::move(c).value();
    }
    std::vector<ql::TokenWindow> search(
        windows.begin(), windows.begin() + std::min<std::ptrdiff_t>(searchWindows, windows.size()));

    auto transform =
        ql::computeSmoothQuant(*model, *calibration, options, &*reference,
                               search.empty() ? nullptr : &search, progress.part(0.1, 0.2));
    progress.finish();
    if (!transform) return fail(transform.error().message);

    std::printf("model       %s\n", modelPath.c_str());
    std::printf("calibration %s (%lld tokens)\n",
                sessionPath.empty() ? ("on the fly, " + std::to_string(windows.size()) + " x " +
                                       std::to_string(windowOptions.seqLen) + " tokens")
                                          .c_str()
                                    : sessionPath.c_str(),
                static_cast<long long>(calibration->tokens));
    if (options.alphaGrid.empty())
        std::printf("alpha       %.2f\n", options.alpha);
    else
        std::printf("alpha       searched per site over %s (W8A8 output error on %zu windows)\n",
                    gridText.c_str(), search.size());
    std::printf("activations int%d %s; weights int%d per output channel\n\n",
                options.w8a8.activationBits, ql::activationQuantName(options.w8a8.activations),
                options.w8a8.weightBits);
    const bool errors = !search.empty();
    std::printf("%-20s %5s  %22s  %22s", "site", "alpha", "act max/median", "weight max/median");
    if (errors) std::printf("  %22s", "W8A8 output error");  // relative, on the search windows
    std::printf("\n");
    for (const ql::SmoothSite& s : transform->sites) {
        char alpha[16];
        std::snprintf(alpha, sizeof alpha, s.smoothed ? "%.2f" : "-", s.alpha);
        std::printf("%-20s %5s  %9.2f -> %9.2f  %9.2f -> %9.2f", s.probe.c_str(), alpha,
                    s.actRatioBefore, s.actRatioAfter, s.weightRatioBefore, s.weightRatioAfter);
        if (errors) std::printf("  %9.3e -> %9.3e", s.errorBefore, s.errorAfter);
        if (!s.note.empty()) std::printf("  %s", s.note.c_str());
        std::printf("\n");
    }

    if (!evalText.empty()) {
        auto text = ql::readTextFile(evalText);
        if (!text) return fail(text.error().message);
        const auto evalWindows =
            ql::makeLlamaCppChunks(**tokenizer, *text, std::int32_t(ctx), std::int32_t(chunks));
        if (evalWindows.empty())
            return fail(evalText + ": too short for one window of " + std::to_string(ctx) +
                        " tokens");
        const std::string wa = "W" + std::to_string(options.w8a8.weightBits) + "A" +
                               std::to_string(options.w8a8.activationBits);
        std::vector<Row> rows;
        std::vector<std::pair<std::string, const std::map<std::string, ql::ScaleFold>*>> variants;
        variants.push_back({wa + ", no smoothing", nullptr});
        variants.push_back({options.alphaGrid.empty()
                                ? wa + ", SmoothQuant alpha " + formatNumber(options.alpha, 3)
                                : wa + ", SmoothQuant alpha per site",
                            &transform->folds});
        std::vector<ql::SmoothQuantTransform> global;
        for (double a : options.alphaGrid) {
            ql::SmoothQuantOptions o = options;
            o.alphaGrid.clear();
            o.alpha = a;
            auto t = ql::computeSmoothQuant(*model, *calibration, o);
            if (!t) return fail(t.error().message);
            global.push_back(std::move(t).value());
        }
        for (std::size_t i = 0; i < global.size(); ++i)
            variants.push_back({wa + ", SmoothQuant alpha " +
                                    formatNumber(options.alphaGrid[i], 3) + " everywhere",
                                &global[i].folds});
        const double n = double(variants.size());
        for (std::size_t i = 0; i < variants.size(); ++i) {
            auto lm = ql::createW8A8Model(*model, variants[i].second, options.w8a8, &*calibration);
            if (!lm) return fail(lm.error().message);
            auto r =
                evalModel(*lm, *reference, evalWindows,
                          progress.part(0.2 + 0.8 * double(i) / n, 0.2 + 0.8 * double(i + 1) / n));
            if (!r) {
                progress.finish();
                return fail(r.error().message);
            }
            rows.push_back({variants[i].first, std::move(r).value()});
        }
        progress.finish();
        std::printf("\n%s (llama.cpp protocol, ctx %lld, %lld windows, %lld tokens scored)\n",
                    evalText.c_str(), static_cast<long long>(ctx),
                    static_cast<long long>(rows[0].result.windows),
                    static_cast<long long>(rows[0].result.tokens));
        std::printf("%-44s %10s %10s %9s\n", "model", "PPL", "KL mean", "same top");
        std::printf("%-44s %10.4f %10s %9s\n", "float32", *rows[0].result.referencePpl, "-", "-");
        for (const Row& r : rows)
            std::printf("%-44s %10.4f %10.6f %8.2f%%\n", r.label.c_str(), r.result.ppl,
                        r.result.kl->mean, 100 * r.result.kl->sameTop);
    }

    if (!outPath.empty()) {
        ql::GgufExportOptions exportOptions;
        exportOptions.quantize.folds = &transform->folds;
        exportOptions.quantize.hessianError = false;
        exportOptions.producer = std::string("quantlens-cli smoothquant ") + QL_VERSION;
        exportOptions.calibrationPath =
            sessionPath.empty() ? "on the fly"
                                : std::filesystem::path(sessionPath).filename().string();
        auto r = ql::exportGguf(*model, ql::Layout{}, outPath, nullptr, exportOptions,
                                progress.callback());
        progress.finish();
        if (!r) return fail(r.error().message);
        std::printf("\nwrote %s (smoothed, %s)\n", outPath.c_str(),
                    formatBytes(r->fileBytes).c_str());
    }
    return kExitOk;
}

}  // namespace qlcli
