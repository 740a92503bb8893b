// GGUF reader. The file is memory-mapped and parsed by a cursor that checks every read against
// the end of the mapping and records where a read failed, so any malformed file ends in an
// Error naming the field and its byte offset. Counts read from the file (entries, tensors, array
// elements, string lengths) are checked against the bytes that remain, each item needing a known
// minimum size, before anything is reserved: a corrupt count cannot cause a huge allocation.
// Arrays may nest, but only kMaxArrayDepth deep, so recursion stays bounded. Because one file
// byte can become a 48-byte MetaValue, a large file with a corrupt count could still ask for
// tens of GB; fixed limits far above any real model (metadata values, string length, tensor
// count) cap that. Tensor data is never read: only its extent is checked against the file, and
// its pages stay untouched.
#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "io/model_loader.h"

namespace ql {
namespace {

constexpr int kMaxArrayDepth = 8;
// Real models hold at most a few million metadata values (vocabulary, scores, types, merges),
// strings of at most tens of MB (an embedded tokenizer.json) and a few thousand tensors.
constexpr std::uint64_t kMaxMetadataValues = 1ull << 23;
constexpr std::uint64_t kMaxStringBytes = 256ull << 20;
constexpr std::uint64_t kMaxTensors = 1ull << 20;
constexpr std::uint64_t kMaxKeyLength = 65535;         // the spec's limit for keys
constexpr std::uint64_t kMaxTensorNameLength = 65535;  // the spec says 64; be lenient
constexpr std::uint32_t kMaxDims = 4;                  // GGML_MAX_DIMS
constexpr std::uint64_t kMinKvBytes = 8 + 4 + 1;       // key length, type, smallest value
constexpr std::uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name, n_dims, ne[1], type, off

std::string str(std::uint64_t v)
{
    return std::to_string(v);
}

// Bounds-checked little-endian reader over a mapped file. The first failure is kept; every later
// read fails at once, so callers may check only at convenient points.
class Cursor {
public:
    explicit Cursor(const MappedFile& file)
        : m_path(file.path()), m_data(file.data()), m_size(file.size())
    {
    }

    std::uint64_t pos() const { return m_pos; }
    std::uint64_t size() const { return m_size; }
    std::uint64_t remaining() const { return m_size - m_pos; }
    bool failed() const { return m_failed; }
    const Error& error() const { return m_error; }
    void setContext(std::string context) { m_context = std::move(context); }

    bool fail(ErrorCode code, const std::string& problem)
    {
        if (m_failed) return false;
        m_failed = true;
        m_error =
            makeError(code, m_path + ": " + (m_context.empty() ? "" : m_context + ": ") + problem);
        return false;
    }

    template <class T>
    bool read(T& out, const char* what)
    {
        static_assert(std::is_trivially_copyable_v<T>);
        if (!need(sizeof(T), what)) return false;
        std::uint8_t bytes[sizeof(T)];
        std::memcpy(bytes, m_data + m_pos, sizeof(T));
        if constexpr (std::endian::native == std::endian::big)
            std::reverse(bytes, bytes + sizeof(T));
        std::memcpy(&out, bytes, sizeof(T));
        m_pos += sizeof(T);
        return true;
    }

    bool readString(std::string& out, const char* what, std::uint64_t maxLength)
    {
        const std::uint64_t at = m_pos;
        std::uint64_t length = 0;
        if (!read(length, what)) return false;
        if (length > remaining())
            return fail(ErrorCode::Format, std::string(what) + " at byte " + str(at) + " claims " +
                                               str(length) + " bytes, but only " +
                                               str(remaining()) + " bytes follow in the file");
        if (length > maxLength)
            return fail(ErrorCode::Format, std::string(what) + " at byte " + str(at) + " is " +
                                               str(length) + " bytes long (at most " +
                                               str(maxLength) + " allowed)");
        out.assign(reinterpret_cast<const char*>(m_data + m_pos), length);
        m_pos += length;
        return true;
    }

private:
    bool need(std::uint64_t n, const char* what)
    {
        if (m_failed) return false;
        if (n <= remaining()) return true;
        return fail(ErrorCode::Format, std::string("truncated: ") + what + " needs " + str(n) +
                                           " bytes at byte " + str(m_pos) +
                                           ", but the file ends at byte " + str(m_size));
    }

