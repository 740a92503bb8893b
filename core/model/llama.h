// The Llama family (llama, mistral, qwen2) on the CPU: weights prepared for compute, the forward
// pass, incremental decoding with a KV cache, greedy generation. This is the reference a GPU
// backend is checked against and the place calibration hooks into (ForwardProbe).
//
// LlamaWeights decodes every tensor of a ql::Model to float32 once; the Model may be closed
// afterwards. A WeightOverride can substitute any tensor's values (evaluating a quantized layout
// means swapping in the dequantized quantized weights), and replaceWeights() swaps one later.
//
// One forward step, per block b (x is T × dim, one row per token):
//   h = rmsnorm(x) · attn_norm                       -> probe (b, AttnQkv, h)
//   q, k, v = h Wqᵀ (+bq), h Wkᵀ (+bk), h Wvᵀ (+bv);  rope(q), rope(k)
//   a = causal grouped-query attention(q, k, v)      -> probe (b, AttnOutput, a)
//   x = x + a Woᵀ
//   h = rmsnorm(x) · ffn_norm                        -> probe (b, FfnGateUp, h)
//   g = silu(h Wgateᵀ) * (h Wupᵀ)                    -> probe (b, FfnDown, g)
//   x = x + g Wdownᵀ                                 -> probe onBlockOutput(b, x)
// then logits = (rmsnorm(x) · output_norm) Woutputᵀ (token_embd when the head is tied).
//
// RoPE convention follows the file: llama2.c checkpoints and GGUF llama/mistral rotate adjacent
// pairs (llama.cpp's converter permutes q/k rows of Hugging Face checkpoints into that order);
// Hugging Face safetensors and GGUF qwen2 rotate halves.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "compute/cpu_ops.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

bool llamaArchitectureSupported(const std::string& architecture);
// The RoPE pairing a model of this format and architecture was written with.
RopeStyle ropeStyleFor(ModelFormat format, const std::string& architecture);

struct LlamaConfig {
    std::string architecture;
    std::int64_t blocks = 0, dim = 0, ffnDim = 0, heads = 0, kvHeads = 0, headDim = 0, vocab = 0;
    std::int64_t contextLength = 0;  // from the file, informative: longer inputs are not refused
    float rmsNormEps = 1e-5f;
    RopeFrequencies rope;
    bool tiedOutput = false;
    bool attentionBias = false;
    TokenId bos = -1, eos = -1;         // from tokenizer.ggml.{bos,eos}_token_id; -1 when absent
    std::vector<std::string> warnings;  // e.g. an approximated RoPE scaling
};

// Returns replacement float32 values for `tensor` (row-major, its full element count), or
// std::nullopt to use the stored ones; an error aborts the load.
using WeightOverride =
    std::function<Result<std::optional<std::vector<float>>>(const TensorInfo& tensor)>;

struct LlamaLoadOptions {
    WeightOverride override;
    std::optional<RopeStyle> ropeStyle;  // force a convention instead of the format's
};

struct LlamaBlockWeights {
    Eigen::VectorXf attnNorm, ffnNorm;
    MatrixXfRowMajor wq, wk, wv, wo;  // {out, in}
    Eigen::VectorXf bq, bk, bv;       // empty without attention bias
    MatrixXfRowMajor gate, up, down;  // ffn_gate, ffn_up: {ffn, dim}; ffn_down: {dim, ffn}
};

class LlamaWeights {
public:
    static Result<LlamaWeights> fromModel(const Model& model, const LlamaLoadOptions& options = {},
                                          const ProgressFn& progress = {});

    LlamaWeights(LlamaWeights&&) noexcept = default;
    LlamaWeights& operator=(LlamaWeights&&) noexcept = default;
    LlamaWeights(const LlamaWeights&) = delete;
    LlamaWeights& operator=(const LlamaWeights&) = delete;

    const LlamaConfig& config() const { return m_config; }
    const MatrixXfRowMajor& tokenEmbedding() const { return m_tokenEmbd; }
    const MatrixXfRowMajor& outputHead() const
    {
        return m_config.tiedOutput ? m_tokenEmbd : m_output;
    }
    const Eigen::VectorXf& outputNorm() const { return m_outputNorm; }
    const LlamaBlockWeights& block(std::int64_t b) const { return m_blocks[b]; }

    // Canonical GGUF names of the held tensors ("token_embd.weight", "blk.0.attn_q.weight", ...).
    std::vector<std::string> tensorNames() const;
    // The values of a held tensor, row-major; an empty span for an unknown name.
    std::span<const float> values(const std::string& name) const;
    // Overwrite a held tensor (same element count), e.g. with its quantized-then-dequantized form.
    // With a tied head, token_embd.weight is the embedding and the head at once.
    Status replaceWeights(const std::string& name, std::span<const float> values);
    std::uint64_t bytes() const;  // float32 bytes held

private:
    LlamaWeights() = default;
    float* find(const std::string& name, Eigen::Index& size);

    LlamaConfig m_config;
    MatrixXfRowMajor m_tokenEmbd, m_output;
    Eigen::VectorXf m_outputNorm;
    std::vector<LlamaBlockWeights> m_blocks;
};

