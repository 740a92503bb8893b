// `quantlens-cli quantize MODEL --layout SPEC|@FILE --out OUT.gguf [options]`: quantize a model
// with layout rules and write a GGUF file, streaming one tensor at a time (core/export).
//
// Everything is checked before any work starts (layout syntax, model, session and its match to
// the model, output folder, the plan for every tensor, methods that exist, a Hessian for every
// gptq tensor), so bad input ends in one line on stderr and exit status 2; a failure while
// writing exits 1 and leaves no file.
// GPTQ rules take their Hessians from --session, or, with --text, from calibration done on the fly
// block by block on the model being quantized (true-sequential, quant/gptq_sequential.h): the
// quantized model is then held in memory and written afterwards. Each GPTQ tensor's loss against
// rtn's, and every automatic raise of its dampening, go to stderr as the tensor is done.
// stdout gets the report: a table per tensor, the fallbacks, the tensors written dequantized
// (formats llama.cpp cannot store), warnings and totals, or all of it as one JSON object (--json).
// Progress goes to stderr (a rewritten line on a terminal, a line per 10% otherwise).
//
// runQuantize receives argv[0] = the subcommand word ("quantize") and the options after it.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "calib/calibration.h"
#include "calib/dataset.h"
#include "cli_common.h"
#include "cli_device.h"
#include "export/gguf_writer.h"
#include "io/model_loader.h"
#include "layout/layout.h"
#include "model/llama.h"
#include "quant/gptq_sequential.h"
#include "session/session.h"

namespace {

void printUsage(std::FILE* to)
{
    std::fprintf(
        to,
        "usage: quantlens-cli quantize MODEL --layout SPEC|@FILE --out OUT.gguf\n"
        "                              [--session SESSION.h5 | --text FILE... [--samples N]\n"
        "                              [--seqlen L] [--seed S]] [--dequant-dtype f16|f32]\n"
        "                              [--device auto|cpu|cuda] [--precision f32|bf16]\n"
        "                              [--gpu-memory SIZE] [--stream-weights]\n"
        "                              [--threads N] [--json]\n"
        "Quantizes MODEL (GGUF, safetensors folder, llama2.c .bin) with layout rules and writes\n"
        "a GGUF file.\n"
        "  --layout  rules PATTERN=FORMAT[:option...] separated by ';' (later rules win),\n"
        "            e.g. \"*=q4_k; output.weight=q6_k; blk.0.*=q8_0\" or \"*=int4:g128:asym\";\n"
        "            the method gptq (\"*=int4:g128:gptq\", options damp=F block=N actorder\n"
        "            static) needs Hessians: --session, or --text\n"
        "            @FILE reads them from a file (one or more per line, '#' comments).\n"
        "            Norms and 1-D tensors stay F32 unless a rule names them exactly.\n"
        "  --session calibration session: importance weights for the llama.cpp formats, the\n"
        "            Hessian-weighted output error per tensor, and the Hessians for gptq\n"
        "  --text    calibration text (repeatable): calibrate on the fly, block by block on the\n"
        "            model as it is quantized (true-sequential GPTQ); --samples windows (default\n"
        "            128) of --seqlen tokens (default 512) at offsets seeded by --seed (0);\n"
        "            a layout with awq rules is calibrated once on the unquantized model\n"
        "  --device  where --text's true-sequential passes and GPTQ run: auto (a CUDA GPU when\n"
        "            present, default), cuda or cpu; a GPU failure falls back to the CPU\n"
        "  --precision  the GPU passes' precision (bf16 default on a GPU; the CPU is f32)\n"
        "  --gpu-memory SIZE, --stream-weights  as for calibrate: stream the weights block by\n"
        "            block when the model does not fit (or always)\n"
        "  --dequant-dtype  how formats llama.cpp cannot store (nf4, fp4, fp8, int-n) are\n"
        "            written: their decoded values as f16 (default) or f32\n"
        "  --json    the report as JSON on stdout\n"
        "Exit status: 0 done, 2 bad input, 1 failure while quantizing or writing.\n");
}

int badInput(const std::string& message)
{
    std::fprintf(stderr, "quantize: %s\n", message.c_str());
    return 2;
}

std::string humanBytes(double b)
{
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
    return buf;
}

std::string shapeText(const std::vector<std::int64_t>& shape)
{
    std::string s;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += 'x';
        s += std::to_string(shape[i]);
    }
    return s;
}

