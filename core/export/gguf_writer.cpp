// GGUF writer. Everything before the tensor data (metadata, tensor infos with their offsets) is
// serialised into memory first: the offsets need only each tensor's stored size, which the plan
// fixes before any tensor is quantized. The data then streams behind it, one tensor at a time,
// from a callback that either quantizes the tensor now (exportGguf) or hands out one already in
// memory (writeGguf). All output goes through a temporary file that is removed unless the last
// step, the rename, is reached.
#include "export/gguf_writer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "quant/ggml_dequant.h"

namespace ql {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the GGUF writer assumes a little-endian host");

constexpr std::uint32_t kGgufVersion = 3;
constexpr std::uint32_t kQuantizationVersion = 2;  // ggml's GGML_QNT_VERSION

// Little-endian byte buffer.
struct Bytes {
    std::vector<std::uint8_t> b;

    template <class T>
    void put(T v)
    {
        std::uint8_t raw[sizeof(T)];
        std::memcpy(raw, &v, sizeof(T));
        b.insert(b.end(), raw, raw + sizeof(T));
    }
    void str(std::string_view s)
    {
        put<std::uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
    }
};

std::uint64_t asU64(const MetaValue& v)
{
    if (auto* u = std::get_if<std::uint64_t>(&v.value)) return *u;
    if (auto* i = std::get_if<std::int64_t>(&v.value)) return static_cast<std::uint64_t>(*i);
    if (auto* b = std::get_if<bool>(&v.value)) return *b ? 1 : 0;
    if (auto* d = std::get_if<double>(&v.value)) return static_cast<std::uint64_t>(*d);
    return 0;
}

// Writes one value of `type`; false when the value does not hold that type.
bool putValue(Bytes& out, MetaType type, const MetaValue& v)
{
    const bool numeric = std::holds_alternative<std::uint64_t>(v.value) ||
                         std::holds_alternative<std::int64_t>(v.value) ||
                         std::holds_alternative<double>(v.value) ||
                         std::holds_alternative<bool>(v.value);
    switch (type) {
        case MetaType::U8: out.put(std::uint8_t(asU64(v))); return numeric;
        case MetaType::I8: out.put(std::int8_t(asU64(v))); return numeric;
        case MetaType::U16: out.put(std::uint16_t(asU64(v))); return numeric;
        case MetaType::I16: out.put(std::int16_t(asU64(v))); return numeric;
        case MetaType::U32: out.put(std::uint32_t(asU64(v))); return numeric;
        case MetaType::I32: out.put(std::int32_t(asU64(v))); return numeric;
        case MetaType::U64: out.put(asU64(v)); return numeric;
        case MetaType::I64: out.put(std::int64_t(asU64(v))); return numeric;
        case MetaType::F32: out.put(float(v.asDouble().value_or(0))); return numeric;
        case MetaType::F64: out.put(v.asDouble().value_or(0)); return numeric;
        case MetaType::Bool: out.put(std::uint8_t(asU64(v) != 0)); return numeric;
        case MetaType::String: {
            const std::string* s = v.asString();
            out.str(s ? *s : std::string());
            return s != nullptr;
        }
        case MetaType::Array: {
            const MetaArray* a = v.asArray();
            if (!a) return false;
            out.put(static_cast<std::uint32_t>(a->elementType));
            out.put(static_cast<std::uint64_t>(a->values.size()));
            for (const MetaValue& e : a->values)
                if (!putValue(out, a->elementType, e)) return false;
            return true;
        }
    }
    return false;
}

MetaValue makeU32(std::uint32_t v)
{
    return Metadata::makeU32(v);
}

MetaValue stringArray(std::vector<std::string> items)
{
    MetaArray a;
    a.elementType = MetaType::String;
    a.values.reserve(items.size());
    for (auto& s : items) a.values.push_back(Metadata::makeString(std::move(s)));
    MetaValue v;
    v.type = MetaType::Array;
    v.value = std::move(a);
    return v;
}

template <class T>
MetaValue numberArray(MetaType type, const std::vector<T>& items)
{
    MetaArray a;
    a.elementType = type;
    a.values.reserve(items.size());
    for (T x : items) {
        MetaValue e;
        e.type = type;
        if constexpr (std::is_floating_point_v<T>)
            e.value = double(x);
        else
            e.value = std::int64_t(x);
        a.values.push_back(std::move(e));
    }
    MetaValue v;
    v.type = MetaType::Array;
    v.value = std::move(a);
    return v;
}

// --- tokenizers ------------------------------------------------------------------------------

bool isByteToken(const std::string& s)
{
    return s.size() == 6 && s.rfind("<0x", 0) == 0 && s[5] == '>' &&
           std::isxdigit(static_cast<unsigned char>(s[3])) &&
           std::isxdigit(static_cast<unsigned char>(s[4]));
}

std::string trimSpace(const std::string& s)
{
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return {};
    const auto e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

// llama2.c tokenizer.bin: i32 max_token_length, then per token f32 score, i32 length, bytes.
// Spaces become SentencePiece's "▁" as in GGUF; BOS/EOS ("\n<s>\n") lose their newlines.
void llama2cTokenizer(const Model& model, std::vector<std::pair<std::string, MetaValue>>& out,
                      std::vector<std::string>& warnings)
{
    const std::string& path = model.tokenizer.path;
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
    if (!in.good() && !in.eof()) {
        warnings.push_back("tokenizer " + path + " could not be read: not embedded");
        return;
    }
    const std::int64_t bos = model.metadata.getInt("tokenizer.ggml.bos_token_id").value_or(1);
    const std::int64_t eos = model.metadata.getInt("tokenizer.ggml.eos_token_id").value_or(2);
    const std::int64_t unk = model.metadata.getInt("tokenizer.ggml.unknown_token_id").value_or(0);
    const std::int64_t vocab = model.hparams.vocabSize;
    std::vector<std::string> tokens;
    std::vector<float> scores;
    std::vector<std::int32_t> types;
    std::size_t p = 4;
    while (p + 8 <= bytes.size() && (vocab <= 0 || std::int64_t(tokens.size()) < vocab)) {
        float score = 0;
        std::int32_t len = 0;
        std::memcpy(&score, bytes.data() + p, 4);
        std::memcpy(&len, bytes.data() + p + 4, 4);
        p += 8;
        if (len < 0 || p + std::size_t(len) > bytes.size()) {
            warnings.push_back("tokenizer " + path + " is truncated at token " +
                               std::to_string(tokens.size()) + ": not embedded");
            return;
        }
        std::string text(bytes.data() + p, std::size_t(len));
        p += std::size_t(len);
        const std::int64_t id = std::int64_t(tokens.size());
        std::int32_t type = 1;  // normal
        if (id == unk) {
            type = 2;
            text = trimSpace(text);
        } else if (id == bos || id == eos) {
            type = 3;
            text = trimSpace(text);
        } else if (isByteToken(text)) {
            type = 6;
        }
        std::string piece;
        for (char c : text) piece += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
        tokens.push_back(std::move(piece));
        scores.push_back(score);
        types.push_back(type);
    }
    if (bytes.size() < 4 || tokens.empty() || (vocab > 0 && std::int64_t(tokens.size()) != vocab)) {
        warnings.push_back("tokenizer " + path + " holds " + std::to_string(tokens.size()) +
                           " tokens, the model " + std::to_string(vocab) + ": not embedded");
        return;
    }
    out.emplace_back("tokenizer.ggml.model", Metadata::makeString("llama"));
    out.emplace_back("tokenizer.ggml.tokens", stringArray(std::move(tokens)));
    out.emplace_back("tokenizer.ggml.scores", numberArray(MetaType::F32, scores));
    out.emplace_back("tokenizer.ggml.token_type", numberArray(MetaType::I32, types));
    if (!model.metadata.find("tokenizer.ggml.unknown_token_id"))
        out.emplace_back("tokenizer.ggml.unknown_token_id", makeU32(std::uint32_t(unk)));
}

// Hugging Face tokenizer.json with a byte-level BPE model -> tokenizer.ggml.model "gpt2".
void hfTokenizer(const Model& model, std::vector<std::pair<std::string, MetaValue>>& out,
                 std::vector<std::string>& warnings)
{
    const std::string& path = model.tokenizer.path;
    nlohmann::json j;
    try {
        std::ifstream in(path, std::ios::binary);
        j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
        warnings.push_back("tokenizer " + path + " could not be parsed (" + e.what() +
                           "): not embedded");
        return;
    }
    const auto& m = j.value("model", nlohmann::json::object());
    if (m.value("type", std::string()) != "BPE" || m.value("byte_fallback", false) ||
        !m.contains("vocab") || !m["vocab"].is_object()) {
        warnings.push_back("tokenizer " + path +
                           " is not a byte-level BPE tokenizer; only those are converted to "
                           "GGUF (not embedded)");
        return;
    }
    std::map<std::int64_t, std::pair<std::string, std::int32_t>> byId;
    for (const auto& [text, id] : m["vocab"].items())
        if (id.is_number_integer()) byId[id.get<std::int64_t>()] = {text, 1};
    for (const auto& t : j.value("added_tokens", nlohmann::json::array())) {
        if (!t.contains("id") || !t.contains("content")) continue;
        byId[t["id"].get<std::int64_t>()] = {t["content"].get<std::string>(),
                                             t.value("special", false) ? 3 : 4};
    }
    const std::int64_t count = std::max<std::int64_t>(model.hparams.vocabSize,
                                                      byId.empty() ? 0 : byId.rbegin()->first + 1);
    if (byId.empty() || byId.begin()->first < 0 || count > (1 << 24)) {
        warnings.push_back("tokenizer " + path + " has an unusable vocabulary: not embedded");
        return;
    }
    std::vector<std::string> tokens(static_cast<std::size_t>(count));
    std::vector<std::int32_t> types(static_cast<std::size_t>(count), 5);  // unused
    for (std::int64_t i = 0; i < count; ++i)
        tokens[std::size_t(i)] = "[PAD" + std::to_string(i) + "]";
    for (auto& [id, tt] : byId) {
        tokens[std::size_t(id)] = tt.first;
        types[std::size_t(id)] = tt.second;
    }
    std::vector<std::string> merges;
    for (const auto& mg : m.value("merges", nlohmann::json::array())) {
        if (mg.is_string())
            merges.push_back(mg.get<std::string>());
        else if (mg.is_array() && mg.size() == 2)
            merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
    }
    out.emplace_back("tokenizer.ggml.model", Metadata::makeString("gpt2"));
    out.emplace_back("tokenizer.ggml.tokens", stringArray(std::move(tokens)));
    out.emplace_back("tokenizer.ggml.token_type", numberArray(MetaType::I32, types));
    out.emplace_back("tokenizer.ggml.merges", stringArray(std::move(merges)));
    warnings.push_back("tokenizer " + path +
                       ": no tokenizer.ggml.pre written (llama.cpp will use its default "
                       "pre-tokenizer)");
}

// --- the output file -------------------------------------------------------------------------

// A temporary file beside the target, removed unless committed.
class TempFile {
public:
    explicit TempFile(std::string path) : m_path(std::move(path))
    {
        // pid and a counter: two writes to one path from one process never share a temp file.
        static std::atomic<unsigned> counter{0};
        m_tmp = m_path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    }
    ~TempFile()
    {
        if (m_file) std::fclose(m_file);
        if (!m_committed) std::remove(m_tmp.c_str());
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;

    Status open()
    {
        m_file = std::fopen(m_tmp.c_str(), "wb");
        if (!m_file)
            return makeError(ErrorCode::Io, "cannot write " + m_path + ": creating " + m_tmp +
                                                " failed: " + std::strerror(errno));
        return {};
    }
    Status write(const void* data, std::size_t n)
    {
        if (n && std::fwrite(data, 1, n, m_file) != n)
            return makeError(ErrorCode::Io,
                             "writing " + m_tmp + " failed: " + std::strerror(errno));
        m_written += n;
        return {};
    }
    Status pad(std::uint64_t alignment)
    {
        static const std::uint8_t zeros[64] = {};
        std::uint64_t n = (alignment - m_written % alignment) % alignment;
        while (n > 0) {
            const std::size_t k = std::size_t(std::min<std::uint64_t>(n, sizeof zeros));
            QL_TRY_STATUS(write(zeros, k));
            n -= k;
        }
        return {};
    }
    Status commit()
    {
        if (std::fflush(m_file) != 0 || ::fsync(::fileno(m_file)) != 0)
            return makeError(ErrorCode::Io,
                             "writing " + m_tmp + " failed: " + std::strerror(errno));
        const int rc = std::fclose(m_file);
        m_file = nullptr;
        if (rc != 0)
            return makeError(ErrorCode::Io,
                             "closing " + m_tmp + " failed: " + std::strerror(errno));
        if (std::rename(m_tmp.c_str(), m_path.c_str()) != 0)
            return makeError(ErrorCode::Io, "renaming " + m_tmp + " to " + m_path +
                                                " failed: " + std::strerror(errno));
        m_committed = true;
        return {};
    }
    std::uint64_t written() const { return m_written; }

private:
    std::string m_path;
    std::string m_tmp;
    std::FILE* m_file = nullptr;
    bool m_committed = false;
    std::uint64_t m_written = 0;
};

// Hugging Face llama/mistral q/k rows -> llama.cpp's order (see the header).
bool needsRopePermutation(const Model& model, const TensorInfo& t)
{
    const HyperParams& hp = model.hparams;
    return model.format == ModelFormat::Safetensors &&
           (hp.architecture == "llama" || hp.architecture == "mistral") && hp.headDim > 0 &&
           hp.headDim % 2 == 0 &&
           (t.role == TensorRole::AttnQ || t.role == TensorRole::AttnK ||
            t.role == TensorRole::AttnQBias || t.role == TensorRole::AttnKBias);
}

// Reorders `rows` rows of `rowBytes` bytes each from Hugging Face to llama.cpp RoPE order.
Status permuteRows(const std::uint8_t* src, std::int64_t rows, std::uint64_t rowBytes,
                   std::int64_t headDim, std::vector<std::uint8_t>& dst)
{
    if (rows % headDim != 0)
        return makeError(
            ErrorCode::InvalidArgument,
            std::to_string(rows) + " rows are not whole heads of " + std::to_string(headDim));
    const std::int64_t half = headDim / 2;
    dst.resize(std::size_t(rows) * rowBytes);
    for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t head = r / headDim, within = r % headDim;
        const std::int64_t from = head * headDim + (within % 2) * half + within / 2;
        std::memcpy(dst.data() + std::uint64_t(r) * rowBytes, src + std::uint64_t(from) * rowBytes,
                    rowBytes);
    }
    return {};
}

struct OutTensor {
    TensorType type = TensorType::F32;
    bool dequantized = false;
    std::uint64_t bytes = 0;
    std::uint64_t offset = 0;
};

// Gives tensor i (in plan order); the pointer stays valid until the next call.
using TensorSource =
    std::function<Result<const TensorQuantization*>(std::size_t index, const ProgressFn& progress)>;

Result<GgufWriteReport> writeFile(const Model& model, const std::string& layoutText,
                                  const LayoutPlan& plan, const std::string& path,
                                  const GgufExportOptions& options, const TensorSource& source,
                                  const ProgressFn& progress)
{
    const auto start = std::chrono::steady_clock::now();
    if (options.dequantType != TensorType::F16 && options.dequantType != TensorType::F32)
        return makeError(ErrorCode::InvalidArgument,
                         "dequantized tensors are written as f16 or f32, not " +
                             std::string(tensorTypeName(options.dequantType)));
    GgufWriteReport report;
    report.path = path;
    report.fallbacks = plan.fallbacks;
    report.warnings = plan.warnings;

    // Storage of every tensor, and the file type from the type holding most weights.
    std::vector<OutTensor> out(plan.tensors.size());
    std::map<TensorType, double> weightsByType;
    bool anyQuantized = false;
    std::vector<std::string> dequantNotes, fallbackNotes, widened, badF16;
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const TensorPlan& p = plan.tensors[i];
        out[i].type = ggufStorageType(p.format, options.dequantType, p.cols, &out[i].dequantized);
        if (out[i].dequantized && out[i].type != options.dequantType) widened.push_back(p.name);
        if (p.shape.size() >= 2 && out[i].type == TensorType::F16 &&
            p.cols % llamaCppRowMultiple(TensorType::F16) != 0)
            badF16.push_back(p.name);
        auto bytes = tensorBytes(out[i].type, std::uint64_t(p.elementCount()));
        if (!bytes)
            return makeError(ErrorCode::InvalidArgument,
                             p.name + ": " + std::to_string(p.elementCount()) + " weights of " +
                                 std::string(tensorTypeName(out[i].type)) +
                                 " are not a whole number of blocks");
        out[i].bytes = *bytes;
        if (p.shape.size() >= 2) weightsByType[out[i].type] += double(p.elementCount());
        if (out[i].type != TensorType::F32 && out[i].type != TensorType::F16 &&
            out[i].type != TensorType::BF16)
            anyQuantized = true;
        if (out[i].dequantized) dequantNotes.push_back(p.name + "=" + formatToString(p.format));
    }
    for (const auto& f : plan.fallbacks)
        fallbackNotes.push_back(f.tensor + ": " + formatToString(f.wanted) + " -> " +
                                formatToString(f.got));
    auto nameList = [](const std::vector<std::string>& names) {
        std::string s = names.front();
        if (names.size() > 1) s += " and " + std::to_string(names.size() - 1) + " more";
        return s;
    };
    if (!widened.empty())
        report.notes.push_back(
            std::to_string(widened.size()) + " dequantized tensors (" + nameList(widened) +
            ") written as F32, not F16: their rows are not a multiple of 16 values, which "
            "llama.cpp's AMX F16 kernel computes wrongly");
    if (!badF16.empty())
        report.warnings.push_back(
            std::to_string(badF16.size()) + " F16 matrices (" + nameList(badF16) +
            ") have rows that are not a multiple of 16 values: llama.cpp on CPUs with AMX "
            "computes them wrongly (garbage or NaN); store them as f32 or bf16, or run llama.cpp "
            "with --no-repack");
    TensorType mostly = TensorType::F32;
    double most = -1;
    for (const auto& [type, n] : weightsByType)
        if (n > most) {
            most = n;
            mostly = type;
        }

    std::uint64_t alignment = kGgufDefaultAlignment;
    if (const MetaValue* a = model.metadata.find("general.alignment")) {
        const auto v = a->asInt();
        if (v && *v >= 8 && *v % 8 == 0 && *v <= (1 << 30)) alignment = std::uint64_t(*v);
    }

    // Metadata, in the source's order; replaced keys stay where they were.
    std::vector<std::pair<std::string, MetaValue>> kv;
    bool haveFileType = false, haveQuantVersion = false;
    for (const std::string& key : model.metadata.keys()) {
        if (key.rfind("quantlens.", 0) == 0) continue;
        if (key == "general.file_type") {
            kv.emplace_back(key, makeU32(ggufFileType(mostly)));
            haveFileType = true;
            continue;
        }
        if (key == "general.quantization_version" && anyQuantized) {
            kv.emplace_back(key, makeU32(kQuantizationVersion));
            haveQuantVersion = true;
            continue;
        }
        kv.emplace_back(key, *model.metadata.find(key));
    }
    for (auto& e : tokenizerMetadata(model, report.warnings)) kv.push_back(std::move(e));
    if (!haveFileType) kv.emplace_back("general.file_type", makeU32(ggufFileType(mostly)));
    if (anyQuantized && !haveQuantVersion)
        kv.emplace_back("general.quantization_version", makeU32(kQuantizationVersion));
    kv.emplace_back("quantlens.producer", Metadata::makeString(options.producer));
    kv.emplace_back("quantlens.layout", Metadata::makeString(layoutText));
    kv.emplace_back("quantlens.source",
                    Metadata::makeString(std::filesystem::path(model.path).filename().string()));
    kv.emplace_back("quantlens.source_format", Metadata::makeString(modelFormatName(model.format)));
    if (!options.calibrationPath.empty())
        kv.emplace_back("quantlens.calibration", Metadata::makeString(options.calibrationPath));
    if (!fallbackNotes.empty()) kv.emplace_back("quantlens.fallbacks", stringArray(fallbackNotes));
    if (!dequantNotes.empty()) kv.emplace_back("quantlens.dequantized", stringArray(dequantNotes));

    // Header: magic, version, counts, metadata, tensor infos.
    Bytes head;
    head.put(kGgufMagic);
    head.put(kGgufVersion);
    head.put(std::uint64_t(plan.tensors.size()));
    head.put(std::uint64_t(kv.size()));
    for (const auto& [key, value] : kv) {
        head.str(key);
        head.put(static_cast<std::uint32_t>(value.type));
        if (!putValue(head, value.type, value))
            return makeError(ErrorCode::Format, "metadata key " + key + ": its value is not a " +
                                                    metaTypeName(value.type));
    }
    std::uint64_t offset = 0;
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const TensorPlan& p = plan.tensors[i];
        head.str(p.name);
        const std::vector<std::int64_t> shape =
            p.shape.empty() ? std::vector<std::int64_t>{1} : p.shape;
        head.put(std::uint32_t(shape.size()));
        for (auto d = shape.rbegin(); d != shape.rend(); ++d) head.put(std::uint64_t(*d));
        head.put(static_cast<std::uint32_t>(out[i].type));
        out[i].offset = offset;
        head.put(offset);
        offset += (out[i].bytes + alignment - 1) / alignment * alignment;
    }

