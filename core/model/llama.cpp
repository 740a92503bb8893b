// Llama-family forward pass on the CPU (design in llama.h). Every tensor is decoded to float32 once
// into row-major Eigen matrices; the forward pass is a straight sequence of cpu_ops calls over
// T × features activations, so the full-sequence pass, incremental decoding and the layer-by-layer
// entry points share one block routine and differ only in where keys and values live (a local
// matrix, or rows of the KV cache). Allocation failures anywhere become ErrorCode::OutOfMemory.
#include "model/llama.h"

#include <algorithm>
#include <new>

#include "io/gguf.h"
#include "quant/ggml_dequant.h"

namespace ql {

bool llamaArchitectureSupported(const std::string& architecture)
{
    return architecture == "llama" || architecture == "mistral" || architecture == "qwen2";
}

RopeStyle ropeStyleFor(ModelFormat format, const std::string& architecture)
{
    switch (format) {
        case ModelFormat::Safetensors: return RopeStyle::HalfSplit;
        case ModelFormat::Llama2c: return RopeStyle::AdjacentPairs;
        case ModelFormat::Gguf:
            // llama.cpp: LLAMA_ROPE_TYPE_NORM for llama (its converter permutes q/k), NEOX for
            // qwen2.
            return architecture == "qwen2" ? RopeStyle::HalfSplit : RopeStyle::AdjacentPairs;
    }
    return RopeStyle::AdjacentPairs;
}

const char* linearGroupName(LinearGroup group)
{
    switch (group) {
        case LinearGroup::AttnQkv: return "attn_qkv";
        case LinearGroup::AttnOutput: return "attn_output";
        case LinearGroup::FfnGateUp: return "ffn_gate_up";
        case LinearGroup::FfnDown: return "ffn_down";
    }
    return "?";
}

namespace {

Error outOfMemory(const std::string& what)
{
    return makeError(ErrorCode::OutOfMemory, "out of memory " + what);
}

std::string shapeString(const std::vector<std::int64_t>& shape)
{
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Decodes one tensor (or takes its override) after checking its shape.
class TensorReader {
public:
    TensorReader(const Model& model, const WeightOverride& override, const ProgressFn& progress,
                 std::size_t total)
        : m_model(model), m_override(override), m_progress(progress), m_total(total)
    {
    }

    Result<std::vector<float>> read(const TensorInfo& t, const std::vector<std::int64_t>& shape)
    {
        if (t.shape != shape)
            return makeError(ErrorCode::Format,
                             "tensor " + t.name + " has shape " + shapeString(t.shape) +
                                 ", the hyper-parameters need " + shapeString(shape));
        std::vector<float> values;
        bool overridden = false;
        if (m_override) {
            auto r = m_override(t);
            if (!r) return r.error();
            if (r->has_value()) {
                values = std::move(**r);
                overridden = true;
                if (static_cast<std::int64_t>(values.size()) != t.elementCount())
                    return makeError(ErrorCode::InvalidArgument,
                                     "the override of " + t.name + " has " +
                                         std::to_string(values.size()) + " values, the tensor " +
                                         std::to_string(t.elementCount()));
            }
        }
        if (!overridden) {
            auto r = dequantizeTensor(m_model, t);
            if (!r) return r.error();
            values = std::move(r).value();
        }
        QL_TRY_STATUS(counted());
        return values;
    }

    Status counted()
    {
        ++m_done;
        if (!reportProgress(m_progress, double(m_done) / std::max<std::size_t>(1, m_total),
                            "preparing weights"))
            return makeError(ErrorCode::Cancelled, "preparing the weights was cancelled");
        return {};
    }

    Status matrix(const TensorInfo& t, std::int64_t rows, std::int64_t cols, MatrixXfRowMajor& out)
    {
        if (!m_override && t.shape == std::vector<std::int64_t>{rows, cols}) {
            // Decoded straight into the matrix: no second float32 copy of the model.
            try {
                out.resize(rows, cols);
            } catch (const std::bad_alloc&) {
                return makeError(ErrorCode::OutOfMemory,
                                 "out of memory for " + t.name + " (" +
                                     std::to_string(rows * cols * 4 / (1024 * 1024)) + " MiB)");
            }
            QL_TRY_STATUS(dequantizeTensorInto(
                m_model, t, std::span<float>(out.data(), std::size_t(out.size()))));
            return counted();
        }
        auto v = read(t, {rows, cols});
        if (!v) return v.error();
        out = Eigen::Map<const MatrixXfRowMajor>(v->data(), rows, cols);
        return {};
    }

    Status vector(const TensorInfo& t, std::int64_t n, Eigen::VectorXf& out)
    {
        auto v = read(t, {n});
        if (!v) return v.error();
        out = Eigen::Map<const Eigen::VectorXf>(v->data(), n);
        return {};
    }

private:
    const Model& m_model;
    const WeightOverride& m_override;
    const ProgressFn& m_progress;
    std::size_t m_total = 0, m_done = 0;
};

}  // namespace

// --- LlamaWeights ----------------------------------------------------------------------------

Result<LlamaWeights> LlamaWeights::fromModel(const Model& model, const LlamaLoadOptions& options,
                                             const ProgressFn& progress)
{
    const HyperParams& hp = model.hparams;
    if (!llamaArchitectureSupported(hp.architecture))
        return makeError(ErrorCode::Unsupported,
                         "architecture \"" + hp.architecture +
                             "\" is not supported by the forward pass (llama, mistral, qwen2 are)");
    LlamaWeights w;
    LlamaConfig& c = w.m_config;
    c.architecture = hp.architecture;
    c.blocks = hp.blockCount;
    c.dim = hp.embeddingDim;
    c.ffnDim = hp.ffnDim;
    c.heads = hp.headCount;
    c.kvHeads = hp.headCountKv;
    c.headDim = hp.headDim;
    c.vocab = hp.vocabSize;
    c.contextLength = hp.contextLength;
    c.rmsNormEps = static_cast<float>(hp.rmsNormEps);
    for (std::int64_t v : {c.blocks, c.dim, c.ffnDim, c.heads, c.kvHeads, c.headDim, c.vocab})
        if (v <= 0 || v > (std::int64_t{1} << 31))
            return makeError(ErrorCode::Format, model.path +
                                                    ": a hyper-parameter of the model is missing "
                                                    "or out of range");
    if (c.heads % c.kvHeads != 0)
        return makeError(ErrorCode::Format, model.path + ": " + std::to_string(c.heads) +
                                                " query heads cannot share " +
                                                std::to_string(c.kvHeads) + " KV heads");
    if (c.headDim % 2 != 0)
        return makeError(ErrorCode::Unsupported, model.path + ": odd head dimension " +
                                                     std::to_string(c.headDim) + " for RoPE");
    if (!(hp.rmsNormEps > 0))
        return makeError(ErrorCode::Format, model.path + ": RMSNorm epsilon must be positive");
    if (auto id = model.metadata.getInt("tokenizer.ggml.bos_token_id"))
        c.bos = static_cast<TokenId>(*id);
    if (auto id = model.metadata.getInt("tokenizer.ggml.eos_token_id"))
        c.eos = static_cast<TokenId>(*id);

    const TensorInfo* output = model.find(TensorRole::Output);
    c.tiedOutput = output == nullptr;
    c.attentionBias = model.find(TensorRole::AttnQBias, 0) != nullptr;
    const TensorInfo* ropeFreqs = model.find(TensorRole::RopeFreqs);

    std::size_t total = 2 + (c.tiedOutput ? 0 : 1) + (ropeFreqs ? 1 : 0) +
                        static_cast<std::size_t>(c.blocks) * (c.attentionBias ? 12 : 9);
    TensorReader reader(model, options.override, progress, total);
    const std::int64_t qDim = c.heads * c.headDim, kvDim = c.kvHeads * c.headDim;
    try {
        RopeParams rp;
        rp.headDim = c.headDim;
        rp.theta = hp.ropeTheta;
        rp.scaling = hp.ropeScaling.type;
        rp.factor = hp.ropeScaling.factor;
        rp.originalContext = hp.ropeScaling.originalContext;
        rp.lowFreqFactor = hp.ropeScaling.lowFreqFactor;
        rp.highFreqFactor = hp.ropeScaling.highFreqFactor;
        if (rp.scaling == "yarn" && rp.originalContext <= 0) rp.originalContext = c.contextLength;
        if (rp.scaling == "dynamic")
            c.warnings.push_back(
                "dynamic (NTK) RoPE scaling is evaluated as unscaled RoPE, which it equals within "
                "the original context");
        if (ropeFreqs) {
            auto f = reader.read(*ropeFreqs, {c.headDim / 2});
            if (!f) return f.error();
            rp.freqFactors = std::move(f).value();
        }
        auto freqs = ropeFrequencies(rp);
        if (!freqs) return makeError(freqs.error().code, model.path + ": " + freqs.error().message);
        c.rope = std::move(freqs).value();
        c.rope.style = options.ropeStyle.value_or(ropeStyleFor(model.format, c.architecture));

        auto need = [&](TensorRole role, int block) -> Result<const TensorInfo*> {
            const TensorInfo* t = model.find(role, block);
            if (!t)
                return makeError(
                    ErrorCode::Format,
                    model.path + ": tensor " + canonicalTensorName(role, block) + " is missing");
            return t;
        };
#define QL_NEED(var, role, block)       \
    auto var##_ = need(role, block);    \
    if (!var##_) return var##_.error(); \
    const TensorInfo& var = *var##_.value();

        QL_NEED(embd, TensorRole::TokenEmbd, -1);
        QL_TRY_STATUS(reader.matrix(embd, c.vocab, c.dim, w.m_tokenEmbd));
        QL_NEED(outNorm, TensorRole::OutputNorm, -1);
        QL_TRY_STATUS(reader.vector(outNorm, c.dim, w.m_outputNorm));
        if (output) QL_TRY_STATUS(reader.matrix(*output, c.vocab, c.dim, w.m_output));

        w.m_blocks.resize(static_cast<std::size_t>(c.blocks));
        for (int b = 0; b < c.blocks; ++b) {
            LlamaBlockWeights& bw = w.m_blocks[b];
            QL_NEED(attnNorm, TensorRole::AttnNorm, b);
            QL_TRY_STATUS(reader.vector(attnNorm, c.dim, bw.attnNorm));
            QL_NEED(q, TensorRole::AttnQ, b);
            QL_TRY_STATUS(reader.matrix(q, qDim, c.dim, bw.wq));
            QL_NEED(k, TensorRole::AttnK, b);
            QL_TRY_STATUS(reader.matrix(k, kvDim, c.dim, bw.wk));
            QL_NEED(v, TensorRole::AttnV, b);
            QL_TRY_STATUS(reader.matrix(v, kvDim, c.dim, bw.wv));
            QL_NEED(o, TensorRole::AttnOutput, b);
            QL_TRY_STATUS(reader.matrix(o, c.dim, qDim, bw.wo));
            if (c.attentionBias) {
                QL_NEED(bq, TensorRole::AttnQBias, b);
                QL_TRY_STATUS(reader.vector(bq, qDim, bw.bq));
                QL_NEED(bk, TensorRole::AttnKBias, b);
                QL_TRY_STATUS(reader.vector(bk, kvDim, bw.bk));
                QL_NEED(bv, TensorRole::AttnVBias, b);
                QL_TRY_STATUS(reader.vector(bv, kvDim, bw.bv));
            } else if (model.find(TensorRole::AttnQBias, b) ||
                       model.find(TensorRole::AttnKBias, b) ||
                       model.find(TensorRole::AttnVBias, b)) {
                return makeError(ErrorCode::Format, model.path + ": block " + std::to_string(b) +
                                                        " has attention biases, block 0 has none");
            }
            QL_NEED(ffnNorm, TensorRole::FfnNorm, b);
            QL_TRY_STATUS(reader.vector(ffnNorm, c.dim, bw.ffnNorm));
            QL_NEED(gate, TensorRole::FfnGate, b);
            QL_TRY_STATUS(reader.matrix(gate, c.ffnDim, c.dim, bw.gate));
            QL_NEED(up, TensorRole::FfnUp, b);
            QL_TRY_STATUS(reader.matrix(up, c.ffnDim, c.dim, bw.up));
            QL_NEED(down, TensorRole::FfnDown, b);
            QL_TRY_STATUS(reader.matrix(down, c.dim, c.ffnDim, bw.down));
        }
#undef QL_NEED
    } catch (const std::bad_alloc&) {
        return outOfMemory("while preparing float32 weights (" +
                           std::to_string(model.totalParameters() * 4 / (1 << 20)) + " MiB)");
    }
    return w;
}

namespace {

struct Slot {
    TensorRole role;
    int block;
};

std::vector<Slot> slots(const LlamaConfig& c)
{
    std::vector<Slot> s{{TensorRole::TokenEmbd, -1}};
    if (!c.tiedOutput) s.push_back({TensorRole::Output, -1});
    s.push_back({TensorRole::OutputNorm, -1});
    for (int b = 0; b < c.blocks; ++b) {
        for (TensorRole r : {TensorRole::AttnNorm, TensorRole::AttnQ, TensorRole::AttnK,
                             TensorRole::AttnV, TensorRole::AttnOutput})
            s.push_back({r, b});
        if (c.attentionBias)
            for (TensorRole r :
                 {TensorRole::AttnQBias, TensorRole::AttnKBias, TensorRole::AttnVBias})
                s.push_back({r, b});
        for (TensorRole r :
             {TensorRole::FfnNorm, TensorRole::FfnGate, TensorRole::FfnUp, TensorRole::FfnDown})
            s.push_back({r, b});
    }
    return s;
}

float* blockStorage(LlamaBlockWeights& blk, TensorRole role, Eigen::Index& size)
{
    auto set = [&](auto& m) {
        size = m.size();
        return m.data();
    };
    switch (role) {
        case TensorRole::AttnNorm: return set(blk.attnNorm);
        case TensorRole::AttnQ: return set(blk.wq);
        case TensorRole::AttnK: return set(blk.wk);
        case TensorRole::AttnV: return set(blk.wv);
        case TensorRole::AttnOutput: return set(blk.wo);
        case TensorRole::AttnQBias: return set(blk.bq);
        case TensorRole::AttnKBias: return set(blk.bk);
        case TensorRole::AttnVBias: return set(blk.bv);
        case TensorRole::FfnNorm: return set(blk.ffnNorm);
        case TensorRole::FfnGate: return set(blk.gate);
        case TensorRole::FfnUp: return set(blk.up);
        case TensorRole::FfnDown: return set(blk.down);
        default: break;
    }
    size = 0;
    return nullptr;
}

}  // namespace

std::vector<std::string> LlamaWeights::tensorNames() const
{
    std::vector<std::string> names;
    for (const Slot& s : slots(m_config)) names.push_back(canonicalTensorName(s.role, s.block));
    return names;
}

float* LlamaWeights::find(const std::string& name, Eigen::Index& size)
{
    size = 0;
    for (const Slot& s : slots(m_config)) {
        if (canonicalTensorName(s.role, s.block) != name) continue;
        switch (s.role) {
            case TensorRole::TokenEmbd: size = m_tokenEmbd.size(); return m_tokenEmbd.data();
            case TensorRole::Output: size = m_output.size(); return m_output.data();
            case TensorRole::OutputNorm: size = m_outputNorm.size(); return m_outputNorm.data();
            default: return blockStorage(m_blocks[s.block], s.role, size);
        }
    }
    return nullptr;
}

std::span<const float> LlamaWeights::values(const std::string& name) const
{
    Eigen::Index size = 0;
    const float* p = const_cast<LlamaWeights*>(this)->find(name, size);
    return p ? std::span<const float>(p, static_cast<std::size_t>(size)) : std::span<const float>();
}

Status LlamaWeights::replaceWeights(const std::string& name, std::span<const float> values)
{
    Eigen::Index size = 0;
    float* p = find(name, size);
    if (!p) return makeError(ErrorCode::InvalidArgument, "the model holds no tensor " + name);
    if (static_cast<Eigen::Index>(values.size()) != size)
        return makeError(ErrorCode::InvalidArgument,
                         "replacement for " + name + " has " + std::to_string(values.size()) +
                             " values, the tensor " + std::to_string(size));
    std::copy(values.begin(), values.end(), p);
    return {};
}

std::uint64_t LlamaWeights::bytes() const
{
    std::uint64_t n = 0;
    for (const std::string& name : tensorNames()) n += values(name).size();
    return n * sizeof(float);
}

// --- LlamaModel ------------------------------------------------------------------------------

namespace {

// One transformer block over the rows of `x` (positions firstPosition..). Keys and values go to
// `kDst`/`vDst` (T rows) and attention reads the first firstPosition+T rows of `kAll`/`vAll`.
Status blockForward(const LlamaConfig& c, const LlamaBlockWeights& w, int block,
                    MatrixXfRowMajor& x, std::int64_t firstPosition, const RopeTable& rope,
                    Eigen::Ref<MatrixXfRowMajor> kDst, Eigen::Ref<MatrixXfRowMajor> vDst,
                    const Eigen::Ref<const MatrixXfRowMajor>& kAll,
                    const Eigen::Ref<const MatrixXfRowMajor>& vAll, ForwardProbe* probe,
                    const LinearInputHook* hook)
{
    const Eigen::Index T = x.rows();
    const std::int64_t qDim = c.heads * c.headDim;
    MatrixXfRowMajor h(T, c.dim);
    cpu::rmsNorm(x, w.attnNorm, c.rmsNormEps, h);
    if (hook) hook->apply(block, LinearGroup::AttnQkv, h);
    if (probe) probe->onLinearInput(block, LinearGroup::AttnQkv, h);

    MatrixXfRowMajor q(T, qDim);
    cpu::linear(h, w.wq, c.attentionBias ? &w.bq : nullptr, q);
    cpu::linear(h, w.wk, c.attentionBias ? &w.bk : nullptr, kDst);
    cpu::linear(h, w.wv, c.attentionBias ? &w.bv : nullptr, vDst);
    cpu::applyRope(q, c.heads, c.headDim, rope);
    cpu::applyRope(kDst, c.kvHeads, c.headDim, rope);

    MatrixXfRowMajor a(T, qDim);
    QL_TRY_STATUS(cpu::attention(q, kAll.topRows(firstPosition + T),
                                 vAll.topRows(firstPosition + T), c.heads, c.kvHeads, c.headDim,
                                 firstPosition, a));
    if (hook) hook->apply(block, LinearGroup::AttnOutput, a);
    if (probe) probe->onLinearInput(block, LinearGroup::AttnOutput, a);
    cpu::linear(a, w.wo, nullptr, h);
    x += h;

    cpu::rmsNorm(x, w.ffnNorm, c.rmsNormEps, h);
    if (hook) hook->apply(block, LinearGroup::FfnGateUp, h);
    if (probe) probe->onLinearInput(block, LinearGroup::FfnGateUp, h);
    MatrixXfRowMajor g(T, c.ffnDim), u(T, c.ffnDim);
    cpu::linear(h, w.gate, nullptr, g);
    cpu::linear(h, w.up, nullptr, u);
    cpu::swiglu(g, u, g);
    if (hook) hook->apply(block, LinearGroup::FfnDown, g);
    if (probe) probe->onLinearInput(block, LinearGroup::FfnDown, g);
    cpu::linear(g, w.down, nullptr, h);
    x += h;
    if (probe) probe->onBlockOutput(block, x);
    return {};
}

Eigen::Index argmaxFirst(const float* v, Eigen::Index n)
{
    Eigen::Index best = 0;
    for (Eigen::Index i = 1; i < n; ++i)
        if (v[i] > v[best]) best = i;
    return best;
}

}  // namespace

Result<LlamaModel> LlamaModel::create(const Model& model, const LlamaLoadOptions& options,
                                      const ProgressFn& progress)
{
    auto w = LlamaWeights::fromModel(model, options, progress);
    if (!w) return w.error();
    return LlamaModel(std::move(w).value());
}

Result<MatrixXfRowMajor> LlamaModel::embed(std::span<const TokenId> tokens) const
{
    try {
        MatrixXfRowMajor x(static_cast<Eigen::Index>(tokens.size()), config().dim);
        QL_TRY_STATUS(cpu::embeddingLookup(m_w.tokenEmbedding(), tokens, x));
        return x;
    } catch (const std::bad_alloc&) {
        return outOfMemory("for the embeddings of " + std::to_string(tokens.size()) + " tokens");
    }
}

Status LlamaModel::runBlock(int block, MatrixXfRowMajor& hidden, ForwardProbe* probe) const
{
    const LlamaConfig& c = config();
    if (block < 0 || block >= c.blocks || hidden.cols() != c.dim)
        return makeError(ErrorCode::InvalidArgument, "runBlock: no block " + std::to_string(block) +
                                                         " or hidden width " +
                                                         std::to_string(hidden.cols()));
    try {
        const RopeTable rope = makeRopeTable(c.rope, 0, hidden.rows());
        MatrixXfRowMajor k(hidden.rows(), c.kvHeads * c.headDim), v(k.rows(), k.cols());
        return blockForward(c, m_w.block(block), block, hidden, 0, rope, k, v, k, v, probe,
                            m_inputHook.get());
    } catch (const std::bad_alloc&) {
        return outOfMemory("in block " + std::to_string(block));
    }
}

void LlamaModel::head(const Eigen::Ref<const MatrixXfRowMajor>& hidden,
                      Eigen::Ref<MatrixXfRowMajor> logits) const
{
    MatrixXfRowMajor normed(hidden.rows(), hidden.cols());
    cpu::rmsNorm(hidden, m_w.outputNorm(), config().rmsNormEps, normed);
    cpu::linear(normed, m_w.outputHead(), nullptr, logits);
}

Status LlamaModel::reserve(KvCache& cache, std::int64_t length) const
{
    const LlamaConfig& c = config();
    const Eigen::Index kvDim = c.kvHeads * c.headDim;
    if (cache.m_k.size() != static_cast<std::size_t>(c.blocks) ||
        (!cache.m_k.empty() && cache.m_k[0].cols() != kvDim)) {
        if (cache.m_length != 0)
            return makeError(ErrorCode::InvalidArgument,
                             "the KV cache belongs to a model of another shape");
        cache.m_k.assign(c.blocks, MatrixXfRowMajor(0, kvDim));
        cache.m_v.assign(c.blocks, MatrixXfRowMajor(0, kvDim));
    }
    for (std::size_t b = 0; b < cache.m_k.size(); ++b) {
        const Eigen::Index have = cache.m_k[b].rows();
        if (have >= length) continue;
        const Eigen::Index rows =
            std::max<Eigen::Index>(length, std::max<Eigen::Index>(16, 2 * have));
        cache.m_k[b].conservativeResize(rows, kvDim);
        cache.m_v[b].conservativeResize(rows, kvDim);
    }
    return {};
}

Status LlamaModel::runBlocks(MatrixXfRowMajor& hidden, std::int64_t firstPosition, KvCache* cache,
                             ForwardProbe* probe, const ProgressFn& progress) const
{
    const LlamaConfig& c = config();
    const Eigen::Index T = hidden.rows();
    const RopeTable rope = makeRopeTable(c.rope, firstPosition, T);
    MatrixXfRowMajor k, v;
    if (cache) {
        QL_TRY_STATUS(reserve(*cache, firstPosition + T));
    } else {
        k.resize(T, c.kvHeads * c.headDim);
        v.resize(T, c.kvHeads * c.headDim);
    }
    for (int b = 0; b < c.blocks; ++b) {
        if (cache) {
            MatrixXfRowMajor& kc = cache->m_k[b];
            MatrixXfRowMajor& vc = cache->m_v[b];
            QL_TRY_STATUS(blockForward(
                c, m_w.block(b), b, hidden, firstPosition, rope, kc.middleRows(firstPosition, T),
                vc.middleRows(firstPosition, T), kc, vc, probe, m_inputHook.get()));
        } else {
            QL_TRY_STATUS(blockForward(c, m_w.block(b), b, hidden, 0, rope, k, v, k, v, probe,
                                       m_inputHook.get()));
        }
        if (!reportProgress(progress, double(b + 1) / double(c.blocks + 1), "forward"))
            return makeError(ErrorCode::Cancelled, "the forward pass was cancelled");
    }
    if (cache) cache->m_length = firstPosition + T;
    return {};
}

Status LlamaModel::forward(std::span<const TokenId> tokens, const PositionFn& onLogits,
                           const ProgressFn& progress, ForwardProbe* probe) const
{
    if (tokens.empty()) return makeError(ErrorCode::InvalidArgument, "forward: no tokens");
    try {
        auto x = embed(tokens);
        if (!x) return x.error();
        QL_TRY_STATUS(runBlocks(*x, 0, nullptr, probe, progress));
        const LlamaConfig& c = config();
        const Eigen::Index T = x->rows();
        constexpr Eigen::Index kChunk = 64;  // positions whose logits are held at once
        MatrixXfRowMajor logits(std::min(kChunk, T), c.vocab);
        for (Eigen::Index r0 = 0; r0 < T; r0 += kChunk) {
            const Eigen::Index rows = std::min(kChunk, T - r0);
            auto chunk = logits.topRows(rows);
            head(x->middleRows(r0, rows), chunk);
            for (Eigen::Index r = 0; r < rows; ++r)
                if (onLogits)
                    onLogits(static_cast<std::int32_t>(r0 + r),
                             std::span<const float>(chunk.row(r).data(), c.vocab));
        }
        if (!reportProgress(progress, 1.0, "forward"))
            return makeError(ErrorCode::Cancelled, "the forward pass was cancelled");
        return {};
    } catch (const std::bad_alloc&) {
        return outOfMemory("in the forward pass of " + std::to_string(tokens.size()) + " tokens");
    }
}

Result<Eigen::MatrixXf> LlamaModel::logits(std::span<const TokenId> tokens,
                                           const ProgressFn& progress, ForwardProbe* probe) const
{
    try {
        Eigen::MatrixXf out(static_cast<Eigen::Index>(tokens.size()), config().vocab);
        QL_TRY_STATUS(forward(
            tokens,
            [&](std::int32_t pos, std::span<const float> row) {
                out.row(pos) = Eigen::Map<const Eigen::RowVectorXf>(row.data(), row.size());
            },
            progress, probe));
        return out;
    } catch (const std::bad_alloc&) {
        return outOfMemory("for the logits of " + std::to_string(tokens.size()) + " tokens");
    }
}

Result<Eigen::MatrixXf> LlamaModel::decode(KvCache& cache, std::span<const TokenId> tokens,
                                           ForwardProbe* probe) const
{
    if (tokens.empty()) return makeError(ErrorCode::InvalidArgument, "decode: no tokens");
    try {
        auto x = embed(tokens);
        if (!x) return x.error();
        QL_TRY_STATUS(runBlocks(*x, cache.length(), &cache, probe, {}));
        MatrixXfRowMajor rowMajor(x->rows(), config().vocab);
        head(*x, rowMajor);
        return Eigen::MatrixXf(rowMajor);
    } catch (const std::bad_alloc&) {
        return outOfMemory("while decoding " + std::to_string(tokens.size()) + " tokens");
    }
}

Result<std::vector<TokenId>> LlamaModel::generateGreedy(std::span<const TokenId> prompt,
                                                        std::int32_t maxNewTokens, bool stopAtEos,
                                                        const ProgressFn& progress) const
{
    if (prompt.empty() || maxNewTokens < 0)
        return makeError(ErrorCode::InvalidArgument,
                         "generation needs a prompt and a non-negative token count");
    const LlamaConfig& c = config();
    std::vector<TokenId> out;
    try {
        KvCache cache;
        QL_TRY_STATUS(reserve(cache, static_cast<std::int64_t>(prompt.size()) + maxNewTokens));
        MatrixXfRowMajor last(1, c.vocab);
        std::vector<TokenId> step(prompt.begin(), prompt.end());
        while (static_cast<std::int32_t>(out.size()) < maxNewTokens) {
            auto x = embed(step);
            if (!x) return x.error();
            QL_TRY_STATUS(runBlocks(*x, cache.length(), &cache, nullptr, {}));
            head(x->bottomRows(1), last);
            const auto next = static_cast<TokenId>(argmaxFirst(last.data(), c.vocab));
            if (stopAtEos && ((c.eos >= 0 && next == c.eos) || (c.bos >= 0 && next == c.bos)))
                break;
            out.push_back(next);
            step.assign(1, next);
            if (!reportProgress(progress, double(out.size()) / maxNewTokens, "generating"))
                return makeError(ErrorCode::Cancelled, "generation was cancelled");
        }
    } catch (const std::bad_alloc&) {
        return outOfMemory("while generating");
    }
    return out;
}

}  // namespace ql
