// The CUDA Llama runner: the weights live on the device for the runner's lifetime and every op of
// the forward pass runs there, enqueued on the context's stream; the host only launches, checks
// token ids and hands logits back. The schedule mirrors LlamaModel's blockForward (llama.h):
//
//   x = embed(tokens)                                   float32 residual stream, B·T rows
//   per block:  h = rmsnorm(x)·attn_norm  (cast fused)   -> stats hook (AttnQkv)
//               qkv = h [Wq|Wk|Wv]ᵀ (+ bias)             one GEMM over the fused weight
//               rope(q), rope(k) in place; a = causal GQA attention(q, k, v)
//                                                         -> stats hook (AttnOutput)
//               x += a Woᵀ                               residual add fused as GEMM beta = 1
//               h = rmsnorm(x)·ffn_norm                  -> stats hook (FfnGateUp)
//               gu = h [Wgate|Wup]ᵀ; g = silu(gate)·up   -> stats hook (FfnDown)
//               x += g Wdownᵀ
//   logits = (rmsnorm(x)·output_norm) Woutputᵀ           in row chunks, copied back on request
//
// Precision::Float32 keeps every tensor in float32 and runs the GEMMs in float32 without TF32, so
// it matches the CPU reference to float rounding. Precision::BFloat16 stores the matrices, the
// embedding table and the activations that feed GEMMs in bf16 (round to nearest even) and
// accumulates in float32; norms, softmax, RoPE arithmetic and the residual stream stay float32.
// Attention is the fused flash kernel for bf16 (head dimension 32/64/128), else cuBLAS batched
// GEMMs with a causal softmax kernel ($QL_ATTENTION=blas|flash forces one).
#include "cuda_llama_runner.h"

#include <algorithm>
#include <cmath>
#include <new>

#include "elementwise.cuh"
#include "forward_ops.h"
#include "norm.cuh"
#include "rope.cuh"
#include "stats.cuh"

namespace ql::cuda {
namespace {

constexpr std::size_t kStagingFloats = std::size_t(8) << 20;  // 32 MiB per upload step
constexpr std::uint64_t kLogitsChunkBytes = 256ull << 20;     // logits held on the device at once

// A linear-layer input as the statistics see it (see CudaLlamaRunner::onLinearInput).
struct LinearInput {
    int block = 0;
    int site = 0;                // 0 attn_qkv, 1 attn_output, 2 ffn_gate_up, 3 ffn_down (runner.h)
    const void* data = nullptr;  // device pointer, rows × cols row-major
    std::int64_t rows = 0, cols = 0;
    DType type = DType::F32;
    cudaStream_t stream = nullptr;
    std::int64_t seqLen = 0;       // row r is position r % seqLen of sequence r / seqLen
    std::int32_t firstSample = 0;  // sequence i is calibration sample firstSample + i
};

class CudaLlamaRunner final : public ModelRunner {
public:
    static Result<std::unique_ptr<ModelRunner>> create(std::shared_ptr<CudaContext> ctx,
                                                       const LlamaWeightsView& w,
                                                       Precision precision);

    DeviceInfo device() const override { return m_ctx->info(); }
    Precision precision() const override { return m_precision; }
    const LlamaShape& shape() const override { return m_shape; }
    Status forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                   const LogitsFn& onLogits, const ProgressFn& progress,
                   std::int32_t firstSample) override;
    Status enableStats(const RunnerStatsOptions& options) override;
    Result<std::vector<ActivationStats>> takeStats() override;
    void disableStats() override;
    Status replaceWeight(const std::string& name, std::span<const float> values) override;
    std::uint64_t peakMemoryBytes() const override { return m_memory.peak; }

private:
    struct Block {
        DeviceBuffer<float> attnNorm, ffnNorm, bqkv;
        DeviceTensor wqkv, wo, wgu, wdown;
    };
    // Where a named tensor lives: a range of a device tensor (matrices, in the runner's type) or
    // of a float32 buffer (norms, biases).
    struct Slot {
        DeviceTensor* tensor = nullptr;
        DeviceBuffer<float>* vector = nullptr;
        std::size_t offset = 0, count = 0;
    };