    TempFile file(path);
    QL_TRY_STATUS(file.open());
    QL_TRY_STATUS(file.write(head.b.data(), head.b.size()));
    QL_TRY_STATUS(file.pad(alignment));
    const std::uint64_t dataStart = file.written();

    double total = 0, done = 0;
    for (const auto& p : plan.tensors) total += double(p.elementCount());
    std::vector<std::uint8_t> converted, permuted;
    int permutedCount = 0;
    for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
        const TensorPlan& p = plan.tensors[i];
        const double n = double(p.elementCount());
        ProgressFn inner;
        if (progress)
            inner = [&](double f, std::string_view) {
                return progress(total > 0 ? (done + f * n) / total : 1.0, p.name);
            };
        auto t = source(i, inner);
        if (!t) return t.error();
        const TensorQuantization& tq = **t;
        if (tq.report.plan.name != p.name)
            return makeError(
                ErrorCode::InvalidArgument,
                "tensor " + std::to_string(i) + " is " + tq.report.plan.name + ", not " + p.name);
        GgufTensorRecord rec;
        rec.report = tq.report;
        rec.storedType = out[i].type;
        rec.dequantized = out[i].dequantized;
        rec.bytes = out[i].bytes;

        const std::uint8_t* data = tq.quantized.blocks.data();
        std::size_t size = tq.quantized.blocks.size();
        if (out[i].dequantized) {
            auto values = tq.quantized.dequantize();
            if (!values) return values.error();
            if (out[i].type == TensorType::F32) {
                converted.resize(values->size() * 4);
                std::memcpy(converted.data(), values->data(), converted.size());
            } else {
                converted.resize(values->size() * 2);
                double worst = 0;
                for (std::size_t k = 0; k < values->size(); ++k) {
                    const std::uint16_t h = fp32ToFp16((*values)[k]);
                    std::memcpy(converted.data() + 2 * k, &h, 2);
                    worst = std::max(worst, std::fabs(double(fp16ToFp32(h)) - (*values)[k]));
                }
                rec.storageError = worst;
                if (!std::isfinite(worst))
                    report.warnings.push_back(p.name + ": values beyond the F16 range became " +
                                              "infinite; write with f32 instead");
            }
            data = converted.data();
            size = converted.size();
        }
        if (size != out[i].bytes)
            return makeError(ErrorCode::InvalidArgument,
                             p.name + ": " + std::to_string(size) + " bytes to write, " +
                                 std::to_string(out[i].bytes) + " planned");
        if (const TensorInfo* info = model.find(p.name);
            info && needsRopePermutation(model, *info)) {
            // A bias has one element per row; a 2-D weight's rows are contiguous in every format.
            const bool bias = p.shape.size() == 1;
            const std::int64_t rows = bias ? p.elementCount() : p.rows;
            if (bias && traits(out[i].type).blockSize != 1)
                return makeError(ErrorCode::Unsupported,
                                 p.name +
                                     ": a bias whose elements must be reordered for llama.cpp "
                                     "cannot be stored in a block format");
            if (auto st = permuteRows(data, rows, size / std::uint64_t(rows), model.hparams.headDim,
                                      permuted);
                !st)
                return makeError(st.error().code, p.name + ": " + st.error().message);
            data = permuted.data();
            ++permutedCount;
        }
        if (file.written() != dataStart + out[i].offset)
            return makeError(ErrorCode::Io, p.name + ": data would land at the wrong offset");
        QL_TRY_STATUS(file.write(data, size));
        QL_TRY_STATUS(file.pad(alignment));
        report.tensorBytes += rec.bytes;
        report.weights += p.elementCount();
        report.formatBits += rec.report.storedBits;
        report.tensors.push_back(std::move(rec));
        done += n;
        if (!reportProgress(progress, total > 0 ? done / total : 1.0, p.name))
            return makeError(ErrorCode::Cancelled, "writing " + path + " cancelled");
    }
    QL_TRY_STATUS(file.commit());
    if (permutedCount > 0)
        report.notes.push_back(std::to_string(permutedCount) +
                               " attn_q/attn_k tensors reordered from Hugging Face's RoPE row "
                               "order to llama.cpp's");
    report.fileBytes = file.written();
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
}

}  // namespace

