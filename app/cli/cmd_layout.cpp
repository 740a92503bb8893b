// quantlens-cli sensitivity / allocate / layout: per-tensor sensitivity sweeps stored in a
// session, automatic mixed-precision allocation from them, and size accounting of any layout.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "calib/dataset.h"
#include "cli_common.h"
#include "io/model_loader.h"
#include "layout/allocate.h"
#include "layout/sensitivity.h"
#include "layout/size.h"
#include "layout/tensor_layout.h"
#include "model/tokenizer.h"
#include "session/session.h"

namespace qlcli {

const std::string_view kSensitivityHelp =
    R"(usage: quantlens-cli sensitivity MODEL --session S.h5 --text FILE [options]

Per-tensor sensitivity: each tensor alone is quantized with each candidate format (rtn, llama.cpp
fallbacks applied), and the mean KL divergence from the unquantized model is measured on a few
windows of FILE (llama.cpp's chunking). Runs on the GPU when one is present (--device). Cheap
proxies (Hessian-weighted error and activation-weighted MSE from the session's calibration,
activation energy, kurtosis, outlier share) are printed with their Spearman rank correlation to
the measured figures. The table is stored in the session (group /sensitivity); a session file
that does not exist yet is created.

options:
  --formats LIST     comma-separated candidates (default q2_k,q3_k,q4_k,q5_k,q6_k,q8_0,q4_0,q4_1,
                     q5_0,q5_1,f16,int4:g32,int8)
  --ctx N            window length (default 128)
  --chunks N         windows (default 8)
  --tensors GLOB     only these tensors (default *)
  --out S.h5         write the session here (default: --session)
  --device D         cpu, cuda or auto (default auto)
  --json             print the table as JSON
)";

const std::string_view kAllocateHelp =
    R"(usage: quantlens-cli allocate MODEL --session S.h5 (--target-bpw B | --target-bytes N) --out LAYOUT.txt

Chooses a format per tensor minimizing the sum of the measured ΔKL (the session's /sensitivity,
from `quantlens-cli sensitivity`) under a size target, by dynamic programming over the measured
curves, and writes the layout as rules (use it as --layout @LAYOUT.txt).

options:
  --target-bytes N   the whole exported GGUF file, header and metadata included
  --target-size-of F the size of an existing file F (e.g. llama.cpp's Q4_K_M of the model)
  --target-bpw B     tensor data bits per weight (llama.cpp's bpw)
  --method M         rtn (default) or gptq[:opts], written on every rule (e.g. gptq:damp=0.01)
  --ties T           none (GGUF, default) or gptq-safetensors (q/k/v and gate/up share a format)
  --formats LIST     only these stored formats
  --reserve N        header bytes kept free for provenance the export adds (default 128: the
                     calibration note of quantize --text)
  --json             print the result as JSON
)";

const std::string_view kLayoutHelp =
    R"(usage: quantlens-cli layout MODEL (--layout SPEC | --preset NAME) [options]

Size accounting of a layout: per tensor (format after fallback, GGUF type, bytes, bpw), per block,
and the whole exported GGUF file (header and metadata included); with --session holding a
sensitivity table, the predicted KL divergence; with --gpu-memory, whether the model fits.

options:
  --layout SPEC      rules or @FILE
  --preset NAME      q4_k_m, edges8, uniform:FORMAT
  --ties T           none or gptq-safetensors: raise tie groups to one format first
  --session S.h5     predicted ΔKL from its sensitivity table
  --ctx N            context for the memory estimate (default 4096)
  --gpu-memory BYTES device memory to check against (e.g. 8e9)
  --print-rules      print the per-tensor layout as rules and stop
  --json             JSON output
)";

namespace {

std::vector<std::string> splitList(const std::string& s)
{
    std::vector<std::string> out;
    std::stringstream in(s);
    for (std::string item; std::getline(in, item, ',');)
        if (!item.empty()) out.push_back(item);
    return out;
}

std::optional<ql::BackendKind> parseBackend(const std::string& s)
{
    if (s == "cpu") return ql::BackendKind::Cpu;
    if (s == "cuda" || s == "gpu") return ql::BackendKind::Cuda;
    if (s == "auto") return ql::BackendKind::Auto;
    return std::nullopt;
}

std::string num(double v)
{
    if (!std::isfinite(v)) return "-";
    char b[32];
    std::snprintf(b, sizeof b, "%.4g", v);
    return b;
}

ql::Status writeTextAtomically(const std::string& path, const std::string& text)
{
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    {
        std::ofstream f(tmp, std::ios::binary);
        f << text;
        if (!f) return ql::makeError(ql::ErrorCode::Io, "cannot write " + tmp);
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        return ql::makeError(ql::ErrorCode::Io, "cannot rename " + tmp + " to " + path);
    }
    return {};
}

}  // namespace

int runSensitivity(Args args)
{
    ArgParser p(args);
    std::string modelPath, sessionPath, outPath, textPath, tensors = "*";
    std::vector<std::string> formats;
    std::int64_t ctx = 128, chunks = 8;
    ql::BackendKind backend = ql::BackendKind::Auto;
    bool json = false;
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kSensitivityHelp.data(), 1, kSensitivityHelp.size(), stdout);
            return kExitOk;
        }
        if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--session")) {
            if (auto v = p.value()) sessionPath = *v;
        } else if (p.is("--out")) {
            if (auto v = p.value()) outPath = *v;
        } else if (p.is("--text")) {
            if (auto v = p.value()) textPath = *v;
        } else if (p.is("--formats")) {
            if (auto v = p.value()) formats = splitList(*v);
        } else if (p.is("--tensors")) {
            if (auto v = p.value()) tensors = *v;
        } else if (p.is("--ctx")) {
            if (auto v = p.integer(4, 1 << 20)) ctx = *v;
        } else if (p.is("--chunks")) {
            if (auto v = p.integer(1, 1 << 20)) chunks = *v;
        } else if (p.is("--device")) {
            if (auto v = p.value()) {
                auto b = parseBackend(*v);
                if (!b)
                    p.error("--device takes cpu, cuda or auto, not " + *v);
                else
                    backend = *b;
            }
        } else if (p.is("--json")) {
            json = true;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "sensitivity");
    if (modelPath.empty()) return usageError("sensitivity needs a MODEL", "sensitivity");
    if (sessionPath.empty())
        return usageError("sensitivity needs --session S.h5 (created when missing)", "sensitivity");
    if (textPath.empty()) return usageError("sensitivity needs --text FILE", "sensitivity");
    if (outPath.empty()) outPath = sessionPath;

    ql::SensitivityOptions options;
    options.tensors = tensors;
    for (const auto& f : formats) {
        auto q = ql::parseQuantFormat(f);
        if (!q) return fail("--formats: " + q.error().message);
        options.formats.push_back(*q);
    }
    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    ql::SessionData session;
    if (std::filesystem::exists(sessionPath)) {
        auto s = ql::readSession(sessionPath);
        if (!s) return fail(s.error().message);
        session = std::move(s).value();
    }
    ProgressLine progress;
    auto identity = ql::identifyModel(*model, progress.part(0, 0.02));
    if (!identity) return fail(identity.error().message);
    if (!session.model.path.empty()) {
        if (auto same = ql::checkModelIdentity(session.model, *identity); !same)
            return fail(same.error().message);
    } else {
        session.model = *identity;
    }
    auto tokenizer = ql::Tokenizer::create(*model);
    if (!tokenizer) return fail(tokenizer.error().message);
    auto text = ql::readTextFile(textPath);
    if (!text) return fail(text.error().message);
    auto windows =
        ql::makeLlamaCppChunks(**tokenizer, *text, std::int32_t(ctx), std::int32_t(chunks));
    if (windows.empty()) return fail(textPath + ": too short for one window");
    const ql::CalibrationResult* calib = session.calibration ? &*session.calibration : nullptr;
    auto device = ql::createBackend(backend);
    if (!device) return fail(device.error().message);
    auto table = ql::measureSensitivity(*model, **device, windows, calib, options,
                                        progress.part(0.02, 0.98));
    if (!table) return fail(table.error().message);
    table->text = textPath;
    session.sensitivity = *table;
    if (auto st = ql::writeSession(outPath, session); !st) return fail(st.error().message);
    progress.finish();
    const auto correlations = ql::proxyCorrelations(*table);

    if (json) {
        nlohmann::json j;
        j["device"] = table->device;
        j["windows"] = table->windows;
        j["ctx"] = table->ctx;
        j["positions"] = table->positions;
        j["seconds"] = table->seconds;
        j["formats"] = table->formats;
        for (const auto& t : table->tensors) {
            nlohmann::json r;
            r["tensor"] = t.name;
            for (std::size_t f = 0; f < t.cells.size(); ++f) {
                r["delta_kl"].push_back(t.cells[f].deltaKl);
                r["stored"].push_back(t.cells[f].stored);
                r["bytes"].push_back(t.cells[f].bytes);
            }
            j["tensors"].push_back(r);
        }
        for (const auto& c : correlations) {
            nlohmann::json r;
            r["proxy"] = c.proxy;
            r["pooled"] = std::isfinite(c.pooled) ? nlohmann::json(c.pooled) : nlohmann::json();
            for (double v : c.perFormat)
                r["per_format"].push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json());
            j["proxies"].push_back(r);
        }
        std::cout << j.dump(2) << "\n";
        return kExitOk;
    }
    std::printf("sensitivity of %s: %d windows x %d tokens (%lld scored positions), %s, %.1f s\n",
                modelPath.c_str(), table->windows, table->ctx, (long long)table->positions,
                table->device.c_str(), table->seconds);
    std::printf("ΔKL (nats/token) when only that tensor is quantized; '>' marks a fallback\n");
    std::printf("%-28s", "tensor");
    for (const auto& f : table->formats) std::printf(" %10s", f.c_str());
    std::printf("\n");
    for (const auto& t : table->tensors) {
        std::printf("%-28s", t.name.c_str());
        for (std::size_t f = 0; f < t.cells.size(); ++f) {
            const bool fb = t.cells[f].stored != table->formats[f];
            std::printf(" %9s%s", num(t.cells[f].deltaKl).c_str(), fb ? ">" : " ");
        }
        std::printf("\n");
    }
    std::printf("\nproxy rank correlation (Spearman) with the measured ΔKL:\n%-20s %8s", "proxy",
                "all");
    for (const auto& f : table->formats) std::printf(" %9s", f.c_str());
    std::printf("\n");
    for (const auto& c : correlations) {
        std::printf("%-20s %8s", c.proxy.c_str(), num(c.pooled).c_str());
        for (double v : c.perFormat) std::printf(" %9s", num(v).c_str());
        std::printf("\n");
    }
    if (!calib)
        std::printf(
            "(no calibration in the session: Hessian and activation proxies need "
            "`quantlens-cli calibrate --hessian f64`)\n");
    std::printf("session written: %s\n", outPath.c_str());
    return kExitOk;
}

