// quantlens-cli eval: perplexity (llama.cpp protocol or per document) and, with --layout, the KL
// divergence of the quantized model from the original, computed in the same pass. Both models run
// as ModelRunners on the device --device picks (the GPU by default when there is one).
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "calib/calibrate.h"
#include "cli_common.h"
#include "cli_device.h"
#include "io/model_loader.h"
#include "layout/allocate.h"
#include "layout/layout.h"
#include "model/llama_runner.h"
#include "quant/gptq_sequential.h"
#include "quant/quantize_model.h"
#include "session/session.h"

namespace qlcli {

const std::string_view kEvalHelp = R"(usage: quantlens-cli eval MODEL --text FILE [options]

Perplexity of MODEL on FILE. By default llama.cpp's protocol: the text is tokenized with BOS, cut
into windows of --ctx tokens, BOS first in each, and the second half of each window scored, so the
figure compares with llama.cpp's perplexity tool on the same file and context.

options:
  --ctx N             window length (default 512)
  --chunks N          evaluate at most N windows (default: all)
  --per-document      score each document separately (BOS prepended, up to --ctx tokens)
  --separator S       document separator for --per-document (default "<|endoftext|>")
  --documents N       at most N documents with --per-document
  --layout SPEC       quantize with these rules (or @FILE) and also report the KL divergence
                      against the unquantized model: mean, median, p99, same-top, mean delta-p
  --session S.h5      calibration session (importance weights for the layout's formats, and
                      the Hessians for gptq rules, e.g. "*=int4:g128:gptq")
  --calib-text FILE   calibrate on the fly instead (repeatable): true-sequential GPTQ, block by
                      block on the model as it is quantized; each gptq tensor's loss against
                      rtn's goes to stderr. A layout with awq rules is calibrated once on the
                      unquantized model instead (AWQ's alpha and error per tensor on stderr)
  --samples N         calibration windows for --calib-text (default 128)
  --seqlen L          tokens per calibration window (default 512)
  --seed S            seed of the calibration window offsets (default 0)
  --json              print one JSON object: ppl, tokens, ... and kld_mean, kld_p99, same_top
  --device D          cpu, cuda or auto (default: cuda when a GPU is present, else cpu)
  --precision P       f32 (default) or bf16 (GPU only: bf16 weights and activations, float32
                      accumulation). On a GPU, f32 matches the CPU's figures to float rounding
                      (float32 GEMMs, no TF32).
  --gpu-memory SIZE   GPU memory the run may plan for (12GiB, 800MiB, bytes; default: what
                      is free); a model that does not fit streams block by block
  --stream-weights    keep the weights on the host and stream them block by block
)";

namespace {

// "" when every gptq tensor of the layout can get its Hessian (from the session, or from on-the-fly
// calibration), else the error to show.
std::string checkGptqInput(const ql::Model& model, const ql::Layout& layout,
                           const ql::CalibrationResult* calib, bool calibratesOnTheFly)
{
    if (calibratesOnTheFly) return {};
    auto plan = layout.resolve(model);
    if (!plan) return plan.error().message;
    if (auto ok = ql::checkGptqCalibration(model, *plan, calib); !ok)
        return ok.error().message + (calib ? "" : " (give --session S.h5 or --calib-text FILE)");
    return {};
}

// True-sequential quantization with calibration windows from `texts`: the canonical layout and
// the quantized model, ready to run.
ql::Result<std::pair<std::string, ql::LlamaModel>> quantizeSequential(
    const ql::Model& model, const ql::Tokenizer& tokenizer, const ql::Layout& layout,
    const std::vector<std::string>& texts, ql::WindowOptions windowOptions,
    const ql::QuantizeOptions& options, const DeviceOptions& device, ProgressLine& progress)
{
    std::vector<std::string> contents;
    for (const auto& f : texts) {
        auto t = ql::readTextFile(f);
        if (!t) return t.error();
        contents.push_back(std::move(t).value());
    }
    windowOptions.addBos = tokenizer.addBosByDefault();
    auto windows = ql::makeCalibrationWindows(tokenizer, contents, windowOptions);
    if (!windows) return windows.error();
    auto llama = ql::LlamaModel::create(model, {}, progress.part(0.05, 0.07));
    if (!llama) return llama.error();
    auto q = quantizeSequentialOn(device, model, *llama, *windows, layout,
                                  progress.part(0.07, 0.25), options);
    if (!q) return q.error();
    for (const auto& f : q->model.plan.fallbacks)
        std::fprintf(stderr, "fallback: %s\n", f.tensor.c_str());
    return std::pair<std::string, ql::LlamaModel>(q->model.layout, std::move(llama).value());
}

}  // namespace

int runEval(Args args)
{
    ArgParser p(args);
    std::string modelPath, textPath, layoutArg, sessionPath, separator = "<|endoftext|>";
    std::int64_t ctx = 512, chunks = 0, documents = 0;
    bool json = false, perDocument = false;
    std::vector<std::string> calibTexts;
    ql::WindowOptions calibWindows;
    DeviceOptions device;
    while (p.next()) {
        if (parseDeviceOption(p, device)) {
        } else if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--text")) {
            if (auto v = p.value()) textPath = *v;
        } else if (p.is("--ctx")) {
            if (auto v = p.integer(4, 1 << 20)) ctx = *v;
        } else if (p.is("--chunks")) {
            if (auto v = p.integer(1, 1 << 30)) chunks = *v;
        } else if (p.is("--documents")) {
            if (auto v = p.integer(1, 1 << 30)) documents = *v;
        } else if (p.is("--per-document")) {
            perDocument = true;
        } else if (p.is("--separator")) {
            if (auto v = p.value()) separator = *v;
        } else if (p.is("--layout")) {
            if (auto v = p.value()) layoutArg = *v;
        } else if (p.is("--session")) {
            if (auto v = p.value()) sessionPath = *v;
        } else if (p.is("--calib-text")) {
            if (auto v = p.value()) calibTexts.push_back(*v);
        } else if (p.is("--samples")) {
            if (auto v = p.integer(1, 1 << 20))
                calibWindows.samples = static_cast<std::int32_t>(*v);
        } else if (p.is("--seqlen")) {
            if (auto v = p.integer(2, 1 << 20)) calibWindows.seqLen = static_cast<std::int32_t>(*v);
        } else if (p.is("--seed")) {
            if (auto v = p.integer(0, INT64_MAX))
                calibWindows.seed = static_cast<std::uint64_t>(*v);
        } else if (p.is("--json")) {
            json = true;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "eval");
    if (modelPath.empty()) return usageError("eval needs a MODEL", "eval");
    if (textPath.empty()) return usageError("eval needs --text FILE", "eval");
    if (!calibTexts.empty() && layoutArg.empty())
        return usageError("--calib-text calibrates a --layout; none was given", "eval");
    if (!calibTexts.empty() && !sessionPath.empty())
        return usageError("give --session or --calib-text, not both", "eval");
    installInterruptHandler();

    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    auto tokenizer = ql::Tokenizer::create(*model);
    if (!tokenizer) return fail(tokenizer.error().message);
    auto text = ql::readTextFile(textPath);
    if (!text) return fail(text.error().message);

    std::vector<ql::TokenWindow> windows;
    if (perDocument) {
        auto docs = ql::splitDocuments(*text, separator);
        if (documents > 0 && static_cast<std::int64_t>(docs.size()) > documents)
            docs.resize(documents);
        windows = ql::makeDocumentWindows(**tokenizer, docs, static_cast<std::int32_t>(ctx));
    } else {
        windows = ql::makeLlamaCppChunks(**tokenizer, *text, static_cast<std::int32_t>(ctx),
                                         static_cast<std::int32_t>(chunks));
    }
    if (windows.empty())
        return fail(textPath + ": too short for one window of " + std::to_string(ctx) + " tokens");

    ProgressLine progress;
    auto reference = ql::LlamaModel::create(*model, {}, progress.part(0.0, 0.05));
    if (!reference) return fail(reference.error().message);

    std::optional<ql::LlamaModel> quantized;
    std::string layoutText;
    std::optional<double> predictedKl;  // from the session's sensitivity table
    if (!layoutArg.empty()) {
        auto layout = ql::Layout::fromArgument(layoutArg);
        if (!layout) return fail(layout.error().message);
        std::optional<ql::SessionData> session;
        if (!sessionPath.empty()) {
            auto s = ql::readSession(sessionPath);
            if (!s) return fail(s.error().message);
            session = std::move(s).value();
            if (session->sensitivity)
                if (auto plan = layout->resolve(*model))
                    predictedKl = ql::predictedKl(*session->sensitivity, *plan);
        }
        const ql::CalibrationResult* calib =
            session && session->calibration ? &*session->calibration : nullptr;
        if (auto gptq = checkGptqInput(*model, *layout, calib, !calibTexts.empty()); !gptq.empty())
            return fail(gptq);
        // AWQ searches its scales on one calibration of the unquantized model, not
        // true-sequentially: --calib-text then calibrates once, as a session would.
        std::optional<ql::CalibrationResult> onTheFly;
        if (!calibTexts.empty()) {
            auto plan = layout->resolve(*model);
            if (!plan) return fail(plan.error().message);
            if (ql::usesAwq(*plan)) {
                auto c =
                    calibrateOnTheFly(*model, calibTexts, calibWindows, progress.part(0.0, 0.05));
                if (!c) return fail(c.error().message);
                onTheFly = std::move(c).value();
                calib = &*onTheFly;
            }
        }
        ql::QuantizeOptions quantizeOptions;
        GptqLog gptqLog([&progress] { progress.finish(); });
        quantizeOptions.observer = &gptqLog;
        if (!calibTexts.empty() && !onTheFly) {
            auto sequential = quantizeSequential(*model, **tokenizer, *layout, calibTexts,
                                                 calibWindows, quantizeOptions, device, progress);
            if (!sequential) return fail(sequential.error().message);
            layoutText = sequential->first;
            quantized.emplace(std::move(sequential->second));
        } else {
            auto qm = ql::quantizeModel(*model, *layout, calib, progress.part(0.05, 0.2),
                                        quantizeOptions);
            if (!qm) return fail(qm.error().message);
            layoutText = qm->layout;
            for (const auto& f : qm->plan.fallbacks)
                std::fprintf(stderr, "fallback: %s\n", f.tensor.c_str());
            ql::LlamaLoadOptions options;
            const ql::QuantizedModel& q = *qm;
            options.override =
                [&q](const ql::TensorInfo& t) -> ql::Result<std::optional<std::vector<float>>> {
                if (!q.find(t.name)) return std::optional<std::vector<float>>();
                auto w = ql::dequantizedWeights(q, t.name);
                if (!w) return w.error();
                return std::optional<std::vector<float>>(std::move(w).value());
            };
            auto lm = ql::LlamaModel::create(*model, options, progress.part(0.2, 0.25));
            if (!lm) return fail(lm.error().message);
            quantized.emplace(std::move(lm).value());
        }
    }

    auto backend = openBackend(device);
    if (!backend) return fail(backend.error().message);
    auto refRunner = ql::createLlamaRunner(**backend, *reference, device.precision, device.runner);
    if (!refRunner) return fail(refRunner.error().message);
    std::unique_ptr<ql::ModelRunner> quantRunner;
    if (quantized) {
        auto r = ql::createLlamaRunner(**backend, *quantized, device.precision, device.runner);
        if (!r) return fail(r.error().message);
        quantRunner = std::move(r).value();
    }
    const std::string deviceText = describeRunner(**refRunner);
    ql::RunnerLogitsSource refSource(**refRunner);
    std::optional<ql::RunnerLogitsSource> quantSource;
    if (quantRunner) quantSource.emplace(*quantRunner);
    const bool tty = progress.enabled();
    auto last = std::chrono::steady_clock::now();
    const auto start = last;
    auto report = [&, inner = progress.part(quantized ? 0.25 : 0.05, 1.0)](double f,
                                                                           std::string_view what) {
        if (!tty && secondsSince(last) > 5.0) {  // a line every 5 s when not on a terminal
            last = std::chrono::steady_clock::now();
            std::fprintf(stderr, "eval: %.0f%% after %.0f s\n", 100 * f, secondsSince(start));
        }
        return inner(f, what);
    };
    auto r = quantized ? ql::evaluate(*quantSource, windows, &refSource, report)
                       : ql::evaluate(refSource, windows, nullptr, report);
    progress.finish();
    if (!r) return fail(r.error().message);

    if (json) {
        nlohmann::json j;
        j["model"] = modelPath;
        j["text"] = textPath;
        j["protocol"] = perDocument ? "per-document" : "llama.cpp";
        j["device"] = (*refRunner)->device().name;
        j["precision"] = ql::precisionName(device.precision);
        j["ctx"] = ctx;
        j["ppl"] = r->ppl;
        j["ppl_stderr"] = r->pplStdError;
        j["nll"] = r->nll;
        j["tokens"] = r->tokens;
        j["windows"] = r->windows;
        j["seconds"] = r->seconds;
        j["tokens_per_second"] = r->tokensPerSecond;
        if (r->kl) {
            j["layout"] = layoutText;
            j["reference_ppl"] = *r->referencePpl;
            j["kld_mean"] = r->kl->mean;
            j["kld_median"] = r->kl->median;
            j["kld_p90"] = r->kl->p90;
            j["kld_p99"] = r->kl->p99;
            j["kld_max"] = r->kl->max;
            j["same_top"] = r->kl->sameTop;
            j["mean_delta_p"] = r->kl->meanDeltaP;
            if (predictedKl) j["kld_predicted"] = *predictedKl;
        }
        std::cout << j.dump(2) << "\n";
        return kExitOk;
    }
    std::printf("model       %s\n", modelPath.c_str());
    std::printf("text        %s (%s, ctx %lld, %lld windows)\n", textPath.c_str(),
                perDocument ? "per document" : "llama.cpp protocol", (long long)ctx,
                (long long)r->windows);
    std::printf("device      %s\n", deviceText.c_str());
    if (r->kl) {
        std::printf("layout      %s\n", layoutText.c_str());
        std::printf("PPL         %.4f +/- %.4f (unquantized %.4f)\n", r->ppl, r->pplStdError,
                    *r->referencePpl);
        std::printf("KL mean     %.6f   median %.6f   p90 %.6f   p99 %.6f   max %.6f\n",
                    r->kl->mean, r->kl->median, r->kl->p90, r->kl->p99, r->kl->max);
        if (predictedKl)
            std::printf("KL predicted %.6f (sum of the session's per-tensor ΔKL)\n", *predictedKl);
        std::printf("same top    %.2f%%\n", 100 * r->kl->sameTop);
        std::printf("mean dp     %+.4f%%\n", 100 * r->kl->meanDeltaP);
    } else {
        std::printf("PPL         %.4f +/- %.4f\n", r->ppl, r->pplStdError);
    }
    std::printf("tokens      %lld scored, %.0f tokens/s, %.1f s\n", (long long)r->tokens,
                r->tokensPerSecond, r->seconds);
    return kExitOk;
}

}  // namespace qlcli