std::uint32_t ggufFileType(TensorType type)
{
    switch (type) {
        case TensorType::F32: return 0;
        case TensorType::F16: return 1;
        case TensorType::Q4_0: return 2;
        case TensorType::Q4_1: return 3;
        case TensorType::Q8_0: return 7;
        case TensorType::Q5_0: return 8;
        case TensorType::Q5_1: return 9;
        case TensorType::Q2_K: return 10;
        case TensorType::Q3_K: return 11;  // Q3_K_S
        case TensorType::Q4_K: return 14;  // Q4_K_S
        case TensorType::Q5_K: return 16;  // Q5_K_S
        case TensorType::Q6_K: return 18;
        case TensorType::BF16: return 32;
    }
    return 0;
}

TensorType ggufStorageType(const QuantFormat& format, TensorType dequantType, std::int64_t cols,
                           bool* dequantized)
{
    const bool native = format.kind == QuantKind::Float || format.kind == QuantKind::Ggml;
    if (dequantized) *dequantized = !native;
    if (native) return format.type;
    if (cols > 0 && cols % llamaCppRowMultiple(dequantType) != 0) return TensorType::F32;
    return dequantType;
}

std::vector<std::pair<std::string, MetaValue>> tokenizerMetadata(const Model& model,
                                                                 std::vector<std::string>& warnings)
{
    std::vector<std::pair<std::string, MetaValue>> out;
    if (model.metadata.find("tokenizer.ggml.tokens")) return out;
    switch (model.tokenizer.kind) {
        case TokenizerSource::Kind::Llama2cBin: llama2cTokenizer(model, out, warnings); break;
        case TokenizerSource::Kind::HfTokenizerJson: hfTokenizer(model, out, warnings); break;
        default:
            warnings.push_back("the model has no tokenizer: the GGUF file has none either");
            break;
    }
    return out;
}

