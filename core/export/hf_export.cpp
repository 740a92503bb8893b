// Hugging Face exports. One plan per tensor (packed GPTQ layer, float, or re-quantized), made by
// the same function the compatibility check reports from, so what the dialog shows is what gets
// written. The safetensors header is built from the plan's shapes before any data; data then
// streams one tensor at a time into a staged folder whose files are renamed only at the end.
#include "export/hf_export.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "io/gptq_layout.h"
#include "io/safetensors.h"
#include "quant/ggml_dequant.h"
#include "export/gguf_writer.h"

namespace ql {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// --- per-tensor plan --------------------------------------------------------------------------

enum class HfKind { Packed, Float, Requantize };

struct HfTensorPlan {
    HfKind kind = HfKind::Float;
    std::string hfName;  // "<module>.weight" or the tensor's HF name
};

struct GptqKey {
    int bits = 4;
    bool sym = true;
    std::int64_t groupSize = -1;  // -1: per channel
    auto operator<=>(const GptqKey&) const = default;
};

std::optional<GptqKey> gptqKeyOf(const QuantFormat& f)
{
    if (f.kind != QuantKind::Uniform || !gptqBitsSupported(f.bits)) return std::nullopt;
    GptqKey k;
    k.bits = f.bits;
    k.sym = f.symmetric;
    k.groupSize = f.granularity == Granularity::PerGroup ? f.groupSize : -1;
    return k;
}

QuantFormat formatOf(const GptqKey& k)
{
    return k.groupSize > 0 ? uniformFormat(k.bits, k.sym, Granularity::PerGroup, k.groupSize)
                           : uniformFormat(k.bits, k.sym, Granularity::PerChannel);
}

bool isBlockLinear(const Model& model, const TensorPlan& p)
{
    const TensorInfo* t = model.find(p.name);
    return t && t->block >= 0 && isLinearWeight(t->role) && p.shape.size() == 2;
}

std::string typeName(TensorType t)
{
    return std::string(tensorTypeName(t));
}

// "mlp.down_proj" from "model.layers.3.mlp.down_proj.weight".
std::string moduleInBlock(const std::string& hfName)
{
    std::string m = hfName;
    if (m.size() > 7 && m.compare(m.size() - 7, 7, ".weight") == 0) m.resize(m.size() - 7);
    const std::string prefix = "model.layers.";
    if (m.rfind(prefix, 0) == 0) {
        const auto dot = m.find('.', prefix.size());
        if (dot != std::string::npos) return m.substr(dot + 1);
    }
    return m;
}

struct FullPlan {
    ExportCompatibility compat;
    std::vector<HfTensorPlan> tensors;  // parallel to LayoutPlan::tensors
    std::optional<GptqKey> key;
    json quantizationConfig;
};

Result<FullPlan> planExport(ExportTarget target, const Model& model, const LayoutPlan& plan,
                            const HfExportOptions& options)
{
    FullPlan out;
    out.compat.target = target;
    out.tensors.resize(plan.tensors.size());
    for (std::size_t i = 0; i < plan.tensors.size(); ++i)
        out.tensors[i].hfName = hfTensorName(plan.tensors[i].name);
    const std::string floatName = typeName(options.floatType);

    if (target == ExportTarget::Gguf) {
        for (const auto& p : plan.tensors) {
            bool dequantized = false;
            const TensorType t =
                ggufStorageType(p.format, options.ggufDequantType, p.cols, &dequantized);
            if (dequantized)
                out.compat.issues.push_back({p.name, formatToString(p.format),
                                             "llama.cpp has no type for this format",
                                             "its decoded values as " + typeName(t)});
        }
        for (const auto& f : plan.fallbacks)
            out.compat.notes.push_back(f.tensor + ": " + formatToString(f.wanted) + " -> " +
                                       formatToString(f.got) + " (" + f.why + ")");
        return out;
    }
    if (target == ExportTarget::FakeQuantSafetensors) {
        for (const auto& p : plan.tensors)
            if (p.format.kind != QuantKind::Float)
                out.compat.issues.push_back({p.name, formatToString(p.format),
                                             "safetensors holds plain floats",
                                             "its decoded values as " + floatName});
        if (options.floatType != TensorType::F32)
            out.compat.notes.push_back("decoded values are rounded to " + floatName +
                                       (options.floatType == TensorType::F16
                                            ? " (INT codes times an fp16 scale need up "
                                              "to 19 significant bits: use f32 for "
                                              "exact values)"
                                            : ""));
        return out;
    }

    // GPTQ: the one format of the quantized layers.
    std::map<GptqKey, double> weights;
    for (const auto& p : plan.tensors)
        if (isBlockLinear(model, p))
            if (auto k = gptqKeyOf(p.format)) weights[*k] += double(p.elementCount());
    std::optional<GptqKey> key;
    double best = -1;
    for (const auto& [k, w] : weights)
        if (w > best) {
            best = w;
            key = k;
        }
    if (!key) {
        if (options.fallback == GptqFallback::KeepFloat)
            return makeError(ErrorCode::InvalidArgument,
                             "no layer of the layout is in a format the GPTQ layout stores "
                             "(int2, int3, int4 or int8): nothing would be quantized; choose "
                             "such a format, or the re-quantize fallback (int4, group 128, RTN)");
        key = GptqKey{4, true, 128};
        out.compat.notes.push_back("no layer is in a GPTQ format: re-quantizing to int4:g128");
    }
    out.key = key;
    const QuantFormat main = formatOf(*key);
    out.compat.gptqFormat = main;
    const std::int64_t m = gptqPackMultiple(key->bits);
    std::map<int, std::set<std::string>> floatModules;  // block -> modules left unquantized
    std::set<std::string> allModules;
    int blocks = 0;
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const TensorPlan& p = plan.tensors[i];
        HfTensorPlan& hp = out.tensors[i];
        if (!isBlockLinear(model, p)) {
            hp.kind = HfKind::Float;
            if (p.format.kind != QuantKind::Float)
                out.compat.issues.push_back(
                    {p.name, formatToString(p.format),
                     "GPTQ checkpoints quantize only the linear layers of the blocks",
                     "its decoded values as " + floatName});
            continue;
        }
        const TensorInfo* t = model.find(p.name);
        blocks = std::max(blocks, t->block + 1);
        const std::string module = moduleInBlock(hp.hfName);
        allModules.insert(module);
        const bool packs = p.cols % m == 0 && p.rows % m == 0;
        const auto k = gptqKeyOf(p.format);
        if (p.format.kind == QuantKind::Float) {
            hp.kind = HfKind::Float;
        } else if (!packs) {
            hp.kind = HfKind::Float;
            out.compat.issues.push_back(
                {p.name, formatToString(p.format),
                 std::to_string(key->bits) +
                     "-bit GPTQ packing needs in and out features that "
                     "are multiples of " +
                     std::to_string(m) + " (the layer is " + std::to_string(p.rows) + " x " +
                     std::to_string(p.cols) + ")",
                 "its decoded values as " + floatName + ", layer left unquantized"});
        } else if (k && *k == *key) {
            hp.kind = HfKind::Packed;
        } else if (options.fallback == GptqFallback::Requantize) {
            hp.kind = HfKind::Requantize;
            out.compat.issues.push_back(
                {p.name, formatToString(p.format),
                 "one GPTQ format per checkpoint (" + formatToString(main) + ")",
                 "re-quantized from the source weights to " + formatToString(main) + " (RTN)"});
        } else {
            hp.kind = HfKind::Float;
            out.compat.issues.push_back(
                {p.name, formatToString(p.format),
                 "one GPTQ format per checkpoint (" + formatToString(main) + ")",
                 "its decoded values as " + floatName + ", layer left unquantized"});
        }
        if (hp.kind == HfKind::Float) floatModules[t->block].insert(module);
        if (hp.kind != HfKind::Float) {
            ++out.compat.gptqLayers;
            if (key->groupSize > 0 && p.cols % key->groupSize != 0)
                out.compat.warnings.push_back(p.name + ": " + std::to_string(p.cols) +
                                              " inputs are not a multiple of group " +
                                              std::to_string(key->groupSize) +
                                              ": the last group is partial (the format holds it; "
                                              "some GPU kernels refuse it)");
        }
        if (p.format.kind == QuantKind::Uniform && p.format.granularity == Granularity::PerTensor &&
            hp.kind == HfKind::Packed)
            out.compat.notes.push_back(p.name +
                                       ": the per-tensor scale is written once per output channel");
    }
    json q;
    q["quant_method"] = "gptq";
    q["bits"] = key->bits;
    q["group_size"] = key->groupSize;
    q["sym"] = key->sym;
    q["desc_act"] = false;
    q["static_groups"] = false;
    q["true_sequential"] = true;
    q["damp_percent"] = 0.01;
    q["checkpoint_format"] = "gptq";
    q["meta"] = {{"quantizer", json::array({options.producer})}};
    // Layers left unquantized in the blocks: the same in every block -> the list transformers
    // (optimum) reads; otherwise GPTQModel's per-module "dynamic" skips.
    bool uniform = true;
    std::set<std::string> first;
    if (!floatModules.empty()) {
        first = floatModules.begin()->second;
        uniform = int(floatModules.size()) == blocks;
        for (const auto& [b, mods] : floatModules) uniform &= mods == first;
    }
    if (!floatModules.empty()) {
        if (uniform) {
            json groups = json::array();
            for (const auto& mod : allModules)
                if (!first.count(mod)) groups.push_back(json::array({mod}));
            q["modules_in_block_to_quantize"] = groups;
            out.compat.notes.push_back(std::to_string(first.size()) +
                                       " layer(s) per block left unquantized, listed in "
                                       "modules_in_block_to_quantize");
        } else {
            json dyn = json::object();
            for (const auto& [b, mods] : floatModules)
                for (const auto& mod : mods) {
                    std::string re = "model\\.layers\\." + std::to_string(b) + "\\.";
                    for (char c : mod) re += c == '.' ? std::string("\\.") : std::string(1, c);
                    dyn["-:^" + re + "$"] = json::object();
                }
            q["dynamic"] = dyn;
            out.compat.warnings.push_back(
                "layers left unquantized differ between blocks: written as GPTQModel's "
                "\"dynamic\" skips, which transformers' optimum/AutoGPTQ loader ignores (it "
                "would expect quantized weights there); GPTQModel loads the folder");
        }
    }
    out.quantizationConfig = q;
    out.compat.notes.insert(out.compat.notes.begin(),
                            "GPTQ " + std::to_string(key->bits) + "-bit, group_size " +
                                std::to_string(key->groupSize) + ", " +
                                (key->sym ? "symmetric" : "asymmetric") + ": " +
                                std::to_string(out.compat.gptqLayers) + " layers packed");
    return out;
}