std::string number(const char* fmt, double v)
{
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[48];
    std::snprintf(buf, sizeof buf, fmt, v);
    return buf;
}

nlohmann::json jsonNumber(double v)
{
    if (!std::isfinite(v)) return nullptr;  // JSON has no infinity (exact tensors: SQNR = inf)
    return v;
}

std::string choiceText(const ql::Layout& layout, const ql::TensorPlan& p)
{
    switch (p.choice) {
        case ql::PlanChoice::Rule: return "rule " + std::to_string(p.rule + 1);
        case ql::PlanChoice::KeptVector: return "1-D, kept";
        case ql::PlanChoice::Unmatched: return "no rule, kept";
    }
    return {};
}

class StderrProgress {
public:
    StderrProgress() : m_tty(::isatty(2) != 0) {}
    bool operator()(double f, std::string_view what)
    {
        const int pct = int(f * 100.0 + 1e-9);
        if (m_tty) {
            if (pct != m_last || what != m_what) {
                std::fprintf(stderr, "\r[%3d%%] %-48.48s", pct, std::string(what).c_str());
                std::fflush(stderr);
            }
        } else if (pct / 10 != m_last / 10) {
            std::fprintf(stderr, "quantize: %d%% %s\n", pct, std::string(what).c_str());
        }
        m_last = pct;
        m_what = what;
        return true;
    }
    void finish()
    {
        if (m_tty && m_last >= 0) std::fprintf(stderr, "\r%60s\r", "");
    }

private:
    bool m_tty;
    int m_last = -1;
    std::string m_what;
};

}  // namespace