Result<GgufWriteReport> exportGguf(const Model& model, const Layout& layout,
                                   const std::string& path, const CalibrationResult* calibration,
                                   const GgufExportOptions& options, const ProgressFn& progress)
{
    auto plan = layout.resolve(model);
    if (!plan) return plan.error();
    QL_TRY_STATUS(checkMethodsAvailable(layout, *plan));
    QuantizeOptions quantizeOptions = options.quantize;
    AwqTransform awq;
    if (usesAwq(*plan) && !quantizeOptions.awq) {
        auto t = computeAwqTransform(model, *plan, calibration, quantizeOptions.threads);
        if (!t) return t.error();
        awq = std::move(t).value();
        quantizeOptions.awq = &awq;
    }
    std::optional<TensorQuantization> current;
    const LayoutPlan& p = *plan;
    TensorSource source = [&](std::size_t i,
                              const ProgressFn& inner) -> Result<const TensorQuantization*> {
        current.reset();  // free the previous tensor before making the next
        auto t = quantizeTensor(model, p.tensors[i], calibration, quantizeOptions, inner);
        if (!t) return t.error();
        current = std::move(t).value();
        return &*current;
    };
    try {
        return writeFile(model, layout.toString(), p, path, options, source, progress);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory while writing " + path);
    }
}

Result<GgufWriteReport> writeGguf(const Model& model, const QuantizedModel& quantized,
                                  const std::string& path, const GgufExportOptions& options,
                                  const ProgressFn& progress)
{
    if (quantized.tensors.size() != quantized.plan.tensors.size())
        return makeError(ErrorCode::InvalidArgument, "the quantized model is incomplete");
    for (const auto& p : quantized.plan.tensors)
        if (!model.find(p.name))
            return makeError(ErrorCode::InvalidArgument,
                             "the quantized model's tensor " + p.name + " is not in " + model.path);
    TensorSource source = [&](std::size_t i,
                              const ProgressFn& inner) -> Result<const TensorQuantization*> {
        if (!reportProgress(inner, 1.0, {}))
            return makeError(ErrorCode::Cancelled, "writing " + path + " cancelled");
        return &quantized.tensors[i];
    };
    try {
        return writeFile(model, quantized.layout, quantized.plan, path, options, source, progress);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory while writing " + path);
    }
}

}  // namespace ql