// --- a folder written all at once ---------------------------------------------------------------

class StagedFolder {
public:
    explicit StagedFolder(fs::path dir) : m_dir(std::move(dir))
    {
        static std::atomic<unsigned> counter{0};
        m_suffix = ".partial-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    }
    ~StagedFolder()
    {
        std::error_code ec;
        if (m_file) std::fclose(m_file);
        if (!m_committed)
            for (const auto& [name, bytes] : m_files) fs::remove(m_dir / (name + m_suffix), ec);
        if (!m_committed && m_created) fs::remove(m_dir, ec);  // only when still empty
    }
    StagedFolder(const StagedFolder&) = delete;
    StagedFolder& operator=(const StagedFolder&) = delete;

    Status create()
    {
        std::error_code ec;
        if (fs::exists(m_dir, ec) && !fs::is_directory(m_dir, ec))
            return makeError(ErrorCode::InvalidArgument,
                             m_dir.string() + " exists and is not a folder");
        if (!fs::exists(m_dir, ec)) {
            fs::create_directories(m_dir, ec);
            if (ec)
                return makeError(ErrorCode::Io,
                                 m_dir.string() + ": cannot create the folder: " + ec.message());
            m_created = true;
        }
        if (fs::exists(m_dir / "model.safetensors.index.json", ec))
            return makeError(ErrorCode::InvalidArgument,
                             m_dir.string() +
                                 " holds a sharded model "
                                 "(model.safetensors.index.json): choose an empty "
                                 "folder");
        return {};
    }
    Status open(const std::string& name)
    {
        QL_TRY_STATUS(closeCurrent());
        const fs::path p = m_dir / (name + m_suffix);
        m_file = std::fopen(p.c_str(), "wb");
        if (!m_file)
            return makeError(ErrorCode::Io,
                             "cannot create " + p.string() + ": " + std::strerror(errno));
        m_files.emplace_back(name, 0);
        return {};
    }
    Status write(const void* data, std::size_t n)
    {
        if (n && std::fwrite(data, 1, n, m_file) != n)
            return makeError(ErrorCode::Io, "writing " + (m_dir / m_files.back().first).string() +
                                                " failed: " + std::strerror(errno));
        m_files.back().second += n;
        return {};
    }
    Status writeText(const std::string& name, const std::string& text)
    {
        QL_TRY_STATUS(open(name));
        QL_TRY_STATUS(write(text.data(), text.size()));
        return closeCurrent();
    }
    Status copyFile(const fs::path& from, const std::string& name)
    {
        std::error_code ec;
        fs::copy_file(from, m_dir / (name + m_suffix), fs::copy_options::overwrite_existing, ec);
        if (ec) return makeError(ErrorCode::Io, "copying " + from.string() + ": " + ec.message());
        m_files.emplace_back(name, fs::file_size(from, ec));
        return {};
    }
    Status commit()
    {
        QL_TRY_STATUS(closeCurrent());
        for (const auto& [name, bytes] : m_files) {
            std::error_code ec;
            fs::rename(m_dir / (name + m_suffix), m_dir / name, ec);
            if (ec)
                return makeError(ErrorCode::Io, "renaming " + name + m_suffix + " in " +
                                                    m_dir.string() + ": " + ec.message());
        }
        m_committed = true;
        return {};
    }
    const std::vector<std::pair<std::string, std::uint64_t>>& files() const { return m_files; }

private:
    Status closeCurrent()
    {
        if (!m_file) return {};
        const bool ok = std::fflush(m_file) == 0 && ::fsync(::fileno(m_file)) == 0;
        const bool closed = std::fclose(m_file) == 0;
        m_file = nullptr;
        if (!ok || !closed)
            return makeError(ErrorCode::Io, "writing " + (m_dir / m_files.back().first).string() +
                                                " failed: " + std::strerror(errno));
        return {};
    }

    fs::path m_dir;
    std::string m_suffix;
    std::FILE* m_file = nullptr;
    std::vector<std::pair<std::string, std::uint64_t>> m_files;
    bool m_created = false;
    bool m_committed = false;
};

// --- tensor data --------------------------------------------------------------------------------

// Source row of Hugging Face row `row` for q/k of a llama model read from GGUF or llama2.c.
struct RowOrder {
    bool permute = false;
    std::int64_t headDim = 0;
    std::int64_t source(std::int64_t row) const
    {
        if (!permute) return row;
        const std::int64_t half = headDim / 2, head = row / headDim, within = row % headDim;
        return head * headDim + 2 * (within % half) + within / half;
    }
};

RowOrder rowOrder(const Model& model, const std::string& name)
{
    const HyperParams& hp = model.hparams;
    const TensorInfo* t = model.find(name);
    RowOrder r;
    r.headDim = hp.headDim;
    r.permute = t && model.format != ModelFormat::Safetensors &&
                (hp.architecture == "llama" || hp.architecture == "mistral") && hp.headDim > 0 &&
                hp.headDim % 2 == 0 &&
                (t->role == TensorRole::AttnQ || t->role == TensorRole::AttnK ||
                 t->role == TensorRole::AttnQBias || t->role == TensorRole::AttnKBias);
    return r;
}

std::uint16_t toBf16(float f)
{
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return std::uint16_t((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return std::uint16_t(x >> 16);
}

void appendFloats(const std::vector<float>& v, TensorType type, std::vector<std::uint8_t>& out)
{
    const std::size_t size = type == TensorType::F32 ? 4 : 2;
    out.resize(v.size() * size);
    for (std::size_t k = 0; k < v.size(); ++k) {
        if (type == TensorType::F32) {
            std::memcpy(out.data() + 4 * k, &v[k], 4);
        } else {
            const std::uint16_t h = type == TensorType::F16 ? fp32ToFp16(v[k]) : toBf16(v[k]);
            std::memcpy(out.data() + 2 * k, &h, 2);
        }
    }
}

struct HeaderEntry {
    std::string name;
    const char* dtype;
    std::vector<std::int64_t> shape;
    std::uint64_t bytes;
};

const char* dtypeText(TensorType t)
{
    return t == TensorType::F32 ? "F32" : t == TensorType::F16 ? "F16" : "BF16";
}

const std::vector<std::string> kTokenizerFiles = {"tokenizer.json",
                                                  "tokenizer_config.json",
                                                  "special_tokens_map.json",
                                                  "tokenizer.model",
                                                  "vocab.json",
                                                  "merges.txt",
                                                  "added_tokens.json",
                                                  "generation_config.json",
                                                  "chat_template.jinja"};

Result<HfExportReport> writeFolder(ExportTarget target, const Model& model,
                                   const QuantizedModel& quantized, const std::string& dir,
                                   const HfExportOptions& options, const ProgressFn& progress)
{
    const auto start = std::chrono::steady_clock::now();
    if (options.floatType != TensorType::F16 && options.floatType != TensorType::BF16 &&
        options.floatType != TensorType::F32)
        return makeError(ErrorCode::InvalidArgument, "safetensors exports write F16, BF16 or F32");
    if (quantized.tensors.size() != quantized.plan.tensors.size())
        return makeError(ErrorCode::InvalidArgument, "the quantized model is incomplete");
    for (const auto& p : quantized.plan.tensors)
        if (!model.find(p.name))
            return makeError(ErrorCode::InvalidArgument,
                             "the quantized model's tensor " + p.name + " is not in " + model.path);
    auto planned = planExport(target, model, quantized.plan, options);
    if (!planned) return planned.error();
    FullPlan& fp = *planned;
    const LayoutPlan& plan = quantized.plan;
    HfExportReport report;
    report.dir = dir;
    report.compatibility = fp.compat;

    // Header.
    std::vector<HeaderEntry> entries;
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const TensorPlan& p = plan.tensors[i];
        const HfTensorPlan& hp = fp.tensors[i];
        if (hp.kind == HfKind::Float) {
            entries.push_back(
                {hp.hfName, dtypeText(options.floatType), p.shape,
                 std::uint64_t(p.elementCount()) * (options.floatType == TensorType::F32 ? 4 : 2)});
            continue;
        }
        const int bits = fp.key->bits;
        const std::int64_t in = p.cols, out = p.rows;
        const std::int64_t gs = fp.key->groupSize > 0 ? fp.key->groupSize : in;
        const std::int64_t groups = (in + gs - 1) / gs;
        std::string module = hp.hfName;
        if (module.size() > 7 && module.compare(module.size() - 7, 7, ".weight") == 0)
            module.resize(module.size() - 7);
        entries.push_back({module + ".qweight",
                           "I32",
                           {in * bits / 32, out},
                           std::uint64_t(in * bits / 32 * out) * 4});
        entries.push_back({module + ".qzeros",
                           "I32",
                           {groups, out * bits / 32},
                           std::uint64_t(groups * out * bits / 32) * 4});
        entries.push_back(
            {module + ".scales", "F16", {groups, out}, std::uint64_t(groups * out) * 2});
        entries.push_back({module + ".g_idx", "I32", {in}, std::uint64_t(in) * 4});
    }
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    std::uint64_t offset = 0;
    for (const auto& e : entries) {
        if (header.contains(e.name))
            return makeError(ErrorCode::InvalidArgument, "tensor " + e.name + " appears twice");
        header[e.name] = {
            {"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes}}};
        offset += e.bytes;
    }
    std::string headerText = header.dump();
    headerText.append((8 - headerText.size() % 8) % 8, ' ');

    StagedFolder folder{fs::path(dir)};
    QL_TRY_STATUS(folder.create());
    QL_TRY_STATUS(folder.open("model.safetensors"));
    std::uint8_t len[8];
    for (int k = 0; k < 8; ++k) len[k] = std::uint8_t(std::uint64_t(headerText.size()) >> (8 * k));
    QL_TRY_STATUS(folder.write(len, 8));
    QL_TRY_STATUS(folder.write(headerText.data(), headerText.size()));

    double total = 0, done = 0;
    for (const auto& p : plan.tensors) total += double(p.elementCount());
    std::vector<std::uint8_t> bytes;
    std::size_t entry = 0;
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const TensorPlan& p = plan.tensors[i];
        const HfTensorPlan& hp = fp.tensors[i];
        const TensorQuantization& tq = quantized.tensors[i];
        if (tq.report.plan.name != p.name)
            return makeError(
                ErrorCode::InvalidArgument,
                "tensor " + std::to_string(i) + " is " + tq.report.plan.name + ", not " + p.name);
        const RowOrder order = rowOrder(model, p.name);
        const std::int64_t rows = p.shape.size() == 1 ? p.elementCount() : p.rows;
        const std::int64_t cols = p.shape.size() == 1 ? 1 : p.cols;
        if (hp.kind == HfKind::Float) {
            auto values = tq.quantized.dequantize();
            if (!values)
                return makeError(values.error().code, p.name + ": " + values.error().message);
            std::vector<float> v(values->size());
            for (std::int64_t r = 0; r < rows; ++r)
                std::memcpy(v.data() + r * cols, values->data() + order.source(r) * cols,
                            std::size_t(cols) * 4);
            appendFloats(v, options.floatType, bytes);
            QL_TRY_STATUS(folder.write(bytes.data(), bytes.size()));
            ++entry;
        } else {
            std::optional<TensorQuantization> requantized;
            const QuantizedTensor* qt = &tq.quantized;
            if (hp.kind == HfKind::Requantize) {
                TensorPlan rp = p;
                rp.format = rp.requested = formatOf(*fp.key);
                rp.method = QuantMethod::Rtn;
                rp.methodOptions.clear();
                auto r = quantizeTensor(model, rp, nullptr);
                if (!r) return r.error();
                requantized = std::move(r).value();
                qt = &requantized->quantized;
            }
            const int bits = fp.key->bits;
            const std::int64_t in = p.cols, out = p.rows;
            const std::int64_t gs = fp.key->groupSize > 0 ? fp.key->groupSize : in;
            const std::int64_t groups = (in + gs - 1) / gs;
            if (qt->format.kind != QuantKind::Uniform || qt->format.bits != bits ||
                qt->codes.size() != std::size_t(in * out))
                return makeError(ErrorCode::InvalidArgument,
                                 p.name + ": the quantized tensor is not in the planned format");
            std::vector<std::uint8_t> codes(static_cast<std::size_t>(in * out)),
                zeros(std::size_t(out * groups));
            std::vector<std::uint16_t> scales(static_cast<std::size_t>(out * groups));
            std::vector<std::int32_t> gIdx(static_cast<std::size_t>(in));
            for (std::int64_t c = 0; c < in; ++c) gIdx[std::size_t(c)] = std::int32_t(c / gs);
            const std::uint8_t symZero = std::uint8_t(1 << (bits - 1));
            for (std::int64_t o = 0; o < out; ++o) {
                const std::int64_t src = order.source(o);
                std::memcpy(codes.data() + o * in, qt->codes.data() + src * in, std::size_t(in));
                for (std::int64_t g = 0; g < groups; ++g) {
                    const std::int64_t si = qt->scaleIndex(src, g * gs);
                    const std::uint16_t h = fp32ToFp16(qt->scales[std::size_t(si)]);
                    if (fp16ToFp32(h) != qt->scales[std::size_t(si)])
                        return makeError(ErrorCode::InvalidArgument,
                                         p.name + ": a scale is not an fp16 value");
                    scales[std::size_t(o * groups + g)] = h;
                    zeros[std::size_t(o * groups + g)] =
                        qt->format.symmetric ? symZero : qt->zeroPoints[std::size_t(si)];
                }
            }
            std::int64_t mirrored = 0;
            auto layer = gptqPack(bits, out, in, groups, codes, zeros, scales, gIdx, &mirrored);
            if (!layer) return makeError(layer.error().code, p.name + ": " + layer.error().message);
            report.mirroredGroups += mirrored;
            QL_TRY_STATUS(folder.write(layer->qweight.data(), layer->qweight.size() * 4));
            QL_TRY_STATUS(folder.write(layer->qzeros.data(), layer->qzeros.size() * 4));
            QL_TRY_STATUS(folder.write(layer->scales.data(), layer->scales.size() * 2));
            QL_TRY_STATUS(folder.write(layer->gIdx.data(), layer->gIdx.size() * 4));
            entry += 4;
        }
        done += double(p.elementCount());
        if (!reportProgress(progress, total > 0 ? 0.98 * done / total : 0.98, p.name))
            return makeError(ErrorCode::Cancelled, "writing " + dir + " was cancelled");
    }
    (void)entry;

    // config.json, provenance, tokenizer.
    json config = json::parse(huggingFaceConfig(
        model.hparams, options.floatType == TensorType::F32 ? TensorType::F32 : options.floatType));
    if (target == ExportTarget::GptqSafetensors) {
        config["torch_dtype"] = "float16";
        config["quantization_config"] = fp.quantizationConfig;
    }
    if (auto bos = model.metadata.getInt("tokenizer.ggml.bos_token_id"))
        config["bos_token_id"] = *bos;
    if (auto eos = model.metadata.getInt("tokenizer.ggml.eos_token_id"))
        config["eos_token_id"] = *eos;
    QL_TRY_STATUS(folder.writeText("config.json", config.dump(2) + "\n"));

    json prov;
    prov["producer"] = options.producer;
    prov["target"] = exportTargetName(target);
    prov["layout"] = quantized.layout;
    prov["source"] = model.path;
    prov["source_format"] = modelFormatName(model.format);
    json layers = json::array();
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const auto& p = plan.tensors[i];
        layers.push_back({{"tensor", p.name},
                          {"hf_name", fp.tensors[i].hfName},
                          {"format", formatToString(p.format)},
                          {"method", quantMethodName(p.method)},
                          {"written", fp.tensors[i].kind == HfKind::Packed       ? "gptq"
                                      : fp.tensors[i].kind == HfKind::Requantize ? "gptq (rtn)"
                                                                                 : "float"}});
    }
    prov["tensors"] = layers;
    prov["issues"] = compatibilityLines(fp.compat);
    QL_TRY_STATUS(folder.writeText("quantlens.json", prov.dump(2) + "\n"));

    bool haveGeneration = false;
    if (model.format == ModelFormat::Safetensors) {
        std::error_code ec;
        fs::path src(model.path);
        if (!fs::is_directory(src, ec)) src = src.parent_path();
        for (const auto& name : kTokenizerFiles)
            if (fs::is_regular_file(src / name, ec)) {
                QL_TRY_STATUS(folder.copyFile(src / name, name));
                haveGeneration |= name == "generation_config.json";
            }
        if (!fs::is_regular_file(src / "tokenizer.json", ec) &&
            !fs::is_regular_file(src / "tokenizer.model", ec))
            report.warnings.push_back(
                "the source folder has no tokenizer.json or "
                "tokenizer.model: the export has no tokenizer");
    } else {
        report.warnings.push_back(
            std::string("the source is ") + modelFormatName(model.format) +
            ": its tokenizer is not converted to Hugging Face files (tokenizer.json is "
            "missing; copy the original model's tokenizer files into the folder); "
            "generation_config.json holds the BOS/EOS ids");
    }
    if (!haveGeneration) {
        json gen;
        if (auto bos = model.metadata.getInt("tokenizer.ggml.bos_token_id"))
            gen["bos_token_id"] = *bos;
        if (auto eos = model.metadata.getInt("tokenizer.ggml.eos_token_id"))
            gen["eos_token_id"] = *eos;
        if (!gen.empty())
            QL_TRY_STATUS(folder.writeText("generation_config.json", gen.dump(2) + "\n"));
    }
    QL_TRY_STATUS(folder.commit());
    reportProgress(progress, 1.0, "written");
    report.files = folder.files();
    for (const auto& [name, b] : report.files) report.totalBytes += b;
    report.warnings.insert(report.warnings.end(), fp.compat.warnings.begin(),
                           fp.compat.warnings.end());
    if (report.mirroredGroups > 0)
        report.notes.push_back(std::to_string(report.mirroredGroups) +
                               " asymmetric groups have zero point 0, which checkpoint_format "
                               "gptq cannot store: written mirrored (negative scale), exactly");
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
}

}  // namespace

const char* exportTargetName(ExportTarget target)
{
    switch (target) {
        case ExportTarget::Gguf: return "GGUF";
        case ExportTarget::GptqSafetensors: return "GPTQ safetensors";
        case ExportTarget::FakeQuantSafetensors: return "fake-quant safetensors";
    }
    return "";
}

Result<ExportCompatibility> checkExportCompatibility(ExportTarget target, const Model& model,
                                                     const LayoutPlan& plan,
                                                     const HfExportOptions& options)
{
    auto p = planExport(target, model, plan, options);
    if (!p) return p.error();
    return p->compat;
}

std::vector<std::string> compatibilityLines(const ExportCompatibility& c)
{
    std::vector<std::string> out;
    for (const auto& i : c.issues)
        out.push_back(i.tensor + ": " + i.wanted + " -> " + i.fallback + " (" + i.problem + ")");
    return out;
}

Result<HfExportReport> writeGptqFolder(const Model& model, const QuantizedModel& quantized,
                                       const std::string& dir, const HfExportOptions& options,
                                       const ProgressFn& progress)
{
    try {
        return writeFolder(ExportTarget::GptqSafetensors, model, quantized, dir, options, progress);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory while writing " + dir);
    }
}

Result<HfExportReport> writeFakeQuantFolder(const Model& model, const QuantizedModel& quantized,
                                            const std::string& dir, const HfExportOptions& options,
                                            const ProgressFn& progress)
{
    try {
        return writeFolder(ExportTarget::FakeQuantSafetensors, model, quantized, dir, options,
                           progress);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory while writing " + dir);
    }
}

}  // namespace ql
