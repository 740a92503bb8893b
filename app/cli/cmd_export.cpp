// quantlens-cli export: quantize MODEL with a layout (in memory) and write it as GGUF, GPTQ
// safetensors or fake-quant safetensors (core/export). The compatibility check runs first and
// its findings (what the target cannot store, and the fallback taken) go to stdout before any
// work; writes are staged and renamed at the end, so Ctrl-C leaves nothing behind.
// GGUF goes through the same core call as `quantize` (exportGguf, one tensor at a time).
#include <cstdio>
#include <filesystem>
#include <optional>

#include "cli_common.h"
#include "export/gguf_writer.h"
#include "export/hf_export.h"
#include "io/model_loader.h"
#include "layout/layout.h"
#include "session/session.h"

namespace qlcli {

const std::string_view kExportHelp =
    R"(usage: quantlens-cli export MODEL --layout SPEC [--session S.h5]
           (--gguf OUT.gguf | --gptq OUTDIR | --fake-quant OUTDIR) [options]

Quantizes MODEL with the layout rules and writes it:
  --gguf OUT.gguf     GGUF for llama.cpp (as `quantize` writes it)
  --gptq OUTDIR       Hugging Face safetensors in the GPTQ layout (qweight/qzeros/scales/g_idx,
                      quantization_config in config.json), tokenizer files copied
  --fake-quant OUTDIR plain Hugging Face safetensors of the decoded (quantized) weights

options:
  --session S.h5      calibration session (Hessians for gptq rules, importance weights); the
                      model must be the one it was made with
  --dtype D           fake-quant: f16 (default), bf16 or f32; gptq: the unquantized tensors
                      (default f16); gguf: formats llama.cpp cannot store (f16 or f32)
  --fallback F        gptq: a layer in another format than the checkpoint's keeps its decoded
                      values as a float layer (keep, default) or is re-quantized from the source
                      weights with RTN (requantize; also picks int4:g128 when no layer is int-n)
  --check             print the compatibility report and stop
)";

namespace {

std::optional<ql::TensorType> dtypeOf(const std::string& s)
{
    if (s == "f16") return ql::TensorType::F16;
    if (s == "bf16") return ql::TensorType::BF16;
    if (s == "f32") return ql::TensorType::F32;
    return std::nullopt;
}

void printCompatibility(const ql::ExportCompatibility& c)
{
    std::printf("target      %s\n", ql::exportTargetName(c.target));
    for (const auto& n : c.notes) std::printf("note        %s\n", n.c_str());
    if (c.issues.empty()) {
        std::printf("compatible  every tensor is stored as planned\n");
    } else {
        std::printf("cannot store %zu tensor(s) as planned; fallback taken:\n", c.issues.size());
        for (const auto& line : ql::compatibilityLines(c)) std::printf("  %s\n", line.c_str());
    }
    for (const auto& w : c.warnings) std::printf("warning     %s\n", w.c_str());
}

}  // namespace

