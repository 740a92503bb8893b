// Format detection and the validation every loader ends with. Detection looks at what the path
// is (a folder, an extension) and at the first bytes (GGUF magic, a safetensors header length
// followed by '{', a llama2.c header whose sizes add up to the file size), in that order, so a
// misnamed file still opens and an unknown one gets an error that says what was looked for.
// Validation turns a header that disagrees with its tensors into a Format error naming the
// tensor, instead of letting a later forward pass read the wrong rows.
#include "io/model_loader.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unordered_set>

#include "io/gguf.h"
#include "io/llama2c.h"
#include "io/safetensors.h"

namespace ql {
namespace {

std::string lowerExtension(const std::filesystem::path& p)
{
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    return ext;
}

std::string shapeString(const std::vector<std::int64_t>& shape)
{
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

Result<Model> detectAndOpen(const std::string& path)
{
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status))
        return makeError(ErrorCode::Io, path + ": no such file or folder");
    if (fs::is_directory(status)) return openSafetensors(path);

    const fs::path p(path);
    const std::string ext = lowerExtension(p);
    if (ext == ".safetensors") return openSafetensors(path);
    if (p.filename() == "config.json" || p.filename() == "model.safetensors.index.json")
        return openSafetensors(p.parent_path().empty() ? "." : p.parent_path().string());

    std::uint8_t head[64] = {};
    std::ifstream in(path, std::ios::binary);
    if (!in) return makeError(ErrorCode::Io, path + ": cannot open for reading");
    in.read(reinterpret_cast<char*>(head), sizeof head);
    const auto got = static_cast<std::size_t>(in.gcount());
    const std::uint64_t size = fs::file_size(path, ec);
    if (ec) return makeError(ErrorCode::Io, path + ": cannot read its size");
    std::span<const std::uint8_t> first(head, got);

    if (ext == ".gguf" || (got >= 4 && std::equal(head, head + 4, "GGUF"))) return openGguf(path);
    if (looksLikeSafetensors(first, size)) return openSafetensors(path);
    if (looksLikeLlama2c(first, size) || ext == ".bin") return openLlama2c(path);

    std::string bytes;
    for (std::size_t i = 0; i < std::min<std::size_t>(got, 8); ++i) {
        char buf[4];
        std::snprintf(buf, sizeof buf, "%02x ", head[i]);
        bytes += buf;
    }
    if (!bytes.empty()) bytes.pop_back();
    return makeError(ErrorCode::Format,
                     path +
                         ": not a model QuantLens can open: no GGUF magic, no safetensors "
                         "header and no llama2.c header matching the file size (" +
                         std::to_string(size) +
                         " bytes; first bytes: " + (bytes.empty() ? "none" : bytes) + ")");
}

}  // namespace

Result<Model> openModel(const std::string& path, const ProgressFn& progress)
{
    if (!reportProgress(progress, 0.0, "opening model"))
        return makeError(ErrorCode::Cancelled, "opening " + path + " was cancelled");
    // The loaders catch what they can throw; this is the last guard for the filesystem layer.
    Result<Model> model = makeError(ErrorCode::Io, path + ": not opened");
    try {
        model = detectAndOpen(path);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, path + ": out of memory while opening");
    } catch (const std::exception& e) {
        return makeError(ErrorCode::Io, path + ": " + e.what());
    }
    if (model && !reportProgress(progress, 1.0, "model opened"))
        return makeError(ErrorCode::Cancelled, "opening " + path + " was cancelled");
    return model;
}

