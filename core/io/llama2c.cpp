// llama2.c checkpoint reader. The header gives the hyper-parameters and the exporter's fixed
// order gives every tensor's place, so the whole layout is computed (in 128-bit arithmetic, so
// absurd header values cannot overflow) and must add up to the file size exactly; a mismatch is
// the only evidence a headerless legacy file offers that it is what it claims. Tensors then point
// into the memory map without copies.
#include "io/llama2c.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "io/gguf.h"
#include "io/model_loader.h"

namespace ql {
namespace {

namespace fs = std::filesystem;
using u128 = unsigned __int128;

constexpr std::uint64_t kV1HeaderBytes = 256;
constexpr std::uint64_t kLegacyHeaderBytes = 28;

struct Header {
    int version = 0;  // 0 = legacy
    std::int64_t dim = 0, hidden = 0, layers = 0, heads = 0, kvHeads = 0, vocab = 0, seqLen = 0;
    bool shared = true;
    std::uint64_t dataStart = 0;
};

std::int32_t loadI32(const std::uint8_t* p)
{
    return static_cast<std::int32_t>(
        static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
        (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24));
}

void readParams(const std::uint8_t* p, Header& h)
{
    h.dim = loadI32(p);
    h.hidden = loadI32(p + 4);
    h.layers = loadI32(p + 8);
    h.heads = loadI32(p + 12);
    h.kvHeads = loadI32(p + 16);
    h.vocab = loadI32(p + 20);
    h.seqLen = loadI32(p + 24);
}

// Parses the header from the first bytes; errors say which field is wrong.
Result<Header> parseHeader(std::span<const std::uint8_t> b, const std::string& path)
{
    auto fail = [&](ErrorCode code, const std::string& what) {
        return makeError(code, path + ": " + what);
    };
    Header h;
    if (b.size() >= 4 && loadI32(b.data()) == static_cast<std::int32_t>(kLlama2cMagic)) {
        if (b.size() < 8)
            return fail(ErrorCode::Format, "truncated: the version (byte 4) is missing");
        h.version = loadI32(b.data() + 4);
        if (h.version == 2)
            return fail(ErrorCode::Unsupported,
                        "llama2.c version 2 checkpoints (int8 Q8_0 groups) are not supported; "
                        "export with --version 1 or 0");
        if (h.version != 1)
            return fail(ErrorCode::Unsupported, "unknown llama2.c checkpoint version " +
                                                    std::to_string(h.version) + " (byte 4)");
        if (b.size() < kV1HeaderBytes)
            return fail(ErrorCode::Format, "truncated: the version-1 header needs " +
                                               std::to_string(kV1HeaderBytes) +
                                               " bytes, the file has " + std::to_string(b.size()));
        readParams(b.data() + 8, h);
        const std::uint8_t flag = b[36];
        if (flag > 1)
            return fail(ErrorCode::Format, "shared_classifier flag at byte 36 is " +
                                               std::to_string(flag) + " (must be 0 or 1)");
        h.shared = flag == 1;
        h.dataStart = kV1HeaderBytes;
    } else {
        if (b.size() < kLegacyHeaderBytes)
            return fail(ErrorCode::Format,
                        "truncated: the llama2.c header needs 28 bytes, the file has " +
                            std::to_string(b.size()));
        readParams(b.data(), h);
        h.shared = h.vocab > 0;
        h.vocab = h.vocab < 0 ? -h.vocab : h.vocab;  // int64: -INT32_MIN is fine
        h.dataStart = kLegacyHeaderBytes;
    }

    const std::uint64_t at = h.version == 0 ? 0 : 8;
    struct Field {
        const char* name;
        std::int64_t value;
    };
    const Field fields[] = {
        {"dim", h.dim},       {"hidden_dim", h.hidden},  {"n_layers", h.layers},
        {"n_heads", h.heads}, {"n_kv_heads", h.kvHeads}, {"vocab_size", h.vocab},
        {"seq_len", h.seqLen}};
    for (std::size_t i = 0; i < std::size(fields); ++i)
        if (fields[i].value <= 0)
            return fail(ErrorCode::Format,
                        std::string(fields[i].name) + " at byte " + std::to_string(at + 4 * i) +
                            " is " + std::to_string(fields[i].value) + " (must be positive)");
    if (h.dim % h.heads != 0)
        return fail(ErrorCode::Format, "dim " + std::to_string(h.dim) +
                                           " is not a multiple of n_heads " +
                                           std::to_string(h.heads));
    if (h.kvHeads > h.heads || h.heads % h.kvHeads != 0)
        return fail(ErrorCode::Format, "n_heads " + std::to_string(h.heads) +
                                           " is not a multiple of n_kv_heads " +
                                           std::to_string(h.kvHeads));
    if ((h.dim / h.heads) % 2 != 0)
        return fail(ErrorCode::Format,
                    "head size " + std::to_string(h.dim / h.heads) + " is odd (RoPE needs pairs)");
    return h;
}

// One run of tensors in the file: `count` tensors of `shape` (per block when perBlock).
struct Group {
    TensorRole role;  // Other marks bytes to skip (freq_cis)
    bool perBlock;
    std::vector<std::int64_t> shape;
    const char* sourceName;  // llama2.c model.py name; "%d" for the block
};

std::vector<Group> layout(const Header& h)
{
    const std::int64_t dim = h.dim, kvDim = h.dim / h.heads * h.kvHeads, hid = h.hidden;
    const std::int64_t freq = h.seqLen * (h.dim / h.heads / 2);
    const Group embd{TensorRole::TokenEmbd, false, {h.vocab, dim}, "tok_embeddings.weight"};
    const Group attnNorm{TensorRole::AttnNorm, true, {dim}, "layers.%d.attention_norm.weight"};
    const Group ffnNorm{TensorRole::FfnNorm, true, {dim}, "layers.%d.ffn_norm.weight"};
    const Group outNorm{TensorRole::OutputNorm, false, {dim}, "norm.weight"};
    const Group matrices[] = {
        {TensorRole::AttnQ, true, {dim, dim}, "layers.%d.attention.wq.weight"},
        {TensorRole::AttnK, true, {kvDim, dim}, "layers.%d.attention.wk.weight"},
        {TensorRole::AttnV, true, {kvDim, dim}, "layers.%d.attention.wv.weight"},
        {TensorRole::AttnOutput, true, {dim, dim}, "layers.%d.attention.wo.weight"},
    };
    const Group ffn[] = {
        {TensorRole::FfnGate, true, {hid, dim}, "layers.%d.feed_forward.w1.weight"},
        {TensorRole::FfnDown, true, {dim, hid}, "layers.%d.feed_forward.w2.weight"},
        {TensorRole::FfnUp, true, {hid, dim}, "layers.%d.feed_forward.w3.weight"},
    };
    const Group cls{TensorRole::Output, false, {h.vocab, dim}, "output.weight"};

    std::vector<Group> g;
    if (h.version == 0) {
        g.push_back(embd);
        g.push_back(attnNorm);
        g.insert(g.end(), std::begin(matrices), std::end(matrices));
        g.push_back(ffnNorm);
        g.insert(g.end(), std::begin(ffn), std::end(ffn));
        g.push_back(outNorm);
        g.push_back({TensorRole::Other, false, {freq}, "freq_cis_real"});
        g.push_back({TensorRole::Other, false, {freq}, "freq_cis_imag"});
    } else {
        g.push_back(attnNorm);
        g.push_back(ffnNorm);
        g.push_back(outNorm);
        g.push_back(embd);
        g.insert(g.end(), std::begin(matrices), std::end(matrices));
        g.insert(g.end(), std::begin(ffn), std::end(ffn));
    }
    if (!h.shared) g.push_back(cls);
    return g;
}

u128 groupBytes(const Group& g, const Header& h)
{
    u128 n = 4;
    for (auto d : g.shape) n *= static_cast<u128>(d);
    return g.perBlock ? n * static_cast<u128>(h.layers) : n;
}

u128 expectedSize(const Header& h)
{
    u128 total = h.dataStart;
    for (const auto& g : layout(h)) total += groupBytes(g, h);
    return total;
}

std::string sizeString(u128 v)
{
    if (v > static_cast<u128>(UINT64_MAX)) return "more than 2^64";
    return std::to_string(static_cast<std::uint64_t>(v));
}

std::string blockName(const char* pattern, int block)
{
    std::string s = pattern;
    auto pos = s.find("%d");
    if (pos != std::string::npos) s.replace(pos, 2, std::to_string(block));
    return s;
}

// tokenizer.bin, else tok<vocab>.bin, else the first tok*.bin (by name) beside the checkpoint.
std::string findTokenizer(const fs::path& checkpoint, std::int64_t vocab)
{
    const fs::path dir = checkpoint.has_parent_path() ? checkpoint.parent_path() : fs::path(".");
    std::error_code ec;
    if (fs::is_regular_file(dir / "tokenizer.bin", ec)) return (dir / "tokenizer.bin").string();
    const std::string preferred = "tok" + std::to_string(vocab) + ".bin";
    if (fs::is_regular_file(dir / preferred, ec)) return (dir / preferred).string();
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name.size() >= 7 && name.rfind("tok", 0) == 0 && e.path().extension() == ".bin" &&
            e.path().filename() != checkpoint.filename() && e.is_regular_file(ec))
            found.push_back(e.path().string());
    }
    std::sort(found.begin(), found.end());
    return found.empty() ? std::string() : found.front();
}

}  // namespace