// Which linear layers read a probed activation: q/k/v share the attention-norm output, gate/up the
// ffn-norm output (numbered as calib's ProbeSite).
enum class LinearGroup { AttnQkv, AttnOutput, FfnGateUp, FfnDown };
const char* linearGroupName(LinearGroup group);  // "attn_qkv", "attn_output", ...

// Observes live activations of a forward pass, on the calling thread, in execution order. `x` is
// tokens × in_features exactly as the linear layers of `group` multiply it, and is only valid
// during the call. Rows are the tokens of the call: all of them in logits()/forward(), the new
// ones in decode().
class ForwardProbe {
public:
    virtual ~ForwardProbe() = default;
    virtual void onLinearInput(int block, LinearGroup group,
                               const Eigen::Ref<const MatrixXfRowMajor>& x) = 0;
    // The residual stream after block `block` (tokens × dim).
    virtual void onBlockOutput(int block, const Eigen::Ref<const MatrixXfRowMajor>& hidden) {}
};

// Rewrites the input of a group of linear layers in place, before a probe sees it and the layers
// multiply it (W8A8 simulation rounds it to int8, quant/w8a8.h). Called from const forward passes,
// possibly on several threads at once, so it must not change shared state.
class LinearInputHook {
public:
    virtual ~LinearInputHook() = default;
    virtual void apply(int block, LinearGroup group, Eigen::Ref<MatrixXfRowMajor> x) const = 0;
};

// Keys (after RoPE) and values of every block for the positions decoded so far.
class KvCache {
public:
    std::int64_t length() const { return m_length; }
    void clear() { m_length = 0; }

private:
    friend class LlamaModel;
    std::vector<MatrixXfRowMajor> m_k, m_v;  // per block: capacity × kvHeads·headDim
    std::int64_t m_length = 0;
};

// The forward pass. Const members do not modify the model and may run concurrently (each call
// keeps its own activations); OpenMP parallelises inside a call.
class LlamaModel {
public:
    // Receives the logits of one position (vocab floats, valid during the call), in order.
    using PositionFn = std::function<void(std::int32_t position, std::span<const float> logits)>;

    explicit LlamaModel(LlamaWeights weights) : m_w(std::move(weights)) {}
    static Result<LlamaModel> create(const Model& model, const LlamaLoadOptions& options = {},
                                     const ProgressFn& progress = {});

    const LlamaConfig& config() const { return m_w.config(); }
    const LlamaWeights& weights() const { return m_w; }
    LlamaWeights& weights() { return m_w; }

    // An optional rewrite of every linear layer's input (null: none, the default path).
    void setLinearInputHook(std::shared_ptr<const LinearInputHook> hook)
    {
        m_inputHook = std::move(hook);
    }
    const LinearInputHook* linearInputHook() const { return m_inputHook.get(); }

    // Full causal forward of one sequence at positions 0..T-1: T × vocab logits.
    Result<Eigen::MatrixXf> logits(std::span<const TokenId> tokens, const ProgressFn& progress = {},
                                   ForwardProbe* probe = nullptr) const;
    // The same, handing each position's logits to `onLogits` instead of storing them all.
    Status forward(std::span<const TokenId> tokens, const PositionFn& onLogits,
                   const ProgressFn& progress = {}, ForwardProbe* probe = nullptr) const;

    // Incremental decoding: runs `tokens` at positions cache.length().. (appending their keys and
    // values to the cache) and returns their logits, tokens.size() × vocab.
    Result<Eigen::MatrixXf> decode(KvCache& cache, std::span<const TokenId> tokens,
                                   ForwardProbe* probe = nullptr) const;

    // Greedy (argmax, first index on ties) continuation of `prompt`, at most maxNewTokens tokens.
    // With stopAtEos, generation ends before EOS, or before BOS (a new document: llama2.c's
    // convention); the stop token is not returned.
    Result<std::vector<TokenId>> generateGreedy(std::span<const TokenId> prompt,
                                                std::int32_t maxNewTokens, bool stopAtEos,
                                                const ProgressFn& progress = {}) const;

    // Building blocks for layer-by-layer work (true-sequential GPTQ) on one whole sequence at
    // positions 0..T-1: the embeddings of `tokens`, one block applied in place to `hidden`
    // (T × dim), and the final norm + output head (logits: T × vocab).
    Result<MatrixXfRowMajor> embed(std::span<const TokenId> tokens) const;
    Status runBlock(int block, MatrixXfRowMajor& hidden, ForwardProbe* probe = nullptr) const;
    void head(const Eigen::Ref<const MatrixXfRowMajor>& hidden,
              Eigen::Ref<MatrixXfRowMajor> logits) const;

private:
    Status runBlocks(MatrixXfRowMajor& hidden, std::int64_t firstPosition, KvCache* cache,
                     ForwardProbe* probe, const ProgressFn& progress) const;
    Status reserve(KvCache& cache, std::int64_t length) const;

    LlamaWeights m_w;
    std::shared_ptr<const LinearInputHook> m_inputHook;
};

}  // namespace ql