Status validateModel(const Model& m)
{
    auto fail = [&](const std::string& what) {
        return makeError(ErrorCode::Format, m.path + ": " + what);
    };
    const HyperParams& hp = m.hparams;

    // Every tensor: a file, the right byte count, in bounds, a unique name, a block that exists.
    std::unordered_set<std::string> names;
    for (const auto& t : m.tensors) {
        if (!names.insert(t.name).second) return fail("tensor " + t.name + " appears twice");
        if (t.fileIndex < 0 || static_cast<std::size_t>(t.fileIndex) >= m.files.size() ||
            !m.files[t.fileIndex])
            return fail("tensor " + t.name + " refers to a missing file");
        if (t.shape.empty()) return fail("tensor " + t.name + " has no dimensions");
        std::int64_t count = 1;
        for (auto d : t.shape)
            if (d <= 0 || __builtin_mul_overflow(count, d, &count))
                return fail("tensor " + t.name + " has an invalid shape " + shapeString(t.shape));
        auto bytes = tensorBytes(t.type, static_cast<std::uint64_t>(count));
        if (!bytes || *bytes != t.bytes)
            return fail("tensor " + t.name + " holds " + std::to_string(t.bytes) +
                        " bytes, but shape " + shapeString(t.shape) + " of " +
                        std::string(tensorTypeName(t.type)) + " needs " +
                        (bytes ? std::to_string(*bytes) : std::string("a whole number of blocks")));
        if (!m.files[t.fileIndex]->contains(t.offset, t.bytes))
            return fail("tensor " + t.name + " lies outside its file");
        // An architecture QuantLens does not know may lack block_count: nothing to check then.
        if (t.block >= 0 && hp.blockCount > 0 && t.block >= hp.blockCount)
            return fail("tensor " + t.name + " belongs to block " + std::to_string(t.block) +
                        ", but the model has " + std::to_string(hp.blockCount) + " blocks");
    }

    if (!isLlamaFamily(hp.architecture)) return {};

    struct Field {
        const char* name;
        std::int64_t value;
    };
    for (const Field& f :
         {Field{"block_count", hp.blockCount}, Field{"embedding_length", hp.embeddingDim},
          Field{"feed_forward_length", hp.ffnDim}, Field{"attention.head_count", hp.headCount},
          Field{"attention.head_count_kv", hp.headCountKv}, Field{"head dimension", hp.headDim},
          Field{"vocab_size", hp.vocabSize}})
        if (f.value <= 0 || f.value > (std::int64_t{1} << 40))
            return fail(std::string(f.name) + " is " + std::to_string(f.value) +
                        " (missing or out of range)");
    if (!(hp.rmsNormEps > 0 && hp.rmsNormEps < 1))
        return fail("attention.layer_norm_rms_epsilon is " + std::to_string(hp.rmsNormEps) +
                    " (must lie in (0, 1))");
    if (!(hp.ropeTheta > 0 && std::isfinite(hp.ropeTheta)))
        return fail("rope.freq_base is " + std::to_string(hp.ropeTheta) + " (must be positive)");
    if (hp.contextLength < 0) return fail("context_length is " + std::to_string(hp.contextLength));
    if (hp.headCount % hp.headCountKv != 0)
        return fail("attention.head_count " + std::to_string(hp.headCount) +
                    " is not a multiple of head_count_kv " + std::to_string(hp.headCountKv));

    const std::int64_t dim = hp.embeddingDim, ffn = hp.ffnDim, vocab = hp.vocabSize;
    const std::int64_t qDim = hp.headCount * hp.headDim, kvDim = hp.headCountKv * hp.headDim;
    const std::string heads =
        "head_count " + std::to_string(hp.headCount) + " x head_dim " + std::to_string(hp.headDim);
    const std::string kvHeads = "head_count_kv " + std::to_string(hp.headCountKv) + " x head_dim " +
                                std::to_string(hp.headDim);

    auto expect = [&](TensorRole role, int block, std::vector<std::int64_t> shape,
                      const std::string& why, bool required) -> Status {
        const TensorInfo* t = m.find(role, block);
        if (!t) {
            if (!required) return {};
            return fail("tensor " + canonicalTensorName(role, block) + " is missing");
        }
        if (t->shape != shape)
            return fail("tensor " + t->name + " has shape " + shapeString(t->shape) +
                        ", but the hyper-parameters give " + shapeString(shape) + " (" + why + ")");
        return {};
    };
    const std::string d = "embedding_length " + std::to_string(dim);
    const std::string f = "feed_forward_length " + std::to_string(ffn);
    const std::string v = "vocab_size " + std::to_string(vocab);
    QL_TRY_STATUS(expect(TensorRole::TokenEmbd, -1, {vocab, dim}, v + ", " + d, true));
    QL_TRY_STATUS(expect(TensorRole::OutputNorm, -1, {dim}, d, true));
    QL_TRY_STATUS(expect(TensorRole::Output, -1, {vocab, dim}, v + ", " + d, !hp.tiedEmbeddings));
    for (int b = 0; b < hp.blockCount; ++b) {
        QL_TRY_STATUS(expect(TensorRole::AttnNorm, b, {dim}, d, true));
        QL_TRY_STATUS(expect(TensorRole::AttnQ, b, {qDim, dim}, heads + ", " + d, true));
        QL_TRY_STATUS(expect(TensorRole::AttnK, b, {kvDim, dim}, kvHeads + ", " + d, true));
        QL_TRY_STATUS(expect(TensorRole::AttnV, b, {kvDim, dim}, kvHeads + ", " + d, true));
        QL_TRY_STATUS(expect(TensorRole::AttnOutput, b, {dim, qDim}, d + ", " + heads, true));
        QL_TRY_STATUS(expect(TensorRole::AttnQBias, b, {qDim}, heads, hp.attentionBias));
        QL_TRY_STATUS(expect(TensorRole::AttnKBias, b, {kvDim}, kvHeads, hp.attentionBias));
        QL_TRY_STATUS(expect(TensorRole::AttnVBias, b, {kvDim}, kvHeads, hp.attentionBias));
        QL_TRY_STATUS(expect(TensorRole::FfnNorm, b, {dim}, d, true));
        QL_TRY_STATUS(expect(TensorRole::FfnGate, b, {ffn, dim}, f + ", " + d, true));
        QL_TRY_STATUS(expect(TensorRole::FfnUp, b, {ffn, dim}, f + ", " + d, true));
        QL_TRY_STATUS(expect(TensorRole::FfnDown, b, {dim, ffn}, d + ", " + f, true));
    }
    return {};
}

}  // namespace ql