    CudaLlamaRunner(std::shared_ptr<CudaContext> ctx, const LlamaShape& shape, Precision precision)
        : m_ctx(std::move(ctx)),
          m_shape(shape),
          m_precision(precision),
          m_type(precision == Precision::Float32 ? DType::F32 : DType::BF16),
          m_qDim(shape.heads * shape.headDim),
          m_kvDim(shape.kvHeads * shape.headDim),
          m_qkvDim(m_qDim + 2 * m_kvDim)
    {
    }

    Status allocateWeights();
    Status upload(const Slot& slot, std::span<const float> values);
    Result<Slot> find(const std::string& name);
    Status ensureActivations(std::int64_t rows);
    Status ensureRope(std::int64_t seqLen);
    Status runHead(std::int64_t rows, std::int64_t seqLen, const LogitsFn& onLogits);

    // The statistics hook. Every linear-layer input passes here on the device, in execution
    // order, before the GEMMs that read it; `in.data` stays valid until the next op on
    // `in.stream`, and DeviceStats enqueues its work on that stream, so nothing waits here.
    // enableStats creates one accumulator per probe (block * 4 + site); takeStats downloads them.
    Status onLinearInput(const LinearInput& in)
    {
        if (!m_statsEnabled) return {};
        cuda::DeviceStats& stats = m_stats[std::size_t(in.block) * 4 + std::size_t(in.site)];
        const std::int64_t sequences = in.rows / in.seqLen;
        if (in.type == DType::BF16)
            return stats.add(static_cast<const __nv_bfloat16*>(in.data), in.rows, sequences,
                             in.firstSample);
        return stats.add(static_cast<const float*>(in.data), in.rows, sequences, in.firstSample);
    }
    void releaseStats();
    void accountStatsMemory();

    // Declared first: destroyed after every buffer below.
    std::shared_ptr<CudaContext> m_ctx;
    MemoryTracker m_memory;

    LlamaShape m_shape;
    Precision m_precision;
    DType m_type;
    std::int64_t m_qDim, m_kvDim, m_qkvDim;
    bool m_statsEnabled = false;
    std::vector<DeviceStats> m_stats;  // blocks * 4 while enabled
    std::uint64_t m_statsBytes = 0;    // their device memory, counted in m_memory

    DeviceTensor m_embd, m_output;  // m_output empty when the head is tied to m_embd
    DeviceBuffer<float> m_outputNorm;
    std::vector<Block> m_blocks;
    DeviceBuffer<float> m_staging;