int runExport(Args args)
{
    ArgParser p(args);
    std::string modelPath, layoutArg, sessionPath, out, dtypeArg, fallback = "keep";
    std::optional<ql::ExportTarget> target;
    bool checkOnly = false;
    while (p.next()) {
        if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--layout")) {
            if (auto v = p.value()) layoutArg = *v;
        } else if (p.is("--session")) {
            if (auto v = p.value()) sessionPath = *v;
        } else if (p.is("--gguf") || p.is("--gptq") || p.is("--fake-quant")) {
            const ql::ExportTarget t = p.is("--gguf")   ? ql::ExportTarget::Gguf
                                       : p.is("--gptq") ? ql::ExportTarget::GptqSafetensors
                                                        : ql::ExportTarget::FakeQuantSafetensors;
            if (target) p.error("give one of --gguf, --gptq, --fake-quant");
            if (auto v = p.value()) {
                out = *v;
                target = t;
            }
        } else if (p.is("--dtype")) {
            if (auto v = p.value()) dtypeArg = *v;
        } else if (p.is("--fallback")) {
            if (auto v = p.value()) fallback = *v;
        } else if (p.is("--check")) {
            checkOnly = true;
        } else if (p.is("--help") || p.is("-h")) {
            std::fwrite(kExportHelp.data(), 1, kExportHelp.size(), stdout);
            return kExitOk;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "export");
    if (modelPath.empty()) return usageError("export needs a MODEL", "export");
    if (layoutArg.empty()) return usageError("export needs --layout SPEC", "export");
    if (!target) return usageError("export needs --gguf, --gptq or --fake-quant", "export");
    if (fallback != "keep" && fallback != "requantize")
        return usageError("--fallback is keep or requantize, not " + fallback, "export");
    ql::HfExportOptions options;
    options.producer = std::string("quantlens-cli ") + QL_VERSION;
    options.fallback =
        fallback == "keep" ? ql::GptqFallback::KeepFloat : ql::GptqFallback::Requantize;
    if (!dtypeArg.empty()) {
        auto t = dtypeOf(dtypeArg);
        if (!t) return usageError("--dtype is f16, bf16 or f32, not " + dtypeArg, "export");
        if (*target == ql::ExportTarget::Gguf && *t == ql::TensorType::BF16)
            return usageError("--dtype for GGUF is f16 or f32", "export");
        options.floatType = *t;
        options.ggufDequantType = *t;
    }

    auto layout = ql::Layout::fromArgument(layoutArg);
    if (!layout) return fail(layout.error().message);
    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    std::optional<ql::SessionData> session;
    if (!sessionPath.empty()) {
        auto s = ql::readSession(sessionPath);
        if (!s) return fail(s.error().message);
        auto id = ql::identifyModel(*model);
        if (!id) return fail(id.error().message);
        if (auto same = ql::checkModelIdentity(s->model, *id); !same)
            return fail(sessionPath + ": " + same.error().message);
        session = std::move(s).value();
    }
    const ql::CalibrationResult* calib =
        session && session->calibration ? &*session->calibration : nullptr;
    auto plan = layout->resolve(*model);
    if (!plan) return fail(plan.error().message);
    if (auto ok = ql::checkMethodsAvailable(*layout, *plan); !ok) return fail(ok.error().message);
    if (auto ok = ql::checkGptqCalibration(*model, *plan, calib); !ok)
        return fail(ok.error().message + (calib ? "" : " (give --session S.h5)"));
    auto compat = ql::checkExportCompatibility(*target, *model, *plan, options);
    if (!compat) return fail(compat.error().message);
    printCompatibility(*compat);
    if (checkOnly) return kExitOk;

    ProgressLine progress;
    GptqLog gptqLog([&progress] { progress.finish(); });
    if (*target == ql::ExportTarget::Gguf) {
        ql::GgufExportOptions g;
        g.dequantType = options.ggufDequantType;
        g.producer = options.producer;
        g.quantize.observer = &gptqLog;
        if (!sessionPath.empty())
            g.calibrationPath = std::filesystem::path(sessionPath).filename().string();
        auto r = ql::exportGguf(*model, *layout, out, calib, g, progress.callback());
        progress.finish();
        if (!r) return fail(r.error().message);
        for (const auto& w : r->warnings) std::printf("warning     %s\n", w.c_str());
        std::printf("wrote       %s (%s, %.2f s)\n", out.c_str(), formatBytes(r->fileBytes).c_str(),
                    r->seconds);
        return kExitOk;
    }
    ql::QuantizeOptions qo;
    qo.observer = &gptqLog;
    auto qm = ql::quantizeModel(*model, *layout, calib, progress.part(0.0, 0.8), qo);
    if (!qm) {
        progress.finish();
        return fail(qm.error().message);
    }
    auto r = *target == ql::ExportTarget::GptqSafetensors
                 ? ql::writeGptqFolder(*model, *qm, out, options, progress.part(0.8, 1.0))
                 : ql::writeFakeQuantFolder(*model, *qm, out, options, progress.part(0.8, 1.0));
    progress.finish();
    if (!r) return fail(r.error().message);
    for (const auto& n : r->notes) std::printf("note        %s\n", n.c_str());
    for (const auto& w : r->warnings) std::printf("warning     %s\n", w.c_str());
    for (const auto& [name, bytes] : r->files)
        std::printf("file        %-24s %s\n", name.c_str(), formatBytes(bytes).c_str());
    std::printf("wrote       %s (%s, %.2f s)\n", out.c_str(), formatBytes(r->totalBytes).c_str(),
                r->seconds + qm->seconds);
    return kExitOk;
}

}  // namespace qlcli