    std::string m_path;
    const std::uint8_t* m_data;
    std::uint64_t m_size;
    std::uint64_t m_pos = 0;
    std::string m_context;
    bool m_failed = false;
    Error m_error;
};

bool validMetaType(std::uint32_t t)
{
    return t <= static_cast<std::uint32_t>(MetaType::F64);
}

// Smallest encoding of one value of a type: bounds what a count may claim.
std::uint64_t minValueBytes(MetaType type)
{
    switch (type) {
        case MetaType::U8:
        case MetaType::I8:
        case MetaType::Bool: return 1;
        case MetaType::U16:
        case MetaType::I16: return 2;
        case MetaType::U32:
        case MetaType::I32:
        case MetaType::F32: return 4;
        case MetaType::U64:
        case MetaType::I64:
        case MetaType::F64:
        case MetaType::String: return 8;
        case MetaType::Array: return 4 + 8;
    }
    return 1;
}

template <class Raw, class Stored>
bool readScalar(Cursor& c, MetaValue& out, const char* what)
{
    Raw v{};
    if (!c.read(v, what)) return false;
    out.value = static_cast<Stored>(v);
    return true;
}

// `valuesLeft` is the remaining budget of metadata values for the whole file.
bool readValue(Cursor& c, MetaType type, int depth, std::uint64_t& valuesLeft, MetaValue& out)
{
    out.type = type;
    switch (type) {
        case MetaType::U8: return readScalar<std::uint8_t, std::uint64_t>(c, out, "u8 value");
        case MetaType::I8: return readScalar<std::int8_t, std::int64_t>(c, out, "i8 value");
        case MetaType::U16: return readScalar<std::uint16_t, std::uint64_t>(c, out, "u16 value");
        case MetaType::I16: return readScalar<std::int16_t, std::int64_t>(c, out, "i16 value");
        case MetaType::U32: return readScalar<std::uint32_t, std::uint64_t>(c, out, "u32 value");
        case MetaType::I32: return readScalar<std::int32_t, std::int64_t>(c, out, "i32 value");
        case MetaType::U64: return readScalar<std::uint64_t, std::uint64_t>(c, out, "u64 value");
        case MetaType::I64: return readScalar<std::int64_t, std::int64_t>(c, out, "i64 value");
        case MetaType::F32: return readScalar<float, double>(c, out, "f32 value");
        case MetaType::F64: return readScalar<double, double>(c, out, "f64 value");
        case MetaType::Bool: {
            const std::uint64_t at = c.pos();
            std::uint8_t b = 0;
            if (!c.read(b, "bool value")) return false;
            if (b > 1)
                return c.fail(ErrorCode::Format, "bool value at byte " + str(at) + " is " + str(b) +
                                                     " (must be 0 or 1)");
            out.value = b != 0;
            return true;
        }
        case MetaType::String: {
            std::string s;
            if (!c.readString(s, "string value", kMaxStringBytes)) return false;
            out.value = std::move(s);
            return true;
        }
        case MetaType::Array: {
            const std::uint64_t at = c.pos();
            std::uint32_t elementType = 0;
            std::uint64_t count = 0;
            if (!c.read(elementType, "array element type")) return false;
            if (!validMetaType(elementType))
                return c.fail(
                    ErrorCode::Format,
                    "array at byte " + str(at) + " has unknown element type " + str(elementType));
            const auto et = static_cast<MetaType>(elementType);
            if (et == MetaType::Array && depth + 1 >= kMaxArrayDepth)
                return c.fail(ErrorCode::Format, "arrays nested more than " + str(kMaxArrayDepth) +
                                                     " deep at byte " + str(at));
            if (!c.read(count, "array length")) return false;
            if (count > c.remaining() / minValueBytes(et))
                return c.fail(ErrorCode::Format, "array at byte " + str(at) + " claims " +
                                                     str(count) + " " + metaTypeName(et) +
                                                     " elements, but only " + str(c.remaining()) +
                                                     " bytes follow in the file");
            if (count > valuesLeft)
                return c.fail(ErrorCode::Format,
                              "array at byte " + str(at) + " claims " + str(count) +
                                  " elements, more than the " + str(kMaxMetadataValues) +
                                  " metadata values QuantLens accepts in one file");
            valuesLeft -= count;
            MetaArray array;
            array.elementType = et;
            array.values.resize(count);
            for (auto& v : array.values)
                if (!readValue(c, et, depth + 1, valuesLeft, v)) return false;
            out.value = std::move(array);
            return true;
        }
    }
    return c.fail(ErrorCode::Format, "unknown value type " + str(static_cast<std::uint32_t>(type)));
}

struct RawTensor {
    std::string name;
    std::vector<std::int64_t> shape;  // outermost first
    TensorType type = TensorType::F32;
    std::uint64_t offset = 0;  // relative to the data section
    std::uint64_t infoAt = 0;  // byte offset of this tensor's info, for messages
};

std::string shapeString(const std::vector<std::int64_t>& shape)
{
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

bool readTensorInfo(Cursor& c, std::uint64_t index, RawTensor& t)
{
    t.infoAt = c.pos();
    c.setContext("tensor info " + str(index) + " (at byte " + str(t.infoAt) + ")");
    if (!c.readString(t.name, "tensor name", kMaxTensorNameLength)) return false;
    c.setContext("tensor " + t.name + " (info at byte " + str(t.infoAt) + ")");
    const std::uint64_t dimsAt = c.pos();
    std::uint32_t nDims = 0;
    if (!c.read(nDims, "n_dims")) return false;
    if (nDims == 0 || nDims > kMaxDims)
        return c.fail(ErrorCode::Format, "n_dims at byte " + str(dimsAt) + " is " + str(nDims) +
                                             " (must be 1 to " + str(kMaxDims) + ")");
    std::uint64_t ne[kMaxDims] = {};
    std::int64_t count = 1;
    for (std::uint32_t d = 0; d < nDims; ++d) {
        const std::uint64_t at = c.pos();
        if (!c.read(ne[d], "dimension")) return false;
        if (ne[d] == 0 ||
            ne[d] > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
            return c.fail(ErrorCode::Format,
                          "dimension ne[" + str(d) + "] at byte " + str(at) + " is " + str(ne[d]));
        if (__builtin_mul_overflow(count, static_cast<std::int64_t>(ne[d]), &count))
            return c.fail(ErrorCode::Format, "element count overflows 64 bits at ne[" + str(d) +
                                                 "] (byte " + str(at) + ")");
    }
    t.shape.assign(nDims, 0);
    for (std::uint32_t d = 0; d < nDims; ++d)
        t.shape[nDims - 1 - d] = static_cast<std::int64_t>(ne[d]);

    const std::uint64_t typeAt = c.pos();
    std::uint32_t typeId = 0;
    if (!c.read(typeId, "tensor type")) return false;
    auto traits = tensorTypeTraits(typeId);
    if (!traits) {
        std::string_view name = ggmlTypeName(typeId);
        return c.fail(ErrorCode::Unsupported,
                      "tensor " + t.name + " has type " +
                          (name == "unknown type" ? "id " + str(typeId) : std::string(name)) +
                          ", which QuantLens does not support (type field at byte " + str(typeAt) +
                          ")");
    }
    t.type = traits->type;
    if (ne[0] % traits->blockSize != 0)
        return c.fail(ErrorCode::Format,
                      "row length ne[0] = " + str(ne[0]) + " is not a multiple of the " +
                          std::string(traits->name) + " block size " + str(traits->blockSize));
    return c.read(t.offset, "tensor data offset");
}

}  // namespace

bool isLlamaFamily(std::string_view architecture)
{
    return architecture == "llama" || architecture == "mistral" || architecture == "qwen2";
}

// --- canonical names -----------------------------------------------------------------------

namespace {

struct RoleName {
    TensorRole role;
    std::string_view suffix;
};

constexpr RoleName kBlockRoles[] = {
    {TensorRole::AttnNorm, "attn_norm.weight"},     {TensorRole::AttnQ, "attn_q.weight"},
    {TensorRole::AttnK, "attn_k.weight"},           {TensorRole::AttnV, "attn_v.weight"},
    {TensorRole::AttnOutput, "attn_output.weight"}, {TensorRole::AttnQBias, "attn_q.bias"},
    {TensorRole::AttnKBias, "attn_k.bias"},         {TensorRole::AttnVBias, "attn_v.bias"},
    {TensorRole::FfnNorm, "ffn_norm.weight"},       {TensorRole::FfnGate, "ffn_gate.weight"},
    {TensorRole::FfnUp, "ffn_up.weight"},           {TensorRole::FfnDown, "ffn_down.weight"},
};

constexpr RoleName kTopRoles[] = {
    {TensorRole::TokenEmbd, "token_embd.weight"},
    {TensorRole::OutputNorm, "output_norm.weight"},
    {TensorRole::Output, "output.weight"},
    {TensorRole::RopeFreqs, "rope_freqs.weight"},
};

}  // namespace

TensorNameInfo classifyTensorName(std::string_view name)
{
    for (const auto& r : kTopRoles)
        if (name == r.suffix) return {r.role, -1};
    constexpr std::string_view prefix = "blk.";
    if (name.substr(0, prefix.size()) != prefix) return {};
    name.remove_prefix(prefix.size());
    int block = -1;
    auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), block);
    // At most 7 digits and no sign: "blk.-1." or an overflowing index is not a block.
    const std::size_t digits = static_cast<std::size_t>(end - name.data());
    if (ec != std::errc() || digits == 0 || digits > 7 || name[0] == '-' || digits >= name.size() ||
        name[digits] != '.')
        return {};
    std::string_view rest = name.substr(digits + 1);
    for (const auto& r : kBlockRoles)
        if (rest == r.suffix) return {r.role, block};
    return {TensorRole::Other, block};
}

std::string canonicalTensorName(TensorRole role, int block)
{
    for (const auto& r : kTopRoles)
        if (r.role == role) return std::string(r.suffix);
    for (const auto& r : kBlockRoles)
        if (r.role == role) return "blk." + std::to_string(block) + "." + std::string(r.suffix);
    return {};
}

// --- hyper-parameters <-> metadata ---------------------------------------------------------

HyperParams hyperParamsFromMetadata(const Metadata& md, const std::vector<TensorInfo>& tensors,
                                    std::vector<std::string>& warnings)
{
    HyperParams hp;
    hp.architecture = md.getString("general.architecture").value_or("");
    const std::string a = hp.architecture + ".";
    auto getInt = [&](const char* key) { return md.getInt(a + key).value_or(0); };
    auto findTensor = [&](TensorRole role) -> const TensorInfo* {
        for (const auto& t : tensors)
            if (t.role == role) return &t;
        return nullptr;
    };

    hp.blockCount = getInt("block_count");
    hp.embeddingDim = getInt("embedding_length");
    hp.ffnDim = getInt("feed_forward_length");
    hp.headCount = getInt("attention.head_count");
    hp.headCountKv = md.getInt(a + "attention.head_count_kv").value_or(hp.headCount);
    hp.contextLength = getInt("context_length");
    if (auto kl = md.getInt(a + "attention.key_length"))
        hp.headDim = *kl;
    else if (hp.headCount > 0 && hp.embeddingDim % hp.headCount == 0)
        hp.headDim = hp.embeddingDim / hp.headCount;
    if (hp.ffnDim == 0)
        if (const TensorInfo* up = findTensor(TensorRole::FfnUp); up && up->shape.size() == 2)
            hp.ffnDim = up->shape[0];

    if (auto v = md.getInt(a + "vocab_size"))
        hp.vocabSize = *v;
    else if (const TensorInfo* e = findTensor(TensorRole::TokenEmbd); e && e->shape.size() == 2)
        hp.vocabSize = e->shape[0];
    else if (const MetaValue* tokens = md.find("tokenizer.ggml.tokens");
             tokens && tokens->asArray())
        hp.vocabSize = static_cast<std::int64_t>(tokens->asArray()->values.size());

    if (auto eps = md.getDouble(a + "attention.layer_norm_rms_epsilon"))
        hp.rmsNormEps = *eps;
    else if (isLlamaFamily(hp.architecture))
        warnings.push_back("no " + a + "attention.layer_norm_rms_epsilon; assuming 1e-5");
    hp.ropeTheta = md.getDouble(a + "rope.freq_base").value_or(10000.0);

    std::string scaling = md.getString(a + "rope.scaling.type").value_or("");
    hp.ropeScaling.type = scaling == "none" ? "" : scaling;
    hp.ropeScaling.factor = md.getDouble(a + "rope.scaling.factor").value_or(1.0);
    hp.ropeScaling.originalContext =
        md.getInt(a + "rope.scaling.original_context_length").value_or(0);
    // Not standard GGUF keys (llama.cpp keeps llama3 scaling in a rope_freqs tensor); written by
    // writeHyperParamsMetadata for Hugging Face models so the values survive.
    hp.ropeScaling.lowFreqFactor = md.getDouble(a + "rope.scaling.low_freq_factor").value_or(1.0);
    hp.ropeScaling.highFreqFactor = md.getDouble(a + "rope.scaling.high_freq_factor").value_or(4.0);

    hp.tiedEmbeddings = findTensor(TensorRole::Output) == nullptr;
    hp.attentionBias = findTensor(TensorRole::AttnQBias) != nullptr;
    return hp;
}

void writeHyperParamsMetadata(const HyperParams& hp, Metadata& md)
{
    const std::string a = hp.architecture + ".";
    auto u32 = [](std::int64_t v) {
        return Metadata::makeU32(static_cast<std::uint32_t>(
            std::clamp<std::int64_t>(v, 0, std::numeric_limits<std::uint32_t>::max())));
    };
    md.set("general.architecture", Metadata::makeString(hp.architecture));
    md.set(a + "context_length", u32(hp.contextLength));
    md.set(a + "embedding_length", u32(hp.embeddingDim));
    md.set(a + "block_count", u32(hp.blockCount));
    md.set(a + "feed_forward_length", u32(hp.ffnDim));
    md.set(a + "attention.head_count", u32(hp.headCount));
    md.set(a + "attention.head_count_kv", u32(hp.headCountKv));
    // Like llama.cpp's converter: explicit key/value lengths only when not embedding / heads.
    if (hp.headCount > 0 && hp.headDim * hp.headCount != hp.embeddingDim) {
        md.set(a + "attention.key_length", u32(hp.headDim));
        md.set(a + "attention.value_length", u32(hp.headDim));
    }
    md.set(a + "rope.dimension_count", u32(hp.headDim));
    md.set(a + "attention.layer_norm_rms_epsilon",
           Metadata::makeF32(static_cast<float>(hp.rmsNormEps)));
    md.set(a + "rope.freq_base", Metadata::makeF32(static_cast<float>(hp.ropeTheta)));
    md.set(a + "vocab_size", u32(hp.vocabSize));
    if (!hp.ropeScaling.type.empty()) {
        md.set(a + "rope.scaling.type", Metadata::makeString(hp.ropeScaling.type));
        md.set(a + "rope.scaling.factor",
               Metadata::makeF32(static_cast<float>(hp.ropeScaling.factor)));
        if (hp.ropeScaling.originalContext > 0)
            md.set(a + "rope.scaling.original_context_length", u32(hp.ropeScaling.originalContext));
        if (hp.ropeScaling.type == "llama3") {
            md.set(a + "rope.scaling.low_freq_factor",
                   Metadata::makeF32(static_cast<float>(hp.ropeScaling.lowFreqFactor)));
            md.set(a + "rope.scaling.high_freq_factor",
                   Metadata::makeF32(static_cast<float>(hp.ropeScaling.highFreqFactor)));
        }
    }
}

// --- the reader ----------------------------------------------------------------------------

namespace {

Result<Model> readGguf(const std::string& path)
{
    auto mapped = MappedFile::open(path);
    if (!mapped) return mapped.error();
    std::shared_ptr<MappedFile> file = std::move(mapped).value();
    Cursor c(*file);

    c.setContext("header");
    std::uint32_t magic = 0, version = 0;
    if (!c.read(magic, "magic")) return c.error();
    if (magic != kGgufMagic)
        return makeError(ErrorCode::Format,
                         path + ": not a GGUF file (the first 4 bytes are not \"GGUF\")");
    if (!c.read(version, "version")) return c.error();
    if (version == 1)
        return makeError(ErrorCode::Unsupported,
                         path +
                             ": GGUF version 1 is not supported (QuantLens reads versions 2 "
                             "and 3; convert the model again with a current llama.cpp)");
    if (version != 2 && version != 3) {
        const std::uint32_t swapped = __builtin_bswap32(version);
        if (swapped == 2 || swapped == 3)
            return makeError(ErrorCode::Unsupported,
                             path + ": big-endian GGUF files are not supported");
        return makeError(ErrorCode::Format, path + ": unknown GGUF version " + str(version) +
                                                " at byte 4 (QuantLens reads versions 2 and 3)");
    }
    std::uint64_t tensorCount = 0, kvCount = 0;
    if (!c.read(tensorCount, "tensor count") || !c.read(kvCount, "metadata count"))
        return c.error();
    if (tensorCount > c.remaining() / kMinTensorInfoBytes)
        return makeError(ErrorCode::Format,
                         path + ": header: tensor count " + str(tensorCount) +
                             " at byte 8 needs at least " + str(kMinTensorInfoBytes) +
                             " bytes per tensor, but only " + str(c.remaining()) +
                             " bytes follow (truncated or corrupt file)");
    if (kvCount > c.remaining() / kMinKvBytes ||
        tensorCount * kMinTensorInfoBytes + kvCount * kMinKvBytes > c.remaining())
        return makeError(ErrorCode::Format, path + ": header: metadata count " + str(kvCount) +
                                                " at byte 16 (with " + str(tensorCount) +
                                                " tensors) needs at least " + str(kMinKvBytes) +
                                                " bytes per entry, but only " + str(c.remaining()) +
                                                " bytes follow (truncated or corrupt file)");

    if (tensorCount > kMaxTensors)
        return makeError(ErrorCode::Format, path + ": header: tensor count " + str(tensorCount) +
                                                " at byte 8 exceeds the " + str(kMaxTensors) +
                                                " tensors QuantLens accepts");
    if (kvCount > kMaxMetadataValues)
        return makeError(ErrorCode::Format, path + ": header: metadata count " + str(kvCount) +
                                                " at byte 16 exceeds the " +
                                                str(kMaxMetadataValues) +
                                                " values QuantLens accepts");

    Model model;
    model.format = ModelFormat::Gguf;
    model.path = path;
    std::uint64_t valuesLeft = kMaxMetadataValues - kvCount;
    for (std::uint64_t i = 0; i < kvCount; ++i) {
        const std::uint64_t at = c.pos();
        c.setContext("metadata entry " + str(i) + " (at byte " + str(at) + ")");
        std::string key;
        if (!c.readString(key, "key", kMaxKeyLength)) return c.error();
        c.setContext("metadata entry " + str(i) + " '" + key + "' (at byte " + str(at) + ")");
        const std::uint64_t typeAt = c.pos();
        std::uint32_t type = 0;
        if (!c.read(type, "value type")) return c.error();
        if (!validMetaType(type)) {
            c.fail(ErrorCode::Format,
                   "unknown value type " + str(type) + " at byte " + str(typeAt));
            return c.error();
        }
        MetaValue value;
        if (!readValue(c, static_cast<MetaType>(type), 0, valuesLeft, value)) return c.error();
        if (model.metadata.find(key))
            return makeError(ErrorCode::Format, path + ": metadata key '" + key +
                                                    "' appears twice (second at byte " + str(at) +
                                                    ")");
        model.metadata.set(std::move(key), std::move(value));
    }

    if (tensorCount > c.remaining() / kMinTensorInfoBytes)
        return makeError(ErrorCode::Format,
                         path + ": tensor count " + str(tensorCount) +
                             " (header byte 8) does not fit in the " + str(c.remaining()) +
                             " bytes after the metadata, which end at byte " + str(c.pos()));
    std::vector<RawTensor> raw(tensorCount);
    for (std::uint64_t i = 0; i < tensorCount; ++i)
        if (!readTensorInfo(c, i, raw[i])) return c.error();
    c.setContext({});

    std::uint64_t alignment = kGgufDefaultAlignment;
    if (const MetaValue* v = model.metadata.find("general.alignment")) {
        auto a = v->asInt();
        if (!a || v->type == MetaType::Bool || *a <= 0 ||
            !std::has_single_bit(static_cast<std::uint64_t>(*a)) || *a > (1 << 30))
            return makeError(ErrorCode::Format, path + ": general.alignment is " +
                                                    v->toDisplayString() +
                                                    " (must be a power of two)");
        alignment = static_cast<std::uint64_t>(*a);
    }
    const std::uint64_t headerEnd = c.pos();
    const std::uint64_t dataStart = (headerEnd + alignment - 1) / alignment * alignment;

    std::unordered_set<std::string> names;
    model.tensors.reserve(raw.size());
    for (auto& r : raw) {
        const std::string where =
            path + ": tensor " + r.name + " (info at byte " + str(r.infoAt) + ")";
        if (!names.insert(r.name).second)
            return makeError(ErrorCode::Format, where + ": the name appears twice");
        std::int64_t count = 1;
        for (auto d : r.shape) count *= d;  // overflow was ruled out while reading
        auto bytes = tensorBytes(r.type, static_cast<std::uint64_t>(count));
        if (!bytes)
            return makeError(ErrorCode::Format, where + ": " + str(count) + " elements of " +
                                                    std::string(tensorTypeName(r.type)) +
                                                    " do not make a whole number of bytes");
        if (r.offset % alignment != 0)
            return makeError(ErrorCode::Format, where + ": data offset " + str(r.offset) +
                                                    " is not a multiple of the alignment " +
                                                    str(alignment));
        if (dataStart > file->size() || r.offset > file->size() - dataStart ||
            *bytes > file->size() - dataStart - r.offset)
            return makeError(ErrorCode::Format, where + ": its " + str(*bytes) + " bytes of " +
                                                    std::string(tensorTypeName(r.type)) + " " +
                                                    shapeString(r.shape) + " at offset " +
                                                    str(r.offset) + " from the data start (byte " +
                                                    str(dataStart) + ") run past the end of the " +
                                                    str(file->size()) + "-byte file");
        TensorInfo t;
        const TensorNameInfo info = classifyTensorName(r.name);
        t.role = info.role;
        t.block = info.block;
        t.sourceName = r.name;
        t.name = std::move(r.name);
        t.shape = std::move(r.shape);
        t.type = r.type;
        t.fileIndex = 0;
        t.offset = dataStart + r.offset;
        t.bytes = *bytes;
        model.tensors.push_back(std::move(t));
    }
    model.files.push_back(std::move(file));

    model.hparams = hyperParamsFromMetadata(model.metadata, model.tensors, model.warnings);
    if (model.hparams.architecture.empty())
        return makeError(ErrorCode::Format, path + ": no general.architecture in the metadata");
    if (!isLlamaFamily(model.hparams.architecture))
        model.warnings.push_back("architecture '" + model.hparams.architecture +
                                 "': QuantLens checks tensor shapes of llama, mistral and "
                                 "qwen2 models only");
    if (model.metadata.find("tokenizer.ggml.tokens") || model.metadata.find("tokenizer.ggml.model"))
        model.tokenizer.kind = TokenizerSource::Kind::GgufMetadata;
    else
        model.warnings.push_back("no tokenizer in the GGUF metadata");

    QL_TRY_STATUS(validateModel(model));
    return model;
}

}  // namespace

Result<Model> openGguf(const std::string& path)
{
    try {
        return readGguf(path);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, path + ": out of memory while reading the header");
    }
}

}  // namespace ql