    std::int64_t m_rows = 0;  // rows the activation buffers hold
    DeviceBuffer<float> m_x;
    DeviceTensor m_h, m_qkv, m_attn, m_gu, m_g;
    DeviceBuffer<std::int32_t> m_ids;
    std::int64_t m_logitRows = 0;
    DeviceBuffer<float> m_logits;
    PinnedBuffer<float> m_hostLogits;
    std::int64_t m_ropeLength = 0;
    DeviceBuffer<float> m_ropeCos, m_ropeSin;
    AttentionWorkspace m_attention{&m_memory};
};

Error shapeError(const std::string& name, std::size_t have, std::size_t want)
{
    return makeError(ErrorCode::InvalidArgument, "weights view: " + name + " has " +
                                                     std::to_string(have) + " values, expected " +
                                                     std::to_string(want));
}

Result<std::unique_ptr<ModelRunner>> CudaLlamaRunner::create(std::shared_ptr<CudaContext> ctx,
                                                             const LlamaWeightsView& w,
                                                             Precision precision)
{
    const LlamaShape& s = w.shape;
    if (s.blocks <= 0 || s.dim <= 0 || s.ffnDim <= 0 || s.heads <= 0 || s.kvHeads <= 0 ||
        s.headDim <= 0 || s.vocab <= 0 || s.heads % s.kvHeads != 0 || s.headDim % 2 != 0 ||
        std::int64_t(w.blocks.size()) != s.blocks ||
        std::int64_t(s.ropeInvFreq.size()) != s.headDim / 2)
        return makeError(ErrorCode::InvalidArgument, "weights view: inconsistent model shape");
    QL_TRY_STATUS(ctx->activate());
    std::unique_ptr<CudaLlamaRunner> r(new CudaLlamaRunner(std::move(ctx), s, precision));
    try {
        QL_TRY_STATUS(r->allocateWeights());
        // Every tensor through the same name lookup replaceWeight uses.
        auto put = [&](const std::string& name, std::span<const float> values) -> Status {
            auto slot = r->find(name);
            if (!slot) return slot.error();
            if (values.size() != slot->count) return shapeError(name, values.size(), slot->count);
            return r->upload(*slot, values);
        };
        QL_TRY_STATUS(put("token_embd.weight", w.tokenEmbd));
        QL_TRY_STATUS(put("output_norm.weight", w.outputNorm));
        if (!s.tiedOutput) QL_TRY_STATUS(put("output.weight", w.output));
        for (std::int64_t b = 0; b < s.blocks; ++b) {
            const LlamaBlockView& v = w.blocks[std::size_t(b)];
            const std::string p = "blk." + std::to_string(b) + ".";
            QL_TRY_STATUS(put(p + "attn_norm.weight", v.attnNorm));
            QL_TRY_STATUS(put(p + "attn_q.weight", v.wq));
            QL_TRY_STATUS(put(p + "attn_k.weight", v.wk));
            QL_TRY_STATUS(put(p + "attn_v.weight", v.wv));
            QL_TRY_STATUS(put(p + "attn_output.weight", v.wo));
            if (s.attentionBias) {
                QL_TRY_STATUS(put(p + "attn_q.bias", v.bq));
                QL_TRY_STATUS(put(p + "attn_k.bias", v.bk));
                QL_TRY_STATUS(put(p + "attn_v.bias", v.bv));
            }
            QL_TRY_STATUS(put(p + "ffn_norm.weight", v.ffnNorm));
            QL_TRY_STATUS(put(p + "ffn_gate.weight", v.gate));
            QL_TRY_STATUS(put(p + "ffn_up.weight", v.up));
            QL_TRY_STATUS(put(p + "ffn_down.weight", v.down));
        }
        QL_TRY_STATUS(r->m_ctx->synchronize());
        r->m_staging.release();
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory while uploading the weights");
    }
    return std::unique_ptr<ModelRunner>(std::move(r));
}

Status CudaLlamaRunner::allocateWeights()
{
    const LlamaShape& s = m_shape;
    auto tensor = [&](DeviceTensor& t, DType type, std::int64_t count,
                      const std::string& what) -> Status {
        auto a = DeviceTensor::allocate(type, std::size_t(count), &m_memory, what);
        if (!a) return a.error();
        t = std::move(a).value();
        return {};
    };
    auto vector = [&](DeviceBuffer<float>& v, std::int64_t count,
                      const std::string& what) -> Status {
        auto a = DeviceBuffer<float>::allocate(std::size_t(count), &m_memory, what);
        if (!a) return a.error();
        v = std::move(a).value();
        return {};
    };
    QL_TRY_STATUS(tensor(m_embd, m_type, s.vocab * s.dim, "token_embd.weight"));
    if (!s.tiedOutput) QL_TRY_STATUS(tensor(m_output, m_type, s.vocab * s.dim, "output.weight"));
    QL_TRY_STATUS(vector(m_outputNorm, s.dim, "output_norm.weight"));
    m_blocks.resize(std::size_t(s.blocks));
    for (std::int64_t b = 0; b < s.blocks; ++b) {
        Block& blk = m_blocks[std::size_t(b)];
        const std::string p = "blk." + std::to_string(b) + ".";
        QL_TRY_STATUS(vector(blk.attnNorm, s.dim, p + "attn_norm.weight"));
        QL_TRY_STATUS(vector(blk.ffnNorm, s.dim, p + "ffn_norm.weight"));
        if (s.attentionBias) QL_TRY_STATUS(vector(blk.bqkv, m_qkvDim, p + "attn_{q,k,v}.bias"));
        QL_TRY_STATUS(tensor(blk.wqkv, m_type, m_qkvDim * s.dim, p + "attn_{q,k,v}.weight"));
        QL_TRY_STATUS(tensor(blk.wo, m_type, s.dim * m_qDim, p + "attn_output.weight"));
        QL_TRY_STATUS(tensor(blk.wgu, m_type, 2 * s.ffnDim * s.dim, p + "ffn_{gate,up}.weight"));
        QL_TRY_STATUS(tensor(blk.wdown, m_type, s.dim * s.ffnDim, p + "ffn_down.weight"));
    }
    return {};
}

Result<CudaLlamaRunner::Slot> CudaLlamaRunner::find(const std::string& name)
{
    const LlamaShape& s = m_shape;
    const std::size_t dim = std::size_t(s.dim), q = std::size_t(m_qDim), kv = std::size_t(m_kvDim),
                      ffn = std::size_t(s.ffnDim);
    auto matrix = [](DeviceTensor& t, std::size_t offset, std::size_t count) {
        Slot slot;
        slot.tensor = &t;
        slot.offset = offset;
        slot.count = count;
        return slot;
    };
    auto vec = [](DeviceBuffer<float>& v, std::size_t offset, std::size_t count) {
        Slot slot;
        slot.vector = &v;
        slot.offset = offset;
        slot.count = count;
        return slot;
    };
    if (name == "token_embd.weight") return matrix(m_embd, 0, std::size_t(s.vocab) * dim);
    if (name == "output_norm.weight") return vec(m_outputNorm, 0, dim);
    if (name == "output.weight" && !s.tiedOutput)
        return matrix(m_output, 0, std::size_t(s.vocab) * dim);
    if (name.rfind("blk.", 0) == 0) {
        const std::size_t dot = name.find('.', 4);
        if (dot != std::string::npos && dot > 4) {
            const std::string index = name.substr(4, dot - 4);
            const std::string role = name.substr(dot + 1);
            if (index.find_first_not_of("0123456789") == std::string::npos && index.size() < 9) {
                const std::int64_t b = std::stoll(index);
                if (b < s.blocks) {
                    Block& blk = m_blocks[std::size_t(b)];
                    if (role == "attn_norm.weight") return vec(blk.attnNorm, 0, dim);
                    if (role == "ffn_norm.weight") return vec(blk.ffnNorm, 0, dim);
                    if (role == "attn_q.weight") return matrix(blk.wqkv, 0, q * dim);
                    if (role == "attn_k.weight") return matrix(blk.wqkv, q * dim, kv * dim);
                    if (role == "attn_v.weight") return matrix(blk.wqkv, (q + kv) * dim, kv * dim);
                    if (role == "attn_output.weight") return matrix(blk.wo, 0, dim * q);
                    if (role == "ffn_gate.weight") return matrix(blk.wgu, 0, ffn * dim);
                    if (role == "ffn_up.weight") return matrix(blk.wgu, ffn * dim, ffn * dim);
                    if (role == "ffn_down.weight") return matrix(blk.wdown, 0, dim * ffn);
                    if (s.attentionBias) {
                        if (role == "attn_q.bias") return vec(blk.bqkv, 0, q);
                        if (role == "attn_k.bias") return vec(blk.bqkv, q, kv);
                        if (role == "attn_v.bias") return vec(blk.bqkv, q + kv, kv);
                    }
                }
            }
        }
    }
    return makeError(
        ErrorCode::InvalidArgument,
        "the GPU model holds no tensor " + name +
            (name == "output.weight" ? " (the head is tied to token_embd.weight)" : ""));
}

Status CudaLlamaRunner::upload(const Slot& slot, std::span<const float> values)
{
    cudaStream_t stream = m_ctx->stream();
    if (slot.vector) {
        QL_CUDA_TRY(cudaMemcpyAsync(slot.vector->data() + slot.offset, values.data(),
                                    values.size() * sizeof(float), cudaMemcpyHostToDevice, stream));
        return {};
    }
    DeviceTensor& t = *slot.tensor;
    if (t.type() == DType::F32) {
        QL_CUDA_TRY(cudaMemcpyAsync(t.at(slot.offset), values.data(), values.size() * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
        return {};
    }
    if (m_staging.empty()) {
        auto st =
            DeviceBuffer<float>::allocate(kStagingFloats, &m_memory, "the upload staging buffer");
        if (!st) return st.error();
        m_staging = std::move(st).value();
    }
    // Stream order keeps the next copy into the staging buffer behind the previous conversion.
    for (std::size_t i = 0; i < values.size(); i += kStagingFloats) {
        const std::size_t n = std::min(kStagingFloats, values.size() - i);
        QL_CUDA_TRY(cudaMemcpyAsync(m_staging.data(), values.data() + i, n * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
        launchFromF32(m_staging.data(), n, t.at(slot.offset + i), t.type(), stream);
        QL_TRY_STATUS(CudaContext::checkLaunch("weight conversion"));
    }
    return {};
}

Status CudaLlamaRunner::replaceWeight(const std::string& name, std::span<const float> values)
{
    QL_TRY_STATUS(m_ctx->activate());
    auto slot = find(name);
    if (!slot) return slot.error();
    if (values.size() != slot->count)
        return makeError(ErrorCode::InvalidArgument,
                         "replacement for " + name + " has " + std::to_string(values.size()) +
                             " values, the tensor " + std::to_string(slot->count));
    QL_TRY_STATUS(upload(*slot, values));
    QL_TRY_STATUS(m_ctx->synchronize());
    m_staging.release();
    return {};
}

Status CudaLlamaRunner::ensureActivations(std::int64_t rows)
{
    if (rows <= m_rows) return {};
    // Free the old set first: a longer batch should not need both at once.
    m_x.release();
    m_h.release();
    m_qkv.release();
    m_attn.release();
    m_gu.release();
    m_g.release();
    m_ids.release();
    m_logits.release();
    m_attention.release();
    m_rows = 0;
    const LlamaShape& s = m_shape;
    auto tensor = [&](DeviceTensor& t, DType type, std::int64_t cols, const char* what) -> Status {
        auto a = DeviceTensor::allocate(
            type, std::size_t(rows * cols), &m_memory,
            std::string(what) + " activations of " + std::to_string(rows) + " tokens");
        if (!a) return a.error();
        t = std::move(a).value();
        return {};
    };
    auto x =
        DeviceBuffer<float>::allocate(std::size_t(rows * s.dim), &m_memory,
                                      "the residual stream of " + std::to_string(rows) + " tokens");
    if (!x) return x.error();
    m_x = std::move(x).value();
    QL_TRY_STATUS(tensor(m_h, m_type, s.dim, "normed"));
    QL_TRY_STATUS(tensor(m_qkv, m_type, m_qkvDim, "q/k/v"));
    QL_TRY_STATUS(tensor(m_attn, m_type, m_qDim, "attention output"));
    QL_TRY_STATUS(tensor(m_gu, m_type, 2 * s.ffnDim, "gate/up"));
    QL_TRY_STATUS(tensor(m_g, m_type, s.ffnDim, "SwiGLU"));
    auto ids = DeviceBuffer<std::int32_t>::allocate(std::size_t(rows), &m_memory, "token ids");
    if (!ids) return ids.error();
    m_ids = std::move(ids).value();
    m_logitRows = std::clamp<std::int64_t>(
        std::int64_t(kLogitsChunkBytes / (4 * std::uint64_t(s.vocab))), 1, rows);
    auto logits =
        DeviceBuffer<float>::allocate(std::size_t(m_logitRows * s.vocab), &m_memory, "logits");
    if (!logits) return logits.error();
    m_logits = std::move(logits).value();
    m_hostLogits = PinnedBuffer<float>();
    m_rows = rows;
    return {};
}

Status CudaLlamaRunner::ensureRope(std::int64_t seqLen)
{
    if (seqLen <= m_ropeLength) return {};
    // As makeRopeTable: angles and cos/sin in double, magnitude applied, then rounded to float.
    const std::size_t half = m_shape.ropeInvFreq.size();
    std::vector<float> c(std::size_t(seqLen) * half), s(c.size());
    for (std::int64_t t = 0; t < seqLen; ++t)
        for (std::size_t i = 0; i < half; ++i) {
            const double angle = static_cast<double>(t) * m_shape.ropeInvFreq[i];
            c[std::size_t(t) * half + i] =
                static_cast<float>(std::cos(angle) * m_shape.ropeMagnitude);
            s[std::size_t(t) * half + i] =
                static_cast<float>(std::sin(angle) * m_shape.ropeMagnitude);
        }
    m_ropeCos.release();
    m_ropeSin.release();
    m_ropeLength = 0;
    auto dc = DeviceBuffer<float>::allocate(c.size(), &m_memory, "the RoPE table");
    if (!dc) return dc.error();
    auto ds = DeviceBuffer<float>::allocate(s.size(), &m_memory, "the RoPE table");
    if (!ds) return ds.error();
    m_ropeCos = std::move(dc).value();
    m_ropeSin = std::move(ds).value();
    // Complete before return: the host vectors go out of scope.
    QL_TRY_STATUS(m_ctx->copyToDevice(m_ropeCos.data(), c.data(), c.size() * sizeof(float)));
    QL_TRY_STATUS(m_ctx->copyToDevice(m_ropeSin.data(), s.data(), s.size() * sizeof(float)));
    m_ropeLength = seqLen;
    return {};
}

Status CudaLlamaRunner::forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                                const LogitsFn& onLogits, const ProgressFn& progress,
                                std::int32_t firstSample)
{
    const LlamaShape& s = m_shape;
    const auto rows = static_cast<std::int64_t>(tokens.size());
    if (batch <= 0 || rows == 0 || rows % batch != 0)
        return makeError(ErrorCode::InvalidArgument,
                         "forward: " + std::to_string(rows) + " tokens do not make " +
                             std::to_string(batch) + " sequences of equal length");
    const std::int64_t T = rows / batch;
    for (std::size_t t = 0; t < tokens.size(); ++t)
        if (tokens[t] < 0 || tokens[t] >= s.vocab)
            return makeError(ErrorCode::InvalidArgument,
                             "token id " + std::to_string(tokens[t]) + " at position " +
                                 std::to_string(std::int64_t(t) % T) +
                                 " is outside the vocabulary of " + std::to_string(s.vocab));
    try {
        QL_TRY_STATUS(m_ctx->activate());
        QL_TRY_STATUS(ensureActivations(rows));
        QL_TRY_STATUS(ensureRope(T));
        cudaStream_t stream = m_ctx->stream();
        QL_CUDA_TRY(cudaMemcpyAsync(m_ids.data(), tokens.data(),
                                    tokens.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                                    stream));
        launchEmbedding(m_embd.data(), m_embd.type(), m_ids.data(), rows, s.dim, m_x.data(),
                        stream);
        QL_TRY_STATUS(CudaContext::checkLaunch("embedding lookup"));

        AttentionShape as;
        as.batch = batch;
        as.seqLen = T;
        as.heads = s.heads;
        as.kvHeads = s.kvHeads;
        as.headDim = s.headDim;
        as.ld = m_qkvDim;
        as.qOffset = 0;
        as.kOffset = m_qDim;
        as.vOffset = m_qDim + m_kvDim;
        as.ldOut = m_qDim;
        const AttentionKernel kernel = attentionKernelFromEnvironment();
        LinearInput probe;
        probe.rows = rows;
        probe.type = m_type;
        probe.stream = stream;
        probe.seqLen = T;
        probe.firstSample = firstSample;
        auto observe = [&](int block, int site, const void* data, std::int64_t cols) {
            probe.block = block;
            probe.site = site;
            probe.data = data;
            probe.cols = cols;
            return onLinearInput(probe);
        };

        for (std::int64_t b = 0; b < s.blocks; ++b) {
            const Block& w = m_blocks[std::size_t(b)];
            const int bi = int(b);
            launchRmsNorm(m_x.data(), rows, s.dim, w.attnNorm.data(), s.rmsNormEps, m_h.data(),
                          m_type, stream);
            QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
            QL_TRY_STATUS(observe(bi, 0, m_h.data(), s.dim));
            QL_TRY_STATUS(linear(*m_ctx, m_h.data(), m_type, s.dim, w.wqkv.data(), rows, s.dim,
                                 m_qkvDim, m_qkv.data(), m_type, m_qkvDim));
            if (s.attentionBias) {
                launchAddBias(m_qkv.data(), m_type, rows, m_qkvDim, m_qkvDim, w.bqkv.data(),
                              stream);
                QL_TRY_STATUS(CudaContext::checkLaunch("bias add"));
            }
            launchRope(m_qkv.data(), m_type, rows, m_qkvDim, int(s.heads), int(s.headDim),
                       m_ropeCos.data(), m_ropeSin.data(), T, s.ropeHalfSplit, stream);
            launchRope(m_qkv.at(std::size_t(m_qDim)), m_type, rows, m_qkvDim, int(s.kvHeads),
                       int(s.headDim), m_ropeCos.data(), m_ropeSin.data(), T, s.ropeHalfSplit,
                       stream);
            QL_TRY_STATUS(CudaContext::checkLaunch("rope"));
            QL_TRY_STATUS(causalAttention(*m_ctx, m_attention, as, m_qkv.data(), m_type,
                                          m_attn.data(), kernel));
            QL_TRY_STATUS(observe(bi, 1, m_attn.data(), m_qDim));
            QL_TRY_STATUS(linear(*m_ctx, m_attn.data(), m_type, m_qDim, w.wo.data(), rows, m_qDim,
                                 s.dim, m_x.data(), DType::F32, s.dim, 1.0f));

            launchRmsNorm(m_x.data(), rows, s.dim, w.ffnNorm.data(), s.rmsNormEps, m_h.data(),
                          m_type, stream);
            QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
            QL_TRY_STATUS(observe(bi, 2, m_h.data(), s.dim));
            QL_TRY_STATUS(linear(*m_ctx, m_h.data(), m_type, s.dim, w.wgu.data(), rows, s.dim,
                                 2 * s.ffnDim, m_gu.data(), m_type, 2 * s.ffnDim));
            launchSwiglu(m_gu.data(), m_type, rows, s.ffnDim, 2 * s.ffnDim, s.ffnDim, m_g.data(),
                         m_type, stream);
            QL_TRY_STATUS(CudaContext::checkLaunch("swiglu"));
            QL_TRY_STATUS(observe(bi, 3, m_g.data(), s.ffnDim));
            QL_TRY_STATUS(linear(*m_ctx, m_g.data(), m_type, s.ffnDim, w.wdown.data(), rows,
                                 s.ffnDim, s.dim, m_x.data(), DType::F32, s.dim, 1.0f));
            if (!reportProgress(progress, double(b + 1) / double(s.blocks + 1), "forward")) {
                QL_TRY_STATUS(m_ctx->synchronize());
                return makeError(ErrorCode::Cancelled, "the forward pass was cancelled");
            }
        }
        QL_TRY_STATUS(runHead(rows, T, onLogits));
        QL_TRY_STATUS(m_ctx->synchronize());
        if (m_statsEnabled) accountStatsMemory();
        if (!reportProgress(progress, 1.0, "forward"))
            return makeError(ErrorCode::Cancelled, "the forward pass was cancelled");
        return {};
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory in the GPU forward pass");
    }
}

Status CudaLlamaRunner::enableStats(const RunnerStatsOptions& options)
{
    QL_TRY_STATUS(m_ctx->activate());
    releaseStats();
    const std::int64_t widths[4] = {m_shape.dim, m_qDim, m_shape.dim, m_shape.ffnDim};
    try {
        std::vector<DeviceStats> stats;
        stats.reserve(std::size_t(m_shape.blocks) * 4);
        std::uint64_t bytes = 0;
        for (std::int64_t b = 0; b < m_shape.blocks; ++b)
            for (std::int64_t width : widths) {
                auto s = DeviceStats::create(std::int32_t(width), options, m_ctx->stream(),
                                             m_ctx->blas());
                if (!s) {
                    if (s.error().code == ErrorCode::OutOfMemory)
                        return makeError(ErrorCode::OutOfMemory,
                                         "out of GPU memory for the activation statistics of " +
                                             std::to_string(m_shape.blocks * 4) + " probes (" +
                                             formatGiB(bytes) +
                                             " allocated when it ran out): " + s.error().message);
                    return s.error();
                }
                bytes += s->deviceBytes();
                stats.push_back(std::move(s).value());
            }
        m_stats = std::move(stats);
        m_statsBytes = bytes;
        m_memory.add(bytes);
        m_statsEnabled = true;
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory for the statistics");
    }
    return {};
}

Result<std::vector<ActivationStats>> CudaLlamaRunner::takeStats()
{
    if (!m_statsEnabled)
        return makeError(ErrorCode::InvalidArgument, "takeStats: statistics are not enabled");
    QL_TRY_STATUS(m_ctx->activate());
    try {
        std::vector<ActivationStats> out;
        out.reserve(m_stats.size());
        for (const DeviceStats& s : m_stats) {
            auto host = s.download();  // waits for the stream
            if (!host) return host.error();
            out.push_back(std::move(host).value());
        }
        for (DeviceStats& s : m_stats) QL_TRY_STATUS(s.reset());
        return out;
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory for the statistics");
    }
}

void CudaLlamaRunner::disableStats()
{
    if (m_ctx->activate()) releaseStats();
}

// The statistics' scratch grows with the rows of a forward: count what they hold now.
void CudaLlamaRunner::accountStatsMemory()
{
    std::uint64_t bytes = 0;
    for (const DeviceStats& s : m_stats) bytes += s.deviceBytes();
    m_memory.remove(m_statsBytes);
    m_memory.add(bytes);
    m_statsBytes = bytes;
}

void CudaLlamaRunner::releaseStats()
{
    // Work still queued on the stream may read the accumulators.
    (void)m_ctx->synchronize();
    m_stats.clear();
    m_memory.remove(m_statsBytes);
    m_statsBytes = 0;
    m_statsEnabled = false;
}

Status CudaLlamaRunner::runHead(std::int64_t rows, std::int64_t seqLen, const LogitsFn& onLogits)
{
    const LlamaShape& s = m_shape;
    cudaStream_t stream = m_ctx->stream();
    const DeviceTensor& head = s.tiedOutput ? m_embd : m_output;
    launchRmsNorm(m_x.data(), rows, s.dim, m_outputNorm.data(), s.rmsNormEps, m_h.data(), m_type,
                  stream);
    QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
    if (onLogits && m_hostLogits.size() < m_logits.size()) {
        auto p = PinnedBuffer<float>::allocate(m_logits.size());
        if (!p) return p.error();
        m_hostLogits = std::move(p).value();
    }
    const std::size_t vocab = std::size_t(s.vocab);
    for (std::int64_t r0 = 0; r0 < rows; r0 += m_logitRows) {
        const std::int64_t n = std::min(m_logitRows, rows - r0);
        QL_TRY_STATUS(linear(*m_ctx, m_h.at(std::size_t(r0 * s.dim)), m_type, s.dim, head.data(), n,
                             s.dim, s.vocab, m_logits.data(), DType::F32, s.vocab));
        if (!onLogits) continue;
        QL_CUDA_TRY(cudaMemcpyAsync(m_hostLogits.data(), m_logits.data(),
                                    std::size_t(n) * vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                    stream));
        QL_CUDA_TRY(cudaStreamSynchronize(stream));
        for (std::int64_t r = 0; r < n; ++r)
            onLogits((r0 + r) / seqLen, static_cast<std::int32_t>((r0 + r) % seqLen),
                     std::span<const float>(m_hostLogits.data() + std::size_t(r) * vocab, vocab));
    }
    return {};
}

}  // namespace

Result<std::unique_ptr<ModelRunner>> createCudaLlamaRunner(std::shared_ptr<CudaContext> ctx,
                                                           const LlamaWeightsView& weights,
                                                           Precision precision)
{
    return CudaLlamaRunner::create(std::move(ctx), weights, precision);
}

}  // namespace ql::cuda