int runAllocate(Args args)
{
    ArgParser p(args);
    std::string modelPath, sessionPath, outPath, method, likeFile;
    std::optional<std::uint64_t> targetBytes;
    std::optional<double> targetBpw;
    ql::AllocationOptions options;
    options.size.producer = std::string("quantlens-cli ") + QL_VERSION;
    options.reserveBytes = 128;
    bool json = false;
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kAllocateHelp.data(), 1, kAllocateHelp.size(), stdout);
            return kExitOk;
        }
        if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--session")) {
            if (auto v = p.value()) sessionPath = *v;
        } else if (p.is("--out")) {
            if (auto v = p.value()) outPath = *v;
        } else if (p.is("--target-bytes")) {
            if (auto v = p.number(1, 1e18)) targetBytes = std::uint64_t(*v);
        } else if (p.is("--reserve")) {
            if (auto v = p.integer(0, 1 << 30)) options.reserveBytes = std::uint64_t(*v);
        } else if (p.is("--target-size-of")) {
            if (auto v = p.value()) likeFile = *v;
        } else if (p.is("--target-bpw")) {
            if (auto v = p.number(0.5, 64)) targetBpw = *v;
        } else if (p.is("--method")) {
            if (auto v = p.value()) method = *v;
        } else if (p.is("--ties")) {
            if (auto v = p.value()) {
                if (*v == "none")
                    options.ties = ql::TieTarget::None;
                else if (*v == "gptq-safetensors")
                    options.ties = ql::TieTarget::GptqSafetensors;
                else
                    p.error("--ties takes none or gptq-safetensors, not " + *v);
            }
        } else if (p.is("--formats")) {
            if (auto v = p.value())
                for (const auto& f : splitList(*v)) {
                    auto q = ql::parseQuantFormat(f);
                    if (!q) {
                        p.error("--formats: " + q.error().message);
                        break;
                    }
                    options.formats.push_back(ql::formatToString(*q));
                }
        } else if (p.is("--json")) {
            json = true;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "allocate");
    if (modelPath.empty()) return usageError("allocate needs a MODEL", "allocate");
    if (sessionPath.empty()) return usageError("allocate needs --session S.h5", "allocate");
    if (!likeFile.empty()) {
        std::error_code ec;
        const auto size = std::filesystem::file_size(likeFile, ec);
        if (ec) return fail(likeFile + ": " + ec.message());
        targetBytes = size;
    }
    if (!targetBytes == !targetBpw)
        return usageError("give one of --target-bytes, --target-size-of, --target-bpw", "allocate");
    if (outPath.empty()) return usageError("allocate needs --out LAYOUT.txt", "allocate");
    options.targetBytes = targetBytes;
    options.targetBpw = targetBpw;
    if (!method.empty()) {
        // "gptq:damp=0.01" parsed as a rule's method part.
        auto rule = ql::Layout::parse("x=f32:" + method);
        if (!rule) return fail("--method: " + rule.error().message);
        options.method = rule->rules()[0].method;
        options.methodOptions = rule->rules()[0].methodOptions;
    }
    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    auto session = ql::readSession(sessionPath);
    if (!session) return fail(session.error().message);
    if (!session->sensitivity)
        return fail(sessionPath +
                    " has no sensitivity table: run `quantlens-cli sensitivity` first");
    auto result = ql::allocateLayout(*model, *session->sensitivity, options);
    if (!result) return fail(result.error().message);
    std::string file = "# quantlens-cli allocate: predicted KL " + num(result->predictedKl) + ", " +
                       std::to_string(result->size.fileBytes) + " bytes (target " +
                       std::to_string(result->budget) + ")\n";
    // One rule per line.
    std::string line;
    for (char c : result->text) {
        if (c == ';') {
            file += line + "\n";
            line.clear();
        } else if (!(c == ' ' && line.empty())) {
            line += c;
        }
    }
    if (!line.empty()) file += line + "\n";
    if (auto st = writeTextAtomically(outPath, file); !st) return fail(st.error().message);

    // Uniform presets for comparison: their size and predicted KL.
    struct Row {
        std::string name;
        std::uint64_t bytes;
        double kl;
        int missing;
    };
    std::vector<Row> rows;
    for (const auto& preset : ql::presetNames()) {
        auto text = ql::presetText(*model, preset);
        if (!text) continue;
        auto layout = ql::Layout::parse(*text);
        if (!layout) continue;
        auto plan = layout->resolve(*model);
        if (!plan) continue;
        auto size = ql::estimateSize(*model, *plan, layout->toString(), options.size);
        if (!size) continue;
        int missing = 0;
        const double kl = ql::predictedKl(*session->sensitivity, *plan, &missing);
        rows.push_back({preset, size->fileBytes, kl, missing});
    }
    if (json) {
        nlohmann::json j;
        j["layout"] = result->text;
        j["predicted_kl"] = result->predictedKl;
        j["file_bytes"] = result->size.fileBytes;
        j["tensor_bytes"] = result->size.tensorBytes;
        j["bpw"] = result->size.bpw;
        j["target"] = result->budget;
        for (const auto& r : rows)
            j["presets"].push_back({{"preset", r.name},
                                    {"file_bytes", r.bytes},
                                    {"predicted_kl", r.kl},
                                    {"unmeasured", r.missing}});
        std::cout << j.dump(2) << "\n";
        return kExitOk;
    }
    std::printf("allocated  %s bytes (target %s), %.4f bpw, predicted KL %.6f\n",
                formatCount(std::int64_t(result->size.fileBytes)).c_str(),
                formatCount(std::int64_t(result->budget)).c_str(), result->size.bpw,
                result->predictedKl);
    std::printf("layout     %s\n", outPath.c_str());
    std::printf("\n%-16s %12s %14s\n", "preset", "file bytes", "predicted KL");
    for (const auto& r : rows)
        std::printf("%-16s %12s %14s%s\n", r.name.c_str(),
                    formatCount(std::int64_t(r.bytes)).c_str(), num(r.kl).c_str(),
                    r.missing ? (" (" + std::to_string(r.missing) + " unmeasured)").c_str() : "");
    return kExitOk;
}