int runQuantize(int argc, char** argv)
{
    std::string modelPath, layoutArg, outPath, sessionPath, dequant = "f16";
    bool json = false, haveLayout = false;
    int threads = 0;
    std::vector<std::string> textFiles;
    ql::WindowOptions windowOptions;
    qlcli::DeviceOptions device;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&](const char* what, std::string& into) {
            if (i + 1 >= argc) return false;
            into = argv[++i];
            (void)what;
            return true;
        };
        if (a == "-h" || a == "--help") {
            printUsage(stdout);
            return 0;
        } else if (a == "--layout") {
            if (!value("--layout", layoutArg)) return badInput("--layout needs a value");
            haveLayout = true;
        } else if (a == "--out" || a == "-o") {
            if (!value("--out", outPath)) return badInput("--out needs a value");
        } else if (a == "--session") {
            if (!value("--session", sessionPath)) return badInput("--session needs a value");
        } else if (a == "--dequant-dtype") {
            if (!value("--dequant-dtype", dequant))
                return badInput("--dequant-dtype needs a value");
        } else if (a == "--text") {
            std::string v;
            if (!value("--text", v)) return badInput("--text needs a value");
            textFiles.push_back(v);
        } else if (a == "--samples" || a == "--seqlen" || a == "--seed") {
            std::string v;
            if (!value(a.c_str(), v)) return badInput(a + " needs a value");
            char* end = nullptr;
            const long long n = std::strtoll(v.c_str(), &end, 10);
            const long long least = a == "--seed" ? 0 : (a == "--seqlen" ? 2 : 1);
            if (v.empty() || *end || n < least || n > (1LL << 30))
                return badInput(a + " needs a whole number >= " + std::to_string(least) +
                                ", not '" + v + "'");
            if (a == "--samples") windowOptions.samples = std::int32_t(n);
            if (a == "--seqlen") windowOptions.seqLen = std::int32_t(n);
            if (a == "--seed") windowOptions.seed = std::uint64_t(n);
        } else if (a == "--threads") {
            std::string v;
            if (!value("--threads", v)) return badInput("--threads needs a value");
            char* end = nullptr;
            threads = int(std::strtol(v.c_str(), &end, 10));
            if (v.empty() || *end || threads < 0)
                return badInput("--threads needs a number >= 0, not '" + v + "'");
        } else if (a == "--device") {
            std::string v;
            if (!value("--device", v)) return badInput("--device needs a value");
            if (v == "cpu")
                device.kind = ql::BackendKind::Cpu;
            else if (v == "cuda" || v == "gpu")
                device.kind = ql::BackendKind::Cuda;
            else if (v == "auto")
                device.kind = ql::BackendKind::Auto;
            else
                return badInput("--device is cpu, cuda or auto, not '" + v + "'");
        } else if (a == "--precision") {
            std::string v;
            if (!value("--precision", v)) return badInput("--precision needs a value");
            auto precision = ql::parsePrecision(v);
            if (!precision) return badInput("--precision is f32 or bf16, not '" + v + "'");
            device.precision = *precision;
            device.precisionGiven = true;
        } else if (a == "--gpu-memory") {
            std::string v;
            if (!value("--gpu-memory", v)) return badInput("--gpu-memory needs a value");
            auto bytes = qlcli::parseByteSize(v);
            if (!bytes || *bytes == 0)
                return badInput("--gpu-memory takes a size such as 12GiB, not '" + v + "'");
            device.runner.memoryLimit = *bytes;
        } else if (a == "--stream-weights") {
            device.runner.residency = ql::WeightResidency::Streamed;
        } else if (a == "--json") {
            json = true;
        } else if (!a.empty() && a[0] == '-') {
            return badInput("unknown option " + a + " (see quantlens-cli quantize --help)");
        } else if (modelPath.empty()) {
            modelPath = a;
        } else {
            return badInput("unexpected argument " + a + " (one MODEL only)");
        }
    }
    if (modelPath.empty()) return badInput("no MODEL given (see quantlens-cli quantize --help)");
    if (!haveLayout) return badInput("no --layout given, e.g. --layout '*=q4_k'");
    if (outPath.empty()) return badInput("no --out OUT.gguf given");
    if (dequant != "f16" && dequant != "f32")
        return badInput("--dequant-dtype must be f16 or f32, not '" + dequant + "'");
    if (!sessionPath.empty() && !textFiles.empty())
        return badInput("give --session or --text, not both");

    auto layout = ql::Layout::fromArgument(layoutArg);
    if (!layout) return badInput(layout.error().message);
    auto model = ql::openModel(modelPath);
    if (!model) return badInput(model.error().message);

    std::optional<ql::SessionData> session;
    if (!sessionPath.empty()) {
        auto s = ql::readSession(sessionPath);
        if (!s) return badInput(s.error().message);
        if (!s->calibration)
            return badInput(sessionPath + " holds no calibration (run quantlens-cli calibrate)");
        auto id = ql::identifyModel(*model);
        if (!id) return badInput(id.error().message);
        if (auto same = ql::checkModelIdentity(s->model, *id); !same)
            return badInput(sessionPath + ": " + same.error().message);
        session = std::move(s).value();
    }

    namespace fs = std::filesystem;
    const fs::path out(outPath);
    const fs::path folder = out.has_parent_path() ? out.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(folder, ec))
        return badInput("cannot write " + outPath + ": folder " + folder.string() +
                        " does not exist");
    if (fs::is_directory(out, ec)) return badInput("cannot write " + outPath + ": it is a folder");

    auto plan = layout->resolve(*model);
    if (!plan) return badInput(plan.error().message);
    if (auto ok = ql::checkMethodsAvailable(*layout, *plan); !ok)
        return badInput(ok.error().message);
    // AWQ searches its scales on one calibration of the unquantized model: --text then
    // calibrates once, as a session would, instead of quantizing true-sequentially.
    std::optional<ql::CalibrationResult> onTheFly;
    if (!textFiles.empty() && ql::usesAwq(*plan)) {
        auto c = qlcli::calibrateOnTheFly(*model, textFiles, windowOptions, {});
        if (!c) return badInput(c.error().message);
        onTheFly = std::move(c).value();
        textFiles.clear();
    }
    const ql::CalibrationResult* calibration =
        onTheFly ? &*onTheFly : (session ? &*session->calibration : nullptr);
    if (textFiles.empty()) {
        if (auto ok = ql::checkGptqCalibration(*model, *plan, calibration); !ok)
            return badInput(ok.error().message +
                            (session ? "" : " (give --session SESSION.h5 or --text FILE)"));
    }

    // On-the-fly calibration: windows and the model's forward pass, ready before any work.
    std::vector<ql::TokenWindow> windows;
    std::optional<ql::LlamaModel> llama;
    if (!textFiles.empty()) {
        auto tokenizer = ql::Tokenizer::create(*model);
        if (!tokenizer) return badInput(tokenizer.error().message);
        std::vector<std::string> texts;
        for (const auto& f : textFiles) {
            auto t = ql::readTextFile(f);
            if (!t) return badInput(t.error().message);
            texts.push_back(std::move(t).value());
        }
        windowOptions.addBos = (*tokenizer)->addBosByDefault();
        auto w = ql::makeCalibrationWindows(**tokenizer, texts, windowOptions);
        if (!w) return badInput(w.error().message);
        windows = std::move(w).value();
        auto lm = ql::LlamaModel::create(*model);
        if (!lm) return badInput(lm.error().message);
        llama.emplace(std::move(lm).value());
    }

    ql::GgufExportOptions options;
    options.dequantType = dequant == "f32" ? ql::TensorType::F32 : ql::TensorType::F16;
    options.quantize.threads = threads;
    options.producer = std::string("quantlens-cli ") + QL_VERSION;
    if (session) options.calibrationPath = fs::path(sessionPath).filename().string();
    if (onTheFly) {
        options.calibrationPath = "on";
        for (const auto& f : onTheFly->config.textFiles)
            options.calibrationPath += " " + fs::path(f).filename().string();
        options.calibrationPath += " (" + std::to_string(onTheFly->config.samples) + " x " +
                                   std::to_string(windowOptions.seqLen) + " tokens, seed " +
                                   std::to_string(windowOptions.seed) + ")";
    }
    if (!textFiles.empty()) {
        options.calibrationPath = "true-sequential on";
        for (const auto& f : textFiles)
            options.calibrationPath += " " + fs::path(f).filename().string();
        options.calibrationPath += " (" + std::to_string(windows.size()) + " x " +
                                   std::to_string(windowOptions.seqLen) + " tokens, seed " +
                                   std::to_string(windowOptions.seed) + ")";
    }

    StderrProgress progress;
    qlcli::GptqLog gptqLog([&progress] { progress.finish(); });
    options.quantize.observer = &gptqLog;
    auto onProgress = [&](double f, std::string_view what) { return progress(f, what); };
    ql::Result<ql::GgufWriteReport> report = ql::Error{};
    if (llama) {
        auto seq = qlcli::quantizeSequentialOn(
            device, *model, *llama, windows, *layout,
            [&](double f, std::string_view what) { return progress(0.9 * f, what); },
            options.quantize);
        if (!seq) {
            progress.finish();
            std::fprintf(stderr, "quantize: %s\n", seq.error().message.c_str());
            return seq.error().code == ql::ErrorCode::InvalidArgument ? 2 : 1;
        }
        report = ql::writeGguf(
            *model, seq->model, outPath, options,
            [&](double f, std::string_view what) { return progress(0.9 + 0.1 * f, what); });
        if (report) report->seconds += seq->model.seconds;
    } else {
        report = ql::exportGguf(*model, *layout, outPath, calibration, options, onProgress);
    }
    progress.finish();
    if (!report) {
        std::fprintf(stderr, "quantize: %s\n", report.error().message.c_str());
        return report.error().code == ql::ErrorCode::InvalidArgument ? 2 : 1;
    }
    const ql::GgufWriteReport& r = *report;
    const bool hessian = session.has_value() || !textFiles.empty() || onTheFly.has_value();
    std::uint64_t sourceBytes = 0;
    for (const auto& t : model->tensors) sourceBytes += t.bytes;
    const double weights = double(std::max<std::int64_t>(1, r.weights));

    if (json) {
        nlohmann::json j;
        j["model"] = modelPath;
        j["layout"] = layout->toString();
        j["out"] = outPath;
        if (session) j["session"] = sessionPath;
        j["dequant_dtype"] = dequant;
        if (!textFiles.empty()) {
            j["text"] = textFiles;
            j["samples"] = windowOptions.samples;
            j["seqlen"] = windowOptions.seqLen;
            j["seed"] = windowOptions.seed;
        }
        auto& ts = j["tensors"] = nlohmann::json::array();
        for (const auto& t : r.tensors) {
            const auto& p = t.report.plan;
            nlohmann::json e;
            e["name"] = p.name;
            e["shape"] = p.shape;
            e["requested"] = ql::formatToString(p.requested);
            e["format"] = ql::formatToString(p.format);
            e["stored_type"] = std::string(ql::tensorTypeName(t.storedType));
            e["dequantized"] = t.dequantized;
            e["method"] = ql::quantMethodName(p.method);
            e["choice"] = choiceText(*layout, p);
            e["bpw"] = double(t.report.storedBits) / double(p.elementCount());
            e["bytes"] = t.bytes;
            e["mse"] = t.report.metrics.mse;
            e["sqnr_db"] = jsonNumber(t.report.metrics.sqnrDb);
            e["max_abs_error"] = t.report.metrics.maxAbsError;
            if (t.report.outputError) {
                e["hessian_error"] = t.report.outputError->weighted;
                e["hessian_error_relative"] = t.report.outputError->relative;
            }
            if (t.dequantized) e["storage_error"] = jsonNumber(t.storageError);
            if (!t.report.probe.empty()) e["probe"] = t.report.probe;
            e["importance"] = t.report.usedImportance;
            if (!t.report.note.empty()) e["note"] = t.report.note;
            if (const auto& g = t.report.gptq) {
                e["gptq"] = {{"options", ql::gptqOptionsText(g->options)},
                             {"loss", g->loss},
                             {"rtn_loss", g->rtnLoss},
                             {"rtn_hessian_error", g->rtnError.weighted},
                             {"rtn_hessian_error_relative", g->rtnError.relative},
                             {"damp", g->damp},
                             {"damp_raises", g->dampRaises},
                             {"dead_columns", g->deadColumns},
                             {"seconds", g->seconds}};
            }
            e["seconds"] = t.report.seconds;
            ts.push_back(std::move(e));
        }
        auto& fb = j["fallbacks"] = nlohmann::json::array();
        for (const auto& f : r.fallbacks)
            fb.push_back({{"tensor", f.tensor},
                          {"wanted", ql::formatToString(f.wanted)},
                          {"got", ql::formatToString(f.got)},
                          {"why", f.why}});
        j["warnings"] = r.warnings;
        j["notes"] = r.notes;
        j["totals"] = {{"tensors", r.tensors.size()},
                       {"weights", r.weights},
                       {"source_bytes", sourceBytes},
                       {"file_bytes", r.fileBytes},
                       {"tensor_bytes", r.tensorBytes},
                       {"file_bpw", 8.0 * double(r.tensorBytes) / weights},
                       {"format_bpw", double(r.formatBits) / weights},
                       {"seconds", r.seconds}};
        std::printf("%s\n", j.dump(2).c_str());
        return 0;
    }

    std::size_t nameWidth = 6;
    for (const auto& t : r.tensors) nameWidth = std::max(nameWidth, t.report.plan.name.size());
    std::printf("%-*s  %-9s  %-16s %-6s %6s  %10s  %8s  %9s", int(nameWidth), "tensor", "shape",
                "format", "stored", "bpw", "MSE", "SQNR dB", "max err");
    if (hessian) std::printf("  %10s", "H err rel");
    std::printf("  note\n");
    int dequantized = 0;
    for (const auto& t : r.tensors) {
        const auto& p = t.report.plan;
        const auto& m = t.report.metrics;
        std::string note = choiceText(*layout, p);
        if (p.fellBack()) note += ", fallback from " + ql::formatToString(p.requested);
        if (t.dequantized) {
            note += ", dequantized";
            ++dequantized;
        }
        if (t.report.copied) note += ", copied";
        if (t.report.gptq)
            note += ", gptq (loss " +
                    number("%.0f%%", t.report.gptq->rtnLoss > 0
                                         ? 100.0 * t.report.gptq->loss / t.report.gptq->rtnLoss
                                         : 100.0) +
                    " of rtn's)";
        std::printf("%-*s  %-9s  %-16s %-6s %6.2f  %10s  %8s  %9s", int(nameWidth), p.name.c_str(),
                    shapeText(p.shape).c_str(), ql::formatToString(p.format).c_str(),
                    std::string(ql::tensorTypeName(t.storedType)).c_str(),
                    double(t.report.storedBits) / double(p.elementCount()),
                    number("%.3e", m.mse).c_str(), number("%.2f", m.sqnrDb).c_str(),
                    number("%.3e", m.maxAbsError).c_str());
        if (hessian)
            std::printf("  %10s", t.report.outputError
                                      ? number("%.3e", t.report.outputError->relative).c_str()
                                      : "-");
        std::printf("  %s\n", note.c_str());
    }
    if (!r.fallbacks.empty()) {
        std::printf("\nfallbacks (%zu): the format does not fit the tensor's row length\n",
                    r.fallbacks.size());
        for (const auto& f : r.fallbacks)
            std::printf("  %s: %s -> %s (%s)\n", f.tensor.c_str(),
                        ql::formatToString(f.wanted).c_str(), ql::formatToString(f.got).c_str(),
                        f.why.c_str());
    }
    if (dequantized > 0) {
        std::printf(
            "\ndequantized for research (%d): llama.cpp has no type for these formats; "
            "the file holds their decoded values as %s\n",
            dequantized, dequant.c_str());
        for (const auto& t : r.tensors) {
            if (!t.dequantized) continue;
            std::printf("  %s: %s stored as %s", t.report.plan.name.c_str(),
                        ql::formatToString(t.report.plan.format).c_str(),
                        std::string(ql::tensorTypeName(t.storedType)).c_str());
            if (t.storedType == ql::TensorType::F16)
                std::printf(" (F16 rounding adds at most %s)",
                            number("%.2e", t.storageError).c_str());
            std::printf("\n");
        }
    }
    std::vector<std::string> notes;
    for (const auto& t : r.tensors)
        if (!t.report.note.empty()) notes.push_back(t.report.plan.name + ": " + t.report.note);
    if (!r.warnings.empty() || !notes.empty()) {
        std::printf("\nwarnings:\n");
        for (const auto& w : r.warnings) std::printf("  %s\n", w.c_str());
        for (const auto& w : notes) std::printf("  %s\n", w.c_str());
    }
    if (!r.notes.empty()) {
        std::printf("\nnotes:\n");
        for (const auto& n : r.notes) std::printf("  %s\n", n.c_str());
    }
    std::printf("\ntotals: %zu tensors, %lld weights\n", r.tensors.size(),
                static_cast<long long>(r.weights));
    std::printf("  source    %s (%.2f bits per weight)\n", humanBytes(double(sourceBytes)).c_str(),
                8.0 * double(sourceBytes) / weights);
    std::printf("  formats   %s (%.2f bits per weight, as the formats count)\n",
                humanBytes(double(r.formatBits) / 8.0).c_str(), double(r.formatBits) / weights);
    std::printf("  written   %s tensor data (%.2f bits per weight), file %s\n",
                humanBytes(double(r.tensorBytes)).c_str(), 8.0 * double(r.tensorBytes) / weights,
                humanBytes(double(r.fileBytes)).c_str());
    std::printf("  time      %.2f s\n", r.seconds);
    std::printf("wrote %s\n", outPath.c_str());
    return 0;
}
