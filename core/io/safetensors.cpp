// Hugging Face safetensors folders: reader and streaming writer.
//
// Reading maps each shard and parses only its JSON header; every tensor's [begin, end) is checked
// against the data section and against dtype size x shape before the Model points into the map.
// nlohmann::json throws on malformed input and on type mismatches: every use is inside the
// try-block of openSafetensors, so nothing is thrown across the API. config.json is translated
// into HyperParams and GGUF-vocabulary metadata (general.architecture, llama.block_count, ...).
//
// Writing streams: the header (shapes and offsets) is known up front, then tensor data is pulled
// from a callback a chunk at a time, converted to the output dtype and appended, so memory stays
// at one chunk whatever the model size. Files are written under temporary names, flushed to
// disk and renamed into place only when complete.
#include "io/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/gptq_layout.h"
#include "io/model_loader.h"

namespace ql {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;   // the reference implementation's limit
constexpr std::uint64_t kMaxJsonFileBytes = 64ull << 20;  // config.json, index.json
constexpr std::size_t kMaxDims = 8;

// --- float conversions (round to nearest even) -----------------------------------------------

float halfToFloat(std::uint16_t h)
{
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1f;
    const std::uint32_t mant = h & 0x3ff;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24
        const float v = std::ldexp(static_cast<float>(mant), -24);
        return sign ? -v : v;
    }
    if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000 | (mant << 13));
    return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

std::uint16_t floatToHalf(float f)
{
    std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000);
    x &= 0x7fffffff;
    if (x > 0x7f800000) return sign | 0x7e00;   // NaN (quiet)
    if (x >= 0x477ff000) return sign | 0x7c00;  // >= 65520 rounds to infinity
    if (x < 0x38800000) {                       // below 2^-14: a half subnormal
        // Adding 0.5 leaves the value rounded (to even) to a multiple of 2^-24 in the low bits.
        const float r = std::bit_cast<float>(x) + 0.5f;
        return sign | static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(r) - 0x3f000000u);
    }
    const std::uint32_t odd = (x >> 13) & 1;
    x += 0xc8000000u + 0xfffu + odd;  // rebias the exponent (-112 << 23) and round to even
    return sign | static_cast<std::uint16_t>(x >> 13);
}

float bf16ToFloat(std::uint16_t h)
{
    return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

std::uint16_t floatToBf16(float f)
{
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffff) > 0x7f800000) return static_cast<std::uint16_t>((x >> 16) | 0x40);
    return static_cast<std::uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

std::uint16_t loadU16(const std::uint8_t* p)
{
    return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

// --- names ----------------------------------------------------------------------------------

struct HfName {
    TensorRole role;
    std::string_view hf;
};

constexpr std::string_view kLayersPrefix = "model.layers.";

constexpr HfName kHfBlock[] = {
    {TensorRole::AttnQ, "self_attn.q_proj.weight"},
    {TensorRole::AttnK, "self_attn.k_proj.weight"},
    {TensorRole::AttnV, "self_attn.v_proj.weight"},
    {TensorRole::AttnOutput, "self_attn.o_proj.weight"},
    {TensorRole::AttnQBias, "self_attn.q_proj.bias"},
    {TensorRole::AttnKBias, "self_attn.k_proj.bias"},
    {TensorRole::AttnVBias, "self_attn.v_proj.bias"},
    {TensorRole::FfnGate, "mlp.gate_proj.weight"},
    {TensorRole::FfnUp, "mlp.up_proj.weight"},
    {TensorRole::FfnDown, "mlp.down_proj.weight"},
    {TensorRole::AttnNorm, "input_layernorm.weight"},
    {TensorRole::FfnNorm, "post_attention_layernorm.weight"},
};

constexpr HfName kHfTop[] = {
    {TensorRole::TokenEmbd, "model.embed_tokens.weight"},
    {TensorRole::OutputNorm, "model.norm.weight"},
    {TensorRole::Output, "lm_head.weight"},
};

// "model.layers.N.rest" -> N and rest; -1 when the name has another form.
int hfLayer(std::string_view name, std::string_view& rest)
{
    if (name.substr(0, kLayersPrefix.size()) != kLayersPrefix) return -1;
    name.remove_prefix(kLayersPrefix.size());
    int block = -1;
    auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), block);
    const auto digits = static_cast<std::size_t>(end - name.data());
    if (ec != std::errc() || digits == 0 || digits > 7 || name[0] == '-' || digits >= name.size() ||
        name[digits] != '.')
        return -1;
    rest = name.substr(digits + 1);
    return block;
}

// --- JSON helpers ---------------------------------------------------------------------------

Result<json> parseJsonFile(const std::string& path)
{
    auto file = MappedFile::open(path);
    if (!file) return file.error();
    const MappedFile& f = **file;
    if (f.size() == 0) return makeError(ErrorCode::Format, path + ": the file is empty");
    if (f.size() > kMaxJsonFileBytes)
        return makeError(ErrorCode::Format, path + ": " + std::to_string(f.size()) +
                                                " bytes is too large for a JSON model file");
    try {
        return json::parse(f.data(), f.data() + f.size());
    } catch (const json::parse_error& e) {
        return makeError(ErrorCode::Format, path + ": invalid JSON near byte " +
                                                std::to_string(e.byte ? e.byte - 1 : 0) + ": " +
                                                e.what());
    }
}

// Reads typed fields of config.json; the first mistake is kept.
class ConfigReader {
public:
    ConfigReader(const json& j, std::string path) : m_j(j), m_path(std::move(path)) {}