int runLayout(Args args)
{
    ArgParser p(args);
    std::string modelPath, layoutArg, preset, sessionPath;
    std::int64_t ctx = 4096;
    double gpuMemory = 0;
    bool json = false, printRules = false;
    ql::TieTarget ties = ql::TieTarget::None;
    while (p.next()) {
        if (p.is("--help") || p.is("-h")) {
            std::fwrite(kLayoutHelp.data(), 1, kLayoutHelp.size(), stdout);
            return kExitOk;
        }
        if (!p.isOption()) {
            if (modelPath.empty())
                modelPath = p.current();
            else
                p.unknown();
        } else if (p.is("--layout")) {
            if (auto v = p.value()) layoutArg = *v;
        } else if (p.is("--preset")) {
            if (auto v = p.value()) preset = *v;
        } else if (p.is("--session")) {
            if (auto v = p.value()) sessionPath = *v;
        } else if (p.is("--ctx")) {
            if (auto v = p.integer(1, 1 << 24)) ctx = *v;
        } else if (p.is("--gpu-memory")) {
            if (auto v = p.number(1, 1e15)) gpuMemory = *v;
        } else if (p.is("--ties")) {
            if (auto v = p.value())
                ties =
                    *v == "gptq-safetensors" ? ql::TieTarget::GptqSafetensors : ql::TieTarget::None;
        } else if (p.is("--print-rules")) {
            printRules = true;
        } else if (p.is("--json")) {
            json = true;
        } else {
            p.unknown();
        }
    }
    if (p.failed()) return usageError(p.errorMessage(), "layout");
    if (modelPath.empty()) return usageError("layout needs a MODEL", "layout");
    if (layoutArg.empty() == preset.empty())
        return usageError("give --layout SPEC or --preset NAME", "layout");
    auto model = ql::openModel(modelPath);
    if (!model) return fail(model.error().message);
    std::string spec = layoutArg;
    if (!preset.empty()) {
        auto t = ql::presetText(*model, preset);
        if (!t) return fail(t.error().message);
        spec = *t;
    }
    auto tl = ql::TensorLayout::fromText(*model, spec);
    if (!tl) return fail(tl.error().message);
    for (const auto& c : ql::applyTies(*model, *tl, ties))
        std::fprintf(stderr, "tie: %s %s -> %s\n", c.tensor.c_str(),
                     ql::formatToString(c.from).c_str(), ql::formatToString(c.to).c_str());
    if (printRules) {
        std::printf("%s\n", tl->toText().c_str());
        return kExitOk;
    }
    auto layout = tl->toLayout();
    if (!layout) return fail(layout.error().message);
    auto plan = layout->resolve(*model);
    if (!plan) return fail(plan.error().message);
    ql::SizeOptions sizeOptions;
    sizeOptions.producer = std::string("quantlens-cli ") + QL_VERSION;  // as quantize writes
    auto size = ql::estimateSize(*model, *plan, layout->toString(), sizeOptions);
    if (!size) return fail(size.error().message);
    ql::MemoryOptions mo;
    mo.context = ctx;
    const auto memory = ql::estimateMemory(*model, *size, mo);
    std::optional<double> predicted;
    if (!sessionPath.empty()) {
        auto s = ql::readSession(sessionPath);
        if (!s) return fail(s.error().message);
        if (s->sensitivity) predicted = ql::predictedKl(*s->sensitivity, *plan);
    }
    if (json) {
        nlohmann::json j;
        j["layout"] = layout->toString();
        j["file_bytes"] = size->fileBytes;
        j["header_bytes"] = size->headerBytes;
        j["tensor_bytes"] = size->tensorBytes;
        j["padding_bytes"] = size->paddingBytes;
        j["bpw"] = size->bpw;
        j["file_bpw"] = size->fileBpw;
        for (const auto& t : size->tensors)
            j["tensors"].push_back({{"name", t.name},
                                    {"format", ql::formatToString(t.format)},
                                    {"gguf_type", std::string(ql::tensorTypeName(t.storedType))},
                                    {"bytes", t.bytes},
                                    {"bpw", t.bpw}});
        for (const auto& b : size->blocks)
            j["blocks"].push_back({{"block", b.block}, {"bytes", b.bytes}, {"weights", b.weights}});
        j["memory"] = {{"context", ctx},
                       {"weights", memory.weights},
                       {"kv_cache", memory.kvCache},
                       {"activations", memory.activations},
                       {"reserve", memory.reserve},
                       {"total", memory.total}};
        if (gpuMemory > 0) j["fits"] = memory.fits(std::uint64_t(gpuMemory));
        if (predicted) j["predicted_kl"] = *predicted;
        std::cout << j.dump(2) << "\n";
        return kExitOk;
    }
    std::printf("%-32s %-10s %-6s %10s %7s\n", "tensor", "format", "gguf", "bytes", "bpw");
    for (const auto& t : size->tensors)
        std::printf("%-32s %-10s %-6s %10llu %7.3f\n", t.name.c_str(),
                    ql::formatToString(t.format).c_str(),
                    std::string(ql::tensorTypeName(t.storedType)).c_str(),
                    (unsigned long long)t.bytes, t.bpw);
    std::printf("\nper block:");
    for (const auto& b : size->blocks)
        std::printf(" %s %s", b.block < 0 ? "other" : ("blk." + std::to_string(b.block)).c_str(),
                    formatBytes(b.bytes).c_str());
    std::printf("\nfile        %s bytes (header %s, tensors %s, padding %s)\n",
                formatCount(std::int64_t(size->fileBytes)).c_str(),
                formatCount(std::int64_t(size->headerBytes)).c_str(),
                formatCount(std::int64_t(size->tensorBytes)).c_str(),
                formatCount(std::int64_t(size->paddingBytes)).c_str());
    std::printf("bpw         %.4f (tensor data), %.4f (whole file)\n", size->bpw, size->fileBpw);
    std::printf(
        "memory      %s at context %lld: weights %s, KV cache %s, activations %s, "
        "reserve %s\n",
        formatBytes(memory.total).c_str(), (long long)ctx, formatBytes(memory.weights).c_str(),
        formatBytes(memory.kvCache).c_str(), formatBytes(memory.activations).c_str(),
        formatBytes(memory.reserve).c_str());
    if (gpuMemory > 0)
        std::printf("fits        %s in %s\n", memory.fits(std::uint64_t(gpuMemory)) ? "yes" : "no",
                    formatBytes(std::uint64_t(gpuMemory)).c_str());
    if (predicted) std::printf("predicted KL %.6f\n", *predicted);
    return kExitOk;
}

}  // namespace qlcli