bool looksLikeLlama2c(std::span<const std::uint8_t> head, std::uint64_t fileSize)
{
    if (head.size() >= 4 && loadI32(head.data()) == static_cast<std::int32_t>(kLlama2cMagic))
        return true;
    if (head.size() < kLegacyHeaderBytes) return false;
    auto h = parseHeader(head.first(kLegacyHeaderBytes), {});
    return h && expectedSize(*h) == fileSize;
}

Result<Model> openLlama2c(const std::string& path)
{
    auto mapped = MappedFile::open(path);
    if (!mapped) return mapped.error();
    std::shared_ptr<MappedFile> file = std::move(mapped).value();
    auto header = parseHeader(std::span<const std::uint8_t>(file->data(), file->size()), path);
    if (!header) return header.error();
    const Header& h = *header;

    const u128 expected = expectedSize(h);
    if (expected != file->size())
        return makeError(ErrorCode::Format,
                         path + ": not a llama2.c checkpoint of these hyper-parameters (dim " +
                             std::to_string(h.dim) + ", hidden_dim " + std::to_string(h.hidden) +
                             ", n_layers " + std::to_string(h.layers) + ", n_heads " +
                             std::to_string(h.heads) + ", n_kv_heads " + std::to_string(h.kvHeads) +
                             ", vocab_size " + std::to_string(h.vocab) + ", seq_len " +
                             std::to_string(h.seqLen) + (h.shared ? ", shared" : ", unshared") +
                             " classifier): they need " + sizeString(expected) +
                             " bytes, the file has " + std::to_string(file->size()));

    Model model;
    model.format = ModelFormat::Llama2c;
    model.path = path;
    std::uint64_t offset = h.dataStart;
    for (const auto& g : layout(h)) {
        const auto bytes =
            static_cast<std::uint64_t>(groupBytes(g, h) / (g.perBlock ? h.layers : 1));
        const int copies = g.perBlock ? static_cast<int>(h.layers) : 1;
        for (int b = 0; b < copies; ++b, offset += bytes) {
            if (g.role == TensorRole::Other) continue;  // freq_cis: recomputed from theta
            TensorInfo t;
            t.role = g.role;
            t.block = g.perBlock ? b : -1;
            t.name = canonicalTensorName(g.role, t.block);
            t.sourceName = blockName(g.sourceName, b);
            t.shape = g.shape;
            t.type = TensorType::F32;
            t.fileIndex = 0;
            t.offset = offset;
            t.bytes = bytes;
            model.tensors.push_back(std::move(t));
        }
    }
    // Present tensors in GGUF order (embedding, blocks, output) rather than file order.
    auto rank = [](const TensorInfo& t) {
        const int top = t.role == TensorRole::TokenEmbd ? 0 : t.block >= 0 ? 1 : 2;
        return std::make_tuple(top, t.block, static_cast<int>(t.role));
    };
    std::stable_sort(model.tensors.begin(), model.tensors.end(),
                     [&](const TensorInfo& a, const TensorInfo& b) { return rank(a) < rank(b); });
    model.files.push_back(std::move(file));

    HyperParams& hp = model.hparams;
    hp.architecture = "llama";
    hp.blockCount = h.layers;
    hp.embeddingDim = h.dim;
    hp.ffnDim = h.hidden;
    hp.headCount = h.heads;
    hp.headCountKv = h.kvHeads;
    hp.headDim = h.dim / h.heads;
    hp.vocabSize = h.vocab;
    hp.contextLength = h.seqLen;
    hp.rmsNormEps = 1e-5f;  // llama2.c's run.c; float, as GGUF stores it
    hp.ropeTheta = 10000.0;
    hp.tiedEmbeddings = h.shared;

    model.metadata.set("general.architecture", Metadata::makeString("llama"));
    model.metadata.set("general.name", Metadata::makeString(fs::path(path).stem().string()));
    writeHyperParamsMetadata(hp, model.metadata);
    // run.c's fixed special tokens.
    model.metadata.set("tokenizer.ggml.bos_token_id", Metadata::makeU32(1));
    model.metadata.set("tokenizer.ggml.eos_token_id", Metadata::makeU32(2));

    const std::string tokenizer = findTokenizer(fs::path(path), h.vocab);
    if (!tokenizer.empty()) {
        model.tokenizer.kind = TokenizerSource::Kind::Llama2cBin;
        model.tokenizer.path = tokenizer;
    } else {
        model.warnings.push_back("no tokenizer.bin or tok*.bin beside " + path);
    }
    QL_TRY_STATUS(validateModel(model));
    return model;
}

}  // namespace ql