    std::int64_t integer(const char* key, std::optional<std::int64_t> fallback)
    {
        auto it = m_j.find(key);
        if (it == m_j.end() || it->is_null()) {
            if (!fallback) setError(std::string(key) + " is missing");
            return fallback.value_or(0);
        }
        if (it->is_number_unsigned()) {
            const auto u = it->get<std::uint64_t>();
            if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                return static_cast<std::int64_t>(u);
        } else if (it->is_number_integer()) {
            return it->get<std::int64_t>();
        }
        setError(std::string(key) + " is not an integer (" + it->dump().substr(0, 40) + ")");
        return 0;
    }

    double number(const char* key, double fallback)
    {
        auto it = m_j.find(key);
        if (it == m_j.end() || it->is_null()) return fallback;
        if (it->is_number()) return it->get<double>();
        setError(std::string(key) + " is not a number (" + it->dump().substr(0, 40) + ")");
        return fallback;
    }

    std::optional<bool> boolean(const char* key)
    {
        auto it = m_j.find(key);
        if (it == m_j.end() || it->is_null()) return std::nullopt;
        if (it->is_boolean()) return it->get<bool>();
        setError(std::string(key) + " is not true or false");
        return std::nullopt;
    }

    std::string string(const char* key)
    {
        auto it = m_j.find(key);
        if (it == m_j.end() || !it->is_string()) return {};
        return it->get<std::string>();
    }

    bool failed() const { return m_failed; }
    Error error() const { return m_error; }

private:
    void setError(const std::string& what)
    {
        if (m_failed) return;
        m_failed = true;
        m_error = makeError(ErrorCode::Format, m_path + ": " + what);
    }

    const json& m_j;
    std::string m_path;
    bool m_failed = false;
    Error m_error;
};

// HyperParams from a Hugging Face config (Llama, Mistral, Qwen2).
Result<HyperParams> hyperParamsFromConfig(const json& config, const std::string& path)
{
    if (!config.is_object())
        return makeError(ErrorCode::Format, path + ": config.json is not a JSON object");
    std::string hfArch;
    if (auto it = config.find("architectures");
        it != config.end() && it->is_array() && !it->empty() && (*it)[0].is_string())
        hfArch = (*it)[0].get<std::string>();
    ConfigReader r(config, path);
    const std::string modelType = r.string("model_type");

    HyperParams hp;
    if (hfArch == "LlamaForCausalLM" || hfArch == "MistralForCausalLM" || modelType == "llama" ||
        modelType == "mistral")
        hp.architecture = "llama";  // llama.cpp writes Mistral as llama: the same graph
    else if (hfArch == "Qwen2ForCausalLM" || modelType == "qwen2")
        hp.architecture = "qwen2";
    else
        return makeError(ErrorCode::Unsupported,
                         path + ": architecture '" + (hfArch.empty() ? modelType : hfArch) +
                             "' is not supported (QuantLens reads Llama, Mistral and Qwen2 "
                             "models)");

    hp.embeddingDim = r.integer("hidden_size", std::nullopt);
    hp.ffnDim = r.integer("intermediate_size", std::nullopt);
    hp.blockCount = r.integer("num_hidden_layers", std::nullopt);
    hp.headCount = r.integer("num_attention_heads", std::nullopt);
    hp.headCountKv = r.integer("num_key_value_heads", hp.headCount);
    if (r.failed()) return r.error();
    std::optional<std::int64_t> defaultHeadDim;
    if (hp.headCount > 0 && hp.embeddingDim % hp.headCount == 0)
        defaultHeadDim = hp.embeddingDim / hp.headCount;
    hp.headDim = r.integer("head_dim", defaultHeadDim);
    hp.vocabSize = r.integer("vocab_size", std::nullopt);
    hp.contextLength = r.integer("max_position_embeddings", 0);
    hp.rmsNormEps = r.number("rms_norm_eps", 1e-6);  // transformers' LlamaConfig default
    hp.ropeTheta = r.number("rope_theta", 10000.0);
    if (r.failed()) return r.error();

    if (auto it = config.find("rope_scaling"); it != config.end() && !it->is_null()) {
        if (!it->is_object())
            return makeError(ErrorCode::Format, path + ": rope_scaling is not an object");
        ConfigReader s(*it, path + ": rope_scaling");
        std::string type = s.string("rope_type");
        if (type.empty()) type = s.string("type");
        hp.ropeScaling.type = type == "default" ? "" : type;
        hp.ropeScaling.factor = s.number("factor", 1.0);
        hp.ropeScaling.originalContext = s.integer("original_max_position_embeddings", 0);
        hp.ropeScaling.lowFreqFactor = s.number("low_freq_factor", 1.0);
        hp.ropeScaling.highFreqFactor = s.number("high_freq_factor", 4.0);
        if (s.failed()) return s.error();
    }
    return hp;
}

// --- one safetensors file -------------------------------------------------------------------

std::optional<TensorType> dtypeFromName(const std::string& dtype)
{
    if (dtype == "F32") return TensorType::F32;
    if (dtype == "F16") return TensorType::F16;
    if (dtype == "BF16") return TensorType::BF16;
    return std::nullopt;
}

const char* dtypeName(TensorType t)
{
    switch (t) {
        case TensorType::F32: return "F32";
        case TensorType::F16: return "F16";
        case TensorType::BF16: return "BF16";
        default: return nullptr;
    }
}

struct ShardTensor {
    std::string name;
    std::vector<std::int64_t> shape;
    TensorType type;
    std::uint64_t offset;  // absolute
    std::uint64_t bytes;
    bool int32 = false;  // an I32 tensor of a GPTQ checkpoint (`type` is then F32: 4 bytes)
};

// Parses and checks the header of one mapped safetensors file. Throws only nlohmann exceptions,
// which the caller catches.
Status readShardHeader(const MappedFile& file, std::vector<ShardTensor>& out,
                       std::vector<std::string>& warnings, bool allowInt32)
{
    const std::string& path = file.path();
    auto fail = [&](const std::string& what) {
        return makeError(ErrorCode::Format, path + ": " + what);
    };
    if (file.size() < 8)
        return fail("truncated: the 8-byte header length needs 8 bytes, the file has " +
                    std::to_string(file.size()));
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | file.data()[i];
    if (n > file.size() - 8)
        return fail("header length " + std::to_string(n) + " (byte 0) runs past the end of the " +
                    std::to_string(file.size()) + "-byte file");
    if (n > kMaxHeaderBytes)
        return fail("header length " + std::to_string(n) +
                    " exceeds the 100 MiB safetensors allows");
    const std::uint64_t dataStart = 8 + n;
    const std::uint64_t dataSize = file.size() - dataStart;

    json header;
    try {
        header = json::parse(file.data() + 8, file.data() + 8 + n);
    } catch (const json::parse_error& e) {
        return fail("invalid JSON header near byte " +
                    std::to_string(8 + (e.byte ? e.byte - 1 : 0)) + ": " + e.what());
    }
    if (!header.is_object()) return fail("the JSON header is not an object");

    out.reserve(header.size());
    for (const auto& [name, info] : header.items()) {
        if (name == "__metadata__") continue;
        const std::string where = "tensor " + name;
        if (!info.is_object()) return fail(where + ": its entry is not an object");
        auto dtypeIt = info.find("dtype");
        auto shapeIt = info.find("shape");
        auto offsetsIt = info.find("data_offsets");
        if (dtypeIt == info.end() || !dtypeIt->is_string())
            return fail(where + ": no dtype string");
        if (shapeIt == info.end() || !shapeIt->is_array()) return fail(where + ": no shape array");
        if (offsetsIt == info.end() || !offsetsIt->is_array() || offsetsIt->size() != 2 ||
            !(*offsetsIt)[0].is_number_unsigned() || !(*offsetsIt)[1].is_number_unsigned())
            return fail(where + ": data_offsets is not a pair of non-negative integers");
        const std::string dtype = dtypeIt->get<std::string>();
        const bool int32 = allowInt32 && dtype == "I32";
        auto type = int32 ? std::optional<TensorType>(TensorType::F32) : dtypeFromName(dtype);
        if (!type)
            return makeError(ErrorCode::Unsupported,
                             path + ": " + where + " has dtype " + dtype.substr(0, 32) +
                                 ", which QuantLens does not support (it reads F32, F16 and BF16)");
        if (shapeIt->size() > kMaxDims)
            return fail(where + ": " + std::to_string(shapeIt->size()) + " dimensions");
        std::vector<std::int64_t> shape;
        std::int64_t count = 1;
        for (const auto& d : *shapeIt) {
            if (!d.is_number_unsigned() ||
                d.get<std::uint64_t>() >
                    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                return fail(where + ": shape " + shapeIt->dump().substr(0, 80) +
                            " is not a list of non-negative integers");
            const auto v = static_cast<std::int64_t>(d.get<std::uint64_t>());
            if (__builtin_mul_overflow(count, v, &count))
                return fail(where + ": shape " + shapeIt->dump().substr(0, 80) +
                            " has more elements than 64 bits can count");
            shape.push_back(v);
        }
        const std::uint64_t begin = (*offsetsIt)[0].get<std::uint64_t>();
        const std::uint64_t end = (*offsetsIt)[1].get<std::uint64_t>();
        if (begin > end || end > dataSize)
            return fail(where + ": data_offsets [" + std::to_string(begin) + ", " +
                        std::to_string(end) + "] lie outside the " + std::to_string(dataSize) +
                        "-byte data section (which starts at byte " + std::to_string(dataStart) +
                        ")");
        const std::uint64_t elementBytes = traits(*type).blockBytes;
        if (static_cast<std::uint64_t>(count) >
                std::numeric_limits<std::uint64_t>::max() / elementBytes ||
            end - begin != static_cast<std::uint64_t>(count) * elementBytes)
            return fail(where + ": data_offsets [" + std::to_string(begin) + ", " +
                        std::to_string(end) + "] hold " + std::to_string(end - begin) +
                        " bytes, but " + dtype + " " + shapeIt->dump().substr(0, 80) + " needs " +
                        std::to_string(static_cast<std::uint64_t>(count) * elementBytes));
        if (shape.empty() || count == 0) {
            warnings.push_back(path + ": tensor " + name + " is empty or a scalar; skipped");
            continue;
        }
        out.push_back({name, std::move(shape), *type, dataStart + begin, end - begin, int32});
    }
    std::sort(out.begin(), out.end(),
              [](const ShardTensor& a, const ShardTensor& b) { return a.offset < b.offset; });
    return {};
}

bool safeShardName(const std::string& name)
{
    return !name.empty() && name.find('/') == std::string::npos &&
           name.find('\\') == std::string::npos && name != "." && name != "..";
}

// quantization_config of a GPTQ checkpoint (io/gptq_layout.h); nullopt without one.
struct GptqConfig {
    int bits = 4;
    std::int64_t groupSize = -1;
    int zeroOffset = 1;
    std::string text;  // for the metadata
};

Result<std::optional<GptqConfig>> gptqConfig(const json& config, const std::string& path)
{
    auto it = config.find("quantization_config");
    if (it == config.end() || it->is_null()) return std::optional<GptqConfig>();
    if (!it->is_object())
        return makeError(ErrorCode::Format, path + ": quantization_config is not an object");
    ConfigReader r(*it, path + ": quantization_config");
    const std::string method = r.string("quant_method");
    if (method != "gptq")
        return makeError(ErrorCode::Unsupported,
                         path + ": quant_method '" + method.substr(0, 32) +
                             "' is not supported (QuantLens reads unquantized checkpoints and "
                             "GPTQ ones)");
    GptqConfig g;
    g.bits = int(r.integer("bits", std::nullopt));
    g.groupSize = r.integer("group_size", -1);
    std::string format = r.string("checkpoint_format");
    if (r.failed()) return r.error();
    if (!gptqBitsSupported(g.bits))
        return makeError(ErrorCode::Unsupported, path + ": GPTQ bits = " + std::to_string(g.bits) +
                                                     " (2, 3, 4 and 8 are defined)");
    if (format.empty()) format = "gptq";
    if (format != "gptq" && format != "gptq_v2")
        return makeError(ErrorCode::Unsupported, path + ": GPTQ checkpoint_format '" +
                                                     format.substr(0, 32) +
                                                     "' (gptq and gptq_v2 are read)");
    g.zeroOffset = format == "gptq" ? 1 : 0;
    g.text = "bits=" + std::to_string(g.bits) + " group_size=" + std::to_string(g.groupSize) +
             " checkpoint_format=" + format;
    return std::optional<GptqConfig>(g);
}

// Replaces each GPTQ layer's qweight/qzeros/scales/g_idx in `all` by one float32 "<m>.weight"
// holding its decoded values, in a memory block appended to model.files.
Status decodeGptqLayers(const GptqConfig& cfg, const fs::path& folder,
                        std::vector<ShardTensor>& all, std::vector<int>& allFile, Model& model)
{
    static constexpr std::string_view kParts[] = {".qweight", ".qzeros", ".scales", ".g_idx"};
    std::map<std::string, std::array<int, 4>> layers;  // module -> index in `all` per part
    for (std::size_t i = 0; i < all.size(); ++i)
        for (int k = 0; k < 4; ++k) {
            const std::string& n = all[i].name;
            if (n.size() > kParts[k].size() &&
                n.compare(n.size() - kParts[k].size(), kParts[k].size(), kParts[k]) == 0) {
                auto& e = layers
                              .try_emplace(n.substr(0, n.size() - kParts[k].size()),
                                           std::array<int, 4>{-1, -1, -1, -1})
                              .first->second;
                e[std::size_t(k)] = int(i);
            }
        }
    for (std::size_t i = 0; i < all.size(); ++i)
        if (all[i].int32) {
            bool part = false;
            for (const auto& [m, idx] : layers)
                for (int k : idx) part |= k == int(i);
            if (!part)
                return makeError(ErrorCode::Format, folder.string() + ": I32 tensor " +
                                                        all[i].name +
                                                        " is not part of a GPTQ layer");
        }
    auto words = [&](int idx) {
        const ShardTensor& t = all[std::size_t(idx)];
        const MappedFile& f = *model.files[std::size_t(allFile[std::size_t(idx)])];
        std::vector<std::int32_t> v(t.bytes / 4);
        std::memcpy(v.data(), f.data() + t.offset, t.bytes);
        return v;
    };
    std::vector<std::uint8_t> blob;
    std::vector<ShardTensor> out;
    std::vector<int> outFile;
    std::map<int, std::pair<std::string, std::array<int, 4>>> byQweight;
    for (const auto& [m, idx] : layers) {
        const std::string where = folder.string() + ": GPTQ layer " + m;
        if (idx[0] < 0 || idx[1] < 0 || idx[2] < 0)
            return makeError(ErrorCode::Format, where + " lacks qweight, qzeros or scales");
        const ShardTensor &qw = all[std::size_t(idx[0])], &qz = all[std::size_t(idx[1])],
                          &sc = all[std::size_t(idx[2])];
        if (!qw.int32 || !qz.int32 || sc.int32 || sc.type != TensorType::F16 ||
            qw.shape.size() != 2 || qz.shape.size() != 2 || sc.shape.size() != 2 ||
            (idx[3] >= 0 &&
             (!all[std::size_t(idx[3])].int32 || all[std::size_t(idx[3])].shape.size() != 1)))
            return makeError(ErrorCode::Format,
                             where +
                                 ": expected qweight/qzeros/g_idx I32 and scales F16 of the "
                                 "GPTQ layout (2-D, g_idx 1-D)");
        byQweight[idx[0]] = {m, idx};
    }
    for (std::size_t i = 0; i < all.size(); ++i) {
        auto q = byQweight.find(int(i));
        if (q == byQweight.end()) {
            bool part = false;
            for (const auto& [m, idx] : layers)
                for (int k : idx) part |= k == int(i);
            if (!part) {
                out.push_back(all[i]);
                outFile.push_back(allFile[i]);
            }
            continue;
        }
        const auto& [m, idx] = q->second;
        const ShardTensor& sc = all[std::size_t(idx[2])];
        GptqLayer L;
        L.bits = cfg.bits;
        L.zeroOffset = cfg.zeroOffset;
        L.groups = sc.shape[0];
        L.out = sc.shape[1];
        L.in = all[std::size_t(idx[0])].shape[0] * 32 / cfg.bits;
        L.qweight = words(idx[0]);
        L.qzeros = words(idx[1]);
        L.scales.resize(sc.bytes / 2);
        std::memcpy(L.scales.data(),
                    model.files[std::size_t(allFile[std::size_t(idx[2])])]->data() + sc.offset,
                    sc.bytes);
        if (idx[3] >= 0) {
            L.gIdx = words(idx[3]);
            if (std::int64_t(L.gIdx.size()) != L.in)
                return makeError(ErrorCode::Format,
                                 folder.string() + ": GPTQ layer " + m + ": g_idx has " +
                                     std::to_string(L.gIdx.size()) + " entries, qweight packs " +
                                     std::to_string(L.in) + " inputs");
        } else {
            const std::int64_t gs = cfg.groupSize > 0 ? cfg.groupSize : L.in;
            for (std::int64_t k = 0; k < L.in; ++k) L.gIdx.push_back(std::int32_t(k / gs));
        }
        auto w = gptqDequantize(L);
        if (!w)
            return makeError(ErrorCode::Format,
                             folder.string() + ": GPTQ layer " + m + ": " + w.error().message);
        ShardTensor t;
        t.name = m + ".weight";
        t.shape = {L.out, L.in};
        t.type = TensorType::F32;
        t.offset = blob.size();
        t.bytes = w->size() * 4;
        blob.resize(blob.size() + t.bytes);
        std::memcpy(blob.data() + t.offset, w->data(), t.bytes);
        out.push_back(std::move(t));
        outFile.push_back(-1);
    }
    const int memIndex = int(model.files.size());
    for (int& f : outFile)
        if (f < 0) f = memIndex;
    model.files.push_back(MappedFile::fromBytes(
        folder.string() + " (GPTQ layers decoded to float32)", std::move(blob)));
    model.warnings.push_back("GPTQ checkpoint (" + cfg.text +
                             "): " + std::to_string(layers.size()) +
                             " quantized layers decoded to float32 on opening");
    model.metadata.set("quantlens.gptq", Metadata::makeString(cfg.text));
    all = std::move(out);
    allFile = std::move(outFile);
    return {};
}

Result<Model> openFolder(const fs::path& folder, const std::string& onlyFile,
                         const std::string& openedPath)
{
    const std::string configPath = (folder / "config.json").string();
    if (!fs::exists(folder / "config.json"))
        return makeError(ErrorCode::Format,
                         openedPath + ": no config.json in " + folder.string() +
                             " (a safetensors model needs its Hugging Face config)");
    auto config = parseJsonFile(configPath);
    if (!config) return config.error();
    auto hparams = hyperParamsFromConfig(*config, configPath);
    if (!hparams) return hparams.error();

    Model model;
    model.format = ModelFormat::Safetensors;
    model.path = openedPath;
    model.hparams = *hparams;
    auto gptq = gptqConfig(*config, configPath);
    if (!gptq) return gptq.error();

    // Which shards, and which tensor lives in which.
    const fs::path indexPath = folder / "model.safetensors.index.json";
    std::vector<std::string> shardNames;
    std::map<std::string, std::string> weightMap;  // tensor -> shard; empty: take all
    bool useIndex = fs::exists(indexPath);
    if (useIndex) {
        auto index = parseJsonFile(indexPath.string());
        if (!index) return index.error();
        auto wm = index->find("weight_map");
        if (!index->is_object() || wm == index->end() || !wm->is_object())
            return makeError(ErrorCode::Format, indexPath.string() + ": no weight_map object");
        for (const auto& [tensor, shard] : wm->items()) {
            if (!shard.is_string() || !safeShardName(shard.get<std::string>()))
                return makeError(ErrorCode::Format, indexPath.string() + ": weight_map entry '" +
                                                        tensor +
                                                        "' does not name a shard file "
                                                        "in the folder");
            weightMap[tensor] = shard.get<std::string>();
        }
        std::set<std::string> distinct;
        for (const auto& [tensor, shard] : weightMap) distinct.insert(shard);
        if (!onlyFile.empty() && !distinct.count(onlyFile)) {
            useIndex = false;  // a file the index does not know: open just that file
            weightMap.clear();
        } else {
            shardNames.assign(distinct.begin(), distinct.end());
        }
    }
    if (!useIndex) {
        if (!onlyFile.empty()) {
            shardNames = {onlyFile};
        } else if (fs::exists(folder / "model.safetensors")) {
            shardNames = {"model.safetensors"};
        } else {
            std::vector<std::string> found;
            std::error_code ec;
            for (const auto& entry : fs::directory_iterator(folder, ec))
                if (entry.path().extension() == ".safetensors")
                    found.push_back(entry.path().filename().string());
            if (found.size() != 1)
                return makeError(ErrorCode::Format, openedPath +
                                                        ": no model.safetensors or "
                                                        "model.safetensors.index.json in " +
                                                        folder.string());
            shardNames = found;
        }
    }

    std::vector<ShardTensor> all;
    std::vector<int> allFile;
    std::map<std::string, std::string> found;  // tensor -> shard it was taken from
    for (const auto& shard : shardNames) {
        auto mapped = MappedFile::open((folder / shard).string());
        if (!mapped) return mapped.error();
        std::vector<ShardTensor> tensors;
        QL_TRY_STATUS(readShardHeader(**mapped, tensors, model.warnings, gptq->has_value()));
        const int fileIndex = static_cast<int>(model.files.size());
        model.files.push_back(std::move(mapped).value());
        for (auto& t : tensors) {
            if (useIndex) {
                auto it = weightMap.find(t.name);
                if (it == weightMap.end() || it->second != shard) {
                    model.warnings.push_back(shard + " holds " + t.name +
                                             ", which the index does not assign to it; ignored");
                    continue;
                }
            }
            if (!found.emplace(t.name, shard).second)
                return makeError(ErrorCode::Format, openedPath + ": tensor " + t.name +
                                                        " appears in more than one file");
            all.push_back(std::move(t));
            allFile.push_back(fileIndex);
        }
    }
    for (const auto& [tensor, shard] : weightMap)
        if (!found.count(tensor))
            return makeError(ErrorCode::Format, indexPath.string() + ": tensor " + tensor +
                                                    " is assigned to " + shard +
                                                    ", which does not hold it");

    if (*gptq) QL_TRY_STATUS(decodeGptqLayers(**gptq, folder, all, allFile, model));
    model.tensors.reserve(all.size());
    for (std::size_t i = 0; i < all.size(); ++i) {
        ShardTensor& s = all[i];
        TensorInfo t;
        t.sourceName = s.name;
        t.name = canonicalFromHfName(s.name);
        TensorNameInfo info = classifyTensorName(t.name);
        std::string_view rest;
        if (info.role == TensorRole::Other && info.block < 0) info.block = hfLayer(s.name, rest);
        t.role = info.role;
        t.block = info.block;
        t.shape = std::move(s.shape);
        t.type = s.type;
        t.fileIndex = allFile[i];
        t.offset = s.offset;
        t.bytes = s.bytes;
        model.tensors.push_back(std::move(t));
    }

    HyperParams& hp = model.hparams;
    hp.tiedEmbeddings = model.find(TensorRole::Output) == nullptr;
    hp.attentionBias = false;
    for (const auto& t : model.tensors) hp.attentionBias |= t.role == TensorRole::AttnQBias;
    ConfigReader r(*config, configPath);
    if (auto tie = r.boolean("tie_word_embeddings"); tie && *tie != hp.tiedEmbeddings)
        model.warnings.push_back(std::string("config.json says tie_word_embeddings is ") +
                                 (*tie ? "true" : "false") + ", but lm_head.weight is " +
                                 (hp.tiedEmbeddings ? "absent" : "present"));

    // Metadata in GGUF vocabulary.
    std::string name = r.string("_name_or_path");
    if (name.empty()) {
        fs::path abs = fs::absolute(folder).lexically_normal();
        if (!abs.has_filename()) abs = abs.parent_path();
        name = abs.filename().string();
    }
    model.metadata.set("general.name", Metadata::makeString(name));
    writeHyperParamsMetadata(hp, model.metadata);
    // general.architecture first, as in GGUF files.
    Metadata ordered;
    ordered.set("general.architecture", *model.metadata.find("general.architecture"));
    for (const auto& key : model.metadata.keys())
        if (key != "general.architecture") ordered.set(key, *model.metadata.find(key));
    model.metadata = std::move(ordered);
    for (const char* id : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
        auto it = config->find(id);
        if (it != config->end() && it->is_number_unsigned() &&
            it->get<std::uint64_t>() <= std::numeric_limits<std::uint32_t>::max()) {
            std::string key = std::string(id);
            key =
                "tokenizer.ggml." + (key == "pad_token_id" ? std::string("padding_token_id") : key);
            model.metadata.set(
                key, Metadata::makeU32(static_cast<std::uint32_t>(it->get<std::uint64_t>())));
        }
    }

    if (fs::exists(folder / "tokenizer.json")) {
        model.tokenizer.kind = TokenizerSource::Kind::HfTokenizerJson;
        model.tokenizer.path = (folder / "tokenizer.json").string();
    } else {
        model.warnings.push_back("no tokenizer.json in " + folder.string());
    }
    QL_TRY_STATUS(validateModel(model));
    return model;
}

// --- writing --------------------------------------------------------------------------------

struct FileCloser {
    void operator()(std::FILE* f) const
    {
        if (f) std::fclose(f);
    }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Removes a temporary file unless released.
struct TempFile {
    fs::path path;
    bool keep = false;
    ~TempFile()
    {
        if (!keep && !path.empty()) {
            std::error_code ec;
            fs::remove(path, ec);
        }
    }
};

Status ioError(const fs::path& path, const std::string& what)
{
    return makeError(ErrorCode::Io, path.string() + ": " + what + ": " + std::strerror(errno));
}

// Flushes, syncs and closes; errors from any step (a full disk) are reported.
Status finishFile(FilePtr& f, const fs::path& path)
{
    if (std::fflush(f.get()) != 0) return ioError(path, "write failed");
    if (::fsync(fileno(f.get())) != 0) return ioError(path, "fsync failed");
    if (std::fclose(f.release()) != 0) return ioError(path, "close failed");
    return {};
}

json configJson(const HyperParams& hp, TensorType dtype)
{
    json c;
    const bool qwen = hp.architecture == "qwen2";
    c["architectures"] = json::array({qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"});
    c["model_type"] = qwen ? "qwen2" : "llama";
    c["hidden_size"] = hp.embeddingDim;
    c["intermediate_size"] = hp.ffnDim;
    c["num_hidden_layers"] = hp.blockCount;
    c["num_attention_heads"] = hp.headCount;
    c["num_key_value_heads"] = hp.headCountKv;
    c["head_dim"] = hp.headDim;
    c["vocab_size"] = hp.vocabSize;
    c["max_position_embeddings"] = hp.contextLength;
    c["rms_norm_eps"] = hp.rmsNormEps;
    c["rope_theta"] = hp.ropeTheta;
    c["tie_word_embeddings"] = hp.tiedEmbeddings;
    c["hidden_act"] = "silu";
    if (!qwen) c["attention_bias"] = hp.attentionBias;
    c["torch_dtype"] = dtype == TensorType::F32   ? "float32"
                       : dtype == TensorType::F16 ? "float16"
                                                  : "bfloat16";
    if (hp.ropeScaling.type.empty()) {
        c["rope_scaling"] = nullptr;
    } else {
        json s;
        s["rope_type"] = hp.ropeScaling.type;
        s["factor"] = hp.ropeScaling.factor;
        if (hp.ropeScaling.originalContext > 0)
            s["original_max_position_embeddings"] = hp.ropeScaling.originalContext;
        if (hp.ropeScaling.type == "llama3") {
            s["low_freq_factor"] = hp.ropeScaling.lowFreqFactor;
            s["high_freq_factor"] = hp.ropeScaling.highFreqFactor;
        }
        c["rope_scaling"] = s;
    }
    return c;
}

}  // namespace

// --- public ---------------------------------------------------------------------------------

std::string huggingFaceConfig(const HyperParams& hp, TensorType dtype)
{
    return configJson(hp, dtype).dump(2) + "\n";
}

bool looksLikeSafetensors(std::span<const std::uint8_t> head, std::uint64_t fileSize)
{
    if (head.size() < 9 || fileSize < 10) return false;
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | head[i];
    return n >= 2 && n <= fileSize - 8 && head[8] == '{';
}

std::string hfTensorName(std::string_view canonicalName)
{
    const TensorNameInfo info = classifyTensorName(canonicalName);
    for (const auto& t : kHfTop)
        if (t.role == info.role) return std::string(t.hf);
    if (info.role != TensorRole::Other)
        for (const auto& b : kHfBlock)
            if (b.role == info.role)
                return std::string(kLayersPrefix) + std::to_string(info.block) + "." +
                       std::string(b.hf);
    return std::string(canonicalName);
}

std::string canonicalFromHfName(std::string_view hfName)
{
    for (const auto& t : kHfTop)
        if (hfName == t.hf) return canonicalTensorName(t.role, -1);
    std::string_view rest;
    const int block = hfLayer(hfName, rest);
    if (block >= 0)
        for (const auto& b : kHfBlock)
            if (rest == b.hf) return canonicalTensorName(b.role, block);
    return std::string(hfName);
}

Result<Model> openSafetensors(const std::string& path)
{
    try {
        std::error_code ec;
        const fs::path p(path);
        if (fs::is_directory(p, ec)) return openFolder(p, {}, path);
        if (!fs::exists(p, ec)) return makeError(ErrorCode::Io, path + ": no such file or folder");
        const fs::path folder = p.parent_path().empty() ? fs::path(".") : p.parent_path();
        return openFolder(folder, p.filename().string(), path);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, path + ": out of memory while reading headers");
    } catch (const std::exception& e) {
        return makeError(ErrorCode::Format, path + ": unexpected content: " + e.what());
    }
}

Status writeSafetensorsStream(const std::string& dirName, const HyperParams& hp,
                              const std::vector<SafetensorsTensorSpec>& tensors, TensorType dtype,
                              const TensorChunkFn& produce, const ProgressFn& progress)
{
    const char* dtypeStr = dtypeName(dtype);
    if (!dtypeStr)
        return makeError(ErrorCode::InvalidArgument,
                         "safetensors output must be F32, F16 or BF16, not " +
                             std::string(tensorTypeName(dtype)));
    if (!isLlamaFamily(hp.architecture))
        return makeError(ErrorCode::InvalidArgument,
                         "cannot write a Hugging Face config for architecture '" + hp.architecture +
                             "' (llama, mistral and qwen2 only)");
    const fs::path dir(dirName);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
        return makeError(ErrorCode::Io, dirName + ": cannot create the folder: " + ec.message());
    if (fs::exists(dir / "model.safetensors.index.json"))
        return makeError(ErrorCode::InvalidArgument,
                         dirName + " already holds a sharded model (model.safetensors.index.json)");

    const std::uint64_t elementBytes = traits(dtype).blockBytes;
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    std::uint64_t offset = 0;
    std::set<std::string> names;
    for (const auto& t : tensors) {
        const std::string hfName = hfTensorName(t.name);
        if (!names.insert(hfName).second)
            return makeError(ErrorCode::InvalidArgument, "tensor " + t.name + " is listed twice");
        std::int64_t count = 1;
        for (auto d : t.shape)
            if (d <= 0 || __builtin_mul_overflow(count, d, &count))
                return makeError(ErrorCode::InvalidArgument,
                                 "tensor " + t.name + " has an invalid shape");
        const std::uint64_t bytes = static_cast<std::uint64_t>(count) * elementBytes;
        header[hfName] = {
            {"dtype", dtypeStr}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
    }
    std::string headerText = header.dump();
    headerText.append((8 - headerText.size() % 8) % 8, ' ');  // data starts 8-byte aligned
    const std::uint64_t totalBytes = offset;

    TempFile modelTmp{dir / "model.safetensors.partial"};
    FilePtr f(std::fopen(modelTmp.path.c_str(), "wb"));
    if (!f) return ioError(modelTmp.path, "cannot create");
    std::uint8_t lengthBytes[8];
    for (int i = 0; i < 8; ++i)
        lengthBytes[i] =
            static_cast<std::uint8_t>(static_cast<std::uint64_t>(headerText.size()) >> (8 * i));
    if (std::fwrite(lengthBytes, 1, 8, f.get()) != 8 ||
        std::fwrite(headerText.data(), 1, headerText.size(), f.get()) != headerText.size())
        return ioError(modelTmp.path, "write failed");

    constexpr std::int64_t kChunk = 1 << 20;  // elements: 4 MiB of floats
    std::vector<float> values;
    std::vector<std::uint8_t> bytes;
    std::uint64_t written = 0;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        std::int64_t count = 1;
        for (auto d : tensors[i].shape) count *= d;
        for (std::int64_t first = 0; first < count; first += kChunk) {
            const std::int64_t n = std::min(kChunk, count - first);
            values.assign(static_cast<std::size_t>(n), 0.0f);
            QL_TRY_STATUS(produce(i, first, values));
            bytes.resize(static_cast<std::size_t>(n) * elementBytes);
            std::uint8_t* out = bytes.data();
            for (float v : values) {
                if (dtype == TensorType::F32) {
                    const std::uint32_t x = std::bit_cast<std::uint32_t>(v);
                    for (int k = 0; k < 4; ++k) *out++ = static_cast<std::uint8_t>(x >> (8 * k));
                } else {
                    const std::uint16_t h =
                        dtype == TensorType::F16 ? floatToHalf(v) : floatToBf16(v);
                    *out++ = static_cast<std::uint8_t>(h);
                    *out++ = static_cast<std::uint8_t>(h >> 8);
                }
            }
            if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size())
                return ioError(modelTmp.path, "write failed");
            written += bytes.size();
            if (!reportProgress(progress, totalBytes ? 0.99 * written / totalBytes : 0.99,
                                "writing safetensors"))
                return makeError(ErrorCode::Cancelled, "writing " + dirName + " was cancelled");
        }
    }
    QL_TRY_STATUS(finishFile(f, modelTmp.path));

    TempFile configTmp{dir / "config.json.partial"};
    FilePtr c(std::fopen(configTmp.path.c_str(), "wb"));
    if (!c) return ioError(configTmp.path, "cannot create");
    const std::string configText = configJson(hp, dtype).dump(2) + "\n";
    if (std::fwrite(configText.data(), 1, configText.size(), c.get()) != configText.size())
        return ioError(configTmp.path, "write failed");
    QL_TRY_STATUS(finishFile(c, configTmp.path));

    fs::rename(modelTmp.path, dir / "model.safetensors", ec);
    if (ec)
        return makeError(ErrorCode::Io,
                         dirName + ": cannot rename model.safetensors: " + ec.message());
    modelTmp.keep = true;
    fs::rename(configTmp.path, dir / "config.json", ec);
    if (ec)
        return makeError(ErrorCode::Io, dirName + ": cannot rename config.json: " + ec.message());
    configTmp.keep = true;
    reportProgress(progress, 1.0, "safetensors written");
    return {};
}

Status writeSafetensorsFolder(const Model& model, const std::string& dir, TensorType dtype,
                              const ProgressFn& progress)
{
    std::vector<SafetensorsTensorSpec> specs;
    specs.reserve(model.tensors.size());
    for (const auto& t : model.tensors) {
        if (!dtypeName(t.type))
            return makeError(ErrorCode::Unsupported,
                             "tensor " + t.name + " is stored as " +
                                 std::string(tensorTypeName(t.type)) +
                                 "; write block-quantized tensors through "
                                 "writeSafetensorsStream with dequantized values");
        specs.push_back({t.name, t.shape});
    }
    // GGUF / llama2.c llama models rotate adjacent pairs; Hugging Face rotates halves. Output row
    // h*hd + s*hd/2 + i (s in {0,1}) of a head takes source row h*hd + 2i + s.
    const HyperParams& hp = model.hparams;
    const bool unpermute = model.format != ModelFormat::Safetensors &&
                           (hp.architecture == "llama" || hp.architecture == "mistral") &&
                           hp.headDim > 0 && hp.headDim % 2 == 0;
    auto permuted = [&](const TensorInfo& t) {
        return unpermute && (t.role == TensorRole::AttnQ || t.role == TensorRole::AttnK ||
                             t.role == TensorRole::AttnQBias || t.role == TensorRole::AttnKBias);
    };
    auto sourceRow = [&](const TensorInfo& t, std::int64_t row) {
        if (!permuted(t)) return row;
        const std::int64_t hd = hp.headDim, half = hd / 2;
        const std::int64_t head = row / hd, within = row % hd;
        return head * hd + 2 * (within % half) + within / half;
    };
    auto produce = [&](std::size_t index, std::int64_t first, std::span<float> out) -> Status {
        const TensorInfo& t = model.tensors[index];
        const std::uint64_t size = traits(t.type).blockBytes;
        std::span<const std::uint8_t> src = model.data(t);
        if (src.size() != t.bytes ||
            (static_cast<std::uint64_t>(first) + out.size()) * size > src.size())
            return makeError(ErrorCode::Format, "tensor " + t.name + " lies outside its file");
        // A bias permutes like the rows it belongs to: one element per row.
        const std::int64_t cols = t.shape.size() == 1 ? 1 : t.cols();
        for (std::size_t k = 0; k < out.size(); ++k) {
            const std::int64_t e = first + static_cast<std::int64_t>(k);
            const std::int64_t s = sourceRow(t, e / cols) * cols + e % cols;
            const std::uint8_t* p = src.data() + static_cast<std::uint64_t>(s) * size;
            if (t.type == TensorType::F32) {
                std::uint32_t x = 0;
                for (int b = 3; b >= 0; --b) x = (x << 8) | p[b];
                out[k] = std::bit_cast<float>(x);
            } else {
                out[k] =
                    t.type == TensorType::F16 ? halfToFloat(loadU16(p)) : bf16ToFloat(loadU16(p));
            }
        }
        return {};
    };
    return writeSafetensorsStream(dir, model.hparams, specs, dtype, produce, progress);
}

}  // namespace ql
