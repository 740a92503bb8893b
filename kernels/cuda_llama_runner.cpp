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
#include <atomic>
#include <cmath>
#include <map>
#include <new>
#include <optional>
#include <system_error>
#include <thread>

#include "elementwise.cuh"
#include "forward_ops.h"
#include "norm.cuh"
#include "rope.cuh"
#include "stats.cuh"

namespace ql::cuda {
namespace {

constexpr std::size_t kStagingFloats = std::size_t(8) << 20;  // 32 MiB per upload step
constexpr std::size_t kDownloadThreads = 8;                   // takeStats' host threads
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
                                                       Precision precision,
                                                       const RunnerOptions& options);
    ~CudaLlamaRunner() override;

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
    std::uint64_t memoryBytes() const override { return m_memory.current; }
    bool streamsWeights() const override { return m_streamed; }
    Status beginBlocks(std::span<const std::int32_t> tokens, std::int64_t batch) override;
    Result<ActivationStats> probeBlock(int block, int site, const RunnerStatsOptions& options,
                                       const ProgressFn& progress) override;
    Status advanceBlock(int block, const ProgressFn& progress) override;
    void endBlocks() override;

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
    Status allocateBlock(Block& blk, const std::string& prefix);
    Status upload(const Slot& slot, std::span<const float> values, cudaStream_t stream,
                  DeviceBuffer<float>& staging);
    Result<Slot> find(const std::string& name);
    // A block tensor's place in `blk` by role ("attn_q.weight"); nullopt for other names.
    std::optional<Slot> slotIn(Block& blk, const std::string& role);
    // Streaming: block b's weights (host view, or a replaceWeight override) into `blk`, enqueued
    // on m_copyStream.
    Status uploadBlock(std::int64_t b, Block& blk);
    Status ensureResidual(std::int64_t rows);
    Status ensureActivations(std::int64_t rows);
    // Block w (index b) over the n rows of the residual stream at x: n / T whole sequences, the
    // first being calibration sample `firstSample`. With stopAt = a site (0..3) the block stops
    // once that site's input has been observed (x is changed only when stopAt >= 2).
    Status runBlock(const Block& w, int b, float* x, std::int64_t n, std::int64_t T,
                    std::int32_t firstSample, AttentionKernel kernel, int stopAt = -1);
    // Block by block: checks, and the block's weights (streaming: uploaded into slot 0 unless
    // it holds them already).
    Result<const Block*> blockForPass(int block, const char* what);
    // The sequence length of `batch` equal sequences of valid token ids.
    Result<std::int64_t> checkTokens(const char* what, std::span<const std::int32_t> tokens,
                                     std::int64_t batch) const;
    std::int64_t blockChunkRows() const;
    // Streaming with statistics: block b's four accumulators to the host, merged into
    // m_hostStats, then zeroed for the next block.
    Status collectBlockStats(std::int64_t b);
    Status ensureRope(std::int64_t seqLen);
    Status runHead(std::int64_t rows, std::int64_t seqLen, const LogitsFn& onLogits);

    // The statistics hook. Every linear-layer input passes here on the device, in execution
    // order, before the GEMMs that read it; `in.data` stays valid until the next op on
    // `in.stream`, and DeviceStats enqueues its work on that stream, so nothing waits here.
    // enableStats creates one accumulator per probe (block * 4 + site); takeStats downloads them.
    Status onLinearInput(const LinearInput& in)
    {
        DeviceStats* probe = m_probeStats && in.block == m_probeBlock && in.site == m_probeSite
                                 ? &*m_probeStats
                                 : nullptr;
        if (!m_statsEnabled && !probe) return {};
        QL_CUDA_TRY(cudaEventRecord(m_statsFork, in.stream));
        QL_CUDA_TRY(cudaStreamWaitEvent(m_statsStream, m_statsFork, 0));
        struct Join {  // the buffer's readers are done once this event has run
            cudaEvent_t done;
            cudaStream_t stream;
            ~Join() { cudaEventRecord(done, stream); }
        } join{m_statsDone[in.site], m_statsStream};
        const std::size_t index =
            m_streamed ? std::size_t(in.site) : std::size_t(in.block) * 4 + std::size_t(in.site);
        cuda::DeviceStats& stats = probe ? *probe : m_stats[index];
        const std::int64_t sequences = in.rows / in.seqLen;
        if (in.type == DType::BF16)
            return stats.add(static_cast<const __nv_bfloat16*>(in.data), in.rows, sequences,
                             in.firstSample);
        return stats.add(static_cast<const float*>(in.data), in.rows, sequences, in.firstSample);
    }
    void releaseStats();
    void accountStatsMemory();
    Status createStatsStream();
    // Before the forward's stream overwrites the buffer that probe `site` reads.
    Status waitStats(int site)
    {
        if (!m_statsEnabled && !m_probeStats) return {};
        QL_CUDA_TRY(cudaStreamWaitEvent(m_ctx->stream(), m_statsDone[site], 0));
        return {};
    }
    Status syncStats()
    {
        if (m_statsStream) QL_CUDA_TRY(cudaStreamSynchronize(m_statsStream));
        return {};
    }

    // Declared first: destroyed after every buffer below.
    std::shared_ptr<CudaContext> m_ctx;
    MemoryTracker m_memory;

    LlamaShape m_shape;
    Precision m_precision;
    DType m_type;
    std::int64_t m_qDim, m_kvDim, m_qkvDim;
    bool m_statsEnabled = false;
    std::vector<DeviceStats> m_stats;  // blocks * 4 while enabled (streaming: one block's 4)
    std::vector<std::optional<ActivationStats>> m_hostStats;  // streaming: blocks * 4
    RunnerStatsOptions m_statsOptions;
    HessianPrecision m_statsHessian = HessianPrecision::None;
    std::vector<DownloadLane> m_lanes;  // takeStats' download threads, kept for the next call
    // The statistics run on a stream of their own (with a cuBLAS handle of their own for the
    // Hessians), forked from the forward's stream where an input is ready, so the probes overlap
    // the GEMMs; a buffer a probe reads is not overwritten before the probe's work is done
    // (waitStats before each write of m_h, m_hf, m_attn, m_g).
    cudaStream_t m_statsStream = nullptr;
    cublasHandle_t m_statsBlas = nullptr;
    cudaEvent_t m_statsFork = nullptr;
    cudaEvent_t m_statsDone[4] = {nullptr, nullptr, nullptr, nullptr};  // per site's buffer
    std::uint64_t m_statsBytes = 0;  // their device memory, counted in m_memory

    DeviceTensor m_embd, m_output;  // m_output empty when the head is tied to m_embd
    DeviceBuffer<float> m_outputNorm;
    std::vector<Block> m_blocks;  // every block; streaming: two slots, block b in slot b % 2
    DeviceBuffer<float> m_staging;

    // Streaming (WeightResidency::Streamed): the host weights and replaceWeight's overrides,
    // a copy stream, events "slot i uploaded" and "slot i no longer read".
    bool m_streamed = false;
    LlamaWeightsView m_host;
    std::map<std::string, std::vector<float>> m_overrides;
    cudaStream_t m_copyStream = nullptr;
    cudaEvent_t m_slotReady[2] = {nullptr, nullptr};
    cudaEvent_t m_slotFree[2] = {nullptr, nullptr};
    DeviceBuffer<float> m_copyStaging;
    std::int64_t m_chunkRows = 0;  // streaming: rows per block pass (whole sequences); 0: all
    int m_slotBlock = -1;          // streaming: the block slot 0 holds for block-by-block passes

    // Block by block (beginBlocks .. endBlocks): the hidden states of m_blockRows rows in m_x,
    // sequences of m_blockSeqLen; a probe's statistics while probeBlock runs; a copy of a chunk's
    // residual stream for probes past the attention's residual add.
    std::int64_t m_blockRows = 0, m_blockSeqLen = 0;
    std::optional<DeviceStats> m_probeStats;
    int m_probeBlock = -1, m_probeSite = -1;
    std::uint64_t m_probeBytes = 0;  // counted in m_memory
    DeviceBuffer<float> m_xScratch;

    std::int64_t m_residualRows = 0;  // rows m_x and m_ids hold
    std::int64_t m_rows = 0;          // rows the other activation buffers hold
    DeviceBuffer<float> m_x;
    DeviceTensor m_h, m_hf, m_qkv, m_attn, m_gu, m_g;  // m_h: attention norm, m_hf: FFN norm
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

// Device bytes of the weights: {global (embedding, head, final norm), one block}.
std::pair<std::uint64_t, std::uint64_t> weightBytes(const LlamaShape& s, DType type)
{
    const std::uint64_t t = dtypeSize(type);
    const std::uint64_t dim = std::uint64_t(s.dim), ffn = std::uint64_t(s.ffnDim);
    const std::uint64_t q = std::uint64_t(s.heads * s.headDim),
                        kv = std::uint64_t(s.kvHeads * s.headDim);
    const std::uint64_t global =
        std::uint64_t(s.vocab) * dim * t * (s.tiedOutput ? 1 : 2) + dim * 4;
    const std::uint64_t block = ((q + 2 * kv) * dim + dim * q + 3 * ffn * dim) * t + 2 * dim * 4 +
                                (s.attentionBias ? (q + 2 * kv) * 4 : 0);
    return {global, block};
}

// Device bytes of the activations of `rows` tokens, logits chunk and scratch included (a planning
// figure, not an exact one).
std::uint64_t workingBytes(const LlamaShape& s, DType type, std::int64_t rows)
{
    const std::uint64_t t = dtypeSize(type);
    const std::uint64_t dim = std::uint64_t(s.dim), ffn = std::uint64_t(s.ffnDim);
    const std::uint64_t q = std::uint64_t(s.heads * s.headDim),
                        kv = std::uint64_t(s.kvHeads * s.headDim);
    const std::uint64_t perRow = dim * 4 + (2 * dim + q + 2 * kv + q + 3 * ffn) * t + 4;
    return std::uint64_t(rows) * perRow + kLogitsChunkBytes + (std::uint64_t(512) << 20);
}

constexpr std::int64_t kStreamChunkTokens = 16384;  // rows per block pass when streaming

// A block's tensors by role (as slotIn names them), in upload order; the q/k/v biases only with
// attention biases.
std::vector<std::pair<const char*, std::span<const float>>> blockTensors(const LlamaBlockView& v,
                                                                         bool bias)
{
    std::vector<std::pair<const char*, std::span<const float>>> t = {
        {"attn_norm.weight", v.attnNorm},
        {"attn_q.weight", v.wq},
        {"attn_k.weight", v.wk},
        {"attn_v.weight", v.wv},
        {"attn_output.weight", v.wo}};
    if (bias)
        t.insert(t.end(), {{"attn_q.bias", v.bq}, {"attn_k.bias", v.bk}, {"attn_v.bias", v.bv}});
    t.insert(t.end(), {{"ffn_norm.weight", v.ffnNorm},
                       {"ffn_gate.weight", v.gate},
                       {"ffn_up.weight", v.up},
                       {"ffn_down.weight", v.down}});
    return t;
}

CudaLlamaRunner::~CudaLlamaRunner()
{
    if (m_ctx && m_ctx->activate()) (void)m_ctx->synchronize();
    if (m_copyStream) cudaStreamSynchronize(m_copyStream);
    for (int i = 0; i < 2; ++i) {
        if (m_slotReady[i]) cudaEventDestroy(m_slotReady[i]);
        if (m_slotFree[i]) cudaEventDestroy(m_slotFree[i]);
    }
    if (m_copyStream) cudaStreamDestroy(m_copyStream);
    if (m_statsStream) cudaStreamSynchronize(m_statsStream);
    m_stats.clear();  // their work is done; they use the handle below
    m_probeStats.reset();
    if (m_statsBlas) cublasDestroy(m_statsBlas);
    if (m_statsFork) cudaEventDestroy(m_statsFork);
    for (auto& e : m_statsDone)
        if (e) cudaEventDestroy(e);
    if (m_statsStream) cudaStreamDestroy(m_statsStream);
}

Result<std::unique_ptr<ModelRunner>> CudaLlamaRunner::create(std::shared_ptr<CudaContext> ctx,
                                                             const LlamaWeightsView& w,
                                                             Precision precision,
                                                             const RunnerOptions& options)
{
    const LlamaShape& s = w.shape;
    if (s.blocks <= 0 || s.dim <= 0 || s.ffnDim <= 0 || s.heads <= 0 || s.kvHeads <= 0 ||
        s.headDim <= 0 || s.vocab <= 0 || s.heads % s.kvHeads != 0 || s.headDim % 2 != 0 ||
        std::int64_t(w.blocks.size()) != s.blocks ||
        std::int64_t(s.ropeInvFreq.size()) != s.headDim / 2)
        return makeError(ErrorCode::InvalidArgument, "weights view: inconsistent model shape");
    QL_TRY_STATUS(ctx->activate());
    std::unique_ptr<CudaLlamaRunner> r(new CudaLlamaRunner(std::move(ctx), s, precision));

    // Resident or streamed: the whole model plus one batch's working set against the budget.
    const auto [globalBytes, blockBytes] = weightBytes(s, r->m_type);
    std::size_t freeBytes = 0, totalBytes = 0;
    QL_CUDA_TRY(cudaMemGetInfo(&freeBytes, &totalBytes));
    const std::uint64_t budget = options.memoryLimit > 0
                                     ? std::min<std::uint64_t>(options.memoryLimit, freeBytes)
                                     : std::uint64_t(freeBytes);
    const std::uint64_t resident = globalBytes + std::uint64_t(s.blocks) * blockBytes +
                                   workingBytes(s, r->m_type, kStreamChunkTokens);
    r->m_streamed = options.residency == WeightResidency::Streamed ||
                    (options.residency == WeightResidency::Auto && resident > budget);
    if (r->m_streamed) {
        // Whether even the streamed working set fits shows when the buffers are allocated.
        r->m_host = w;
        r->m_chunkRows = kStreamChunkTokens;
        QL_CUDA_TRY(cudaStreamCreateWithFlags(&r->m_copyStream, cudaStreamNonBlocking));
        for (int i = 0; i < 2; ++i) {
            QL_CUDA_TRY(cudaEventCreateWithFlags(&r->m_slotReady[i], cudaEventDisableTiming));
            QL_CUDA_TRY(cudaEventCreateWithFlags(&r->m_slotFree[i], cudaEventDisableTiming));
        }
    }
    try {
        QL_TRY_STATUS(r->allocateWeights());
        // Every tensor through the same name lookup replaceWeight uses.
        auto put = [&](const std::string& name, std::span<const float> values) -> Status {
            auto slot = r->find(name);
            if (!slot) return slot.error();
            if (values.size() != slot->count) return shapeError(name, values.size(), slot->count);
            return r->upload(*slot, values, r->m_ctx->stream(), r->m_staging);
        };
        QL_TRY_STATUS(put("token_embd.weight", w.tokenEmbd));
        QL_TRY_STATUS(put("output_norm.weight", w.outputNorm));
        if (!s.tiedOutput) QL_TRY_STATUS(put("output.weight", w.output));
        for (std::int64_t b = 0; b < s.blocks; ++b) {
            const LlamaBlockView& v = w.blocks[std::size_t(b)];
            const std::string p = "blk." + std::to_string(b) + ".";
            auto check = [&](const std::string& role, std::span<const float> values) -> Status {
                auto slot = r->slotIn(r->m_blocks[0], role);
                if (slot && values.size() != slot->count)
                    return shapeError(p + role, values.size(), slot->count);
                return {};
            };
            auto each = [&](const std::string& role, std::span<const float> values) -> Status {
                // Streaming checks the shapes now and uploads on every forward.
                return r->m_streamed ? check(role, values) : put(p + role, values);
            };
            for (const auto& [role, values] : blockTensors(v, s.attentionBias))
                QL_TRY_STATUS(each(role, values));
        }
        QL_TRY_STATUS(r->m_ctx->synchronize());
        r->m_staging.release();
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory while uploading the weights");
    }
    return std::unique_ptr<ModelRunner>(std::move(r));
}

Status CudaLlamaRunner::allocateBlock(Block& blk, const std::string& p)
{
    const LlamaShape& s = m_shape;
    auto tensor = [&](DeviceTensor& t, std::int64_t count, const std::string& what) -> Status {
        auto a = DeviceTensor::allocate(m_type, std::size_t(count), &m_memory, what);
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
    QL_TRY_STATUS(vector(blk.attnNorm, s.dim, p + "attn_norm.weight"));
    QL_TRY_STATUS(vector(blk.ffnNorm, s.dim, p + "ffn_norm.weight"));
    if (s.attentionBias) QL_TRY_STATUS(vector(blk.bqkv, m_qkvDim, p + "attn_{q,k,v}.bias"));
    QL_TRY_STATUS(tensor(blk.wqkv, m_qkvDim * s.dim, p + "attn_{q,k,v}.weight"));
    QL_TRY_STATUS(tensor(blk.wo, s.dim * m_qDim, p + "attn_output.weight"));
    QL_TRY_STATUS(tensor(blk.wgu, 2 * s.ffnDim * s.dim, p + "ffn_{gate,up}.weight"));
    QL_TRY_STATUS(tensor(blk.wdown, s.dim * s.ffnDim, p + "ffn_down.weight"));
    return {};
}

Status CudaLlamaRunner::allocateWeights()
{
    const LlamaShape& s = m_shape;
    auto tensor = [&](DeviceTensor& t, std::int64_t count, const std::string& what) -> Status {
        auto a = DeviceTensor::allocate(m_type, std::size_t(count), &m_memory, what);
        if (!a) return a.error();
        t = std::move(a).value();
        return {};
    };
    QL_TRY_STATUS(tensor(m_embd, s.vocab * s.dim, "token_embd.weight"));
    if (!s.tiedOutput) QL_TRY_STATUS(tensor(m_output, s.vocab * s.dim, "output.weight"));
    auto norm = DeviceBuffer<float>::allocate(std::size_t(s.dim), &m_memory, "output_norm.weight");
    if (!norm) return norm.error();
    m_outputNorm = std::move(norm).value();
    m_blocks.resize(m_streamed ? 2 : std::size_t(s.blocks));
    for (std::size_t b = 0; b < m_blocks.size(); ++b)
        QL_TRY_STATUS(allocateBlock(m_blocks[b],
                                    m_streamed ? "streamed block slot " + std::to_string(b) + ": "
                                               : "blk." + std::to_string(b) + "."));
    return {};
}

std::optional<CudaLlamaRunner::Slot> CudaLlamaRunner::slotIn(Block& blk, const std::string& role)
{
    const std::size_t dim = std::size_t(m_shape.dim), q = std::size_t(m_qDim),
                      kv = std::size_t(m_kvDim), ffn = std::size_t(m_shape.ffnDim);
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
    if (role == "attn_norm.weight") return vec(blk.attnNorm, 0, dim);
    if (role == "ffn_norm.weight") return vec(blk.ffnNorm, 0, dim);
    if (role == "attn_q.weight") return matrix(blk.wqkv, 0, q * dim);
    if (role == "attn_k.weight") return matrix(blk.wqkv, q * dim, kv * dim);
    if (role == "attn_v.weight") return matrix(blk.wqkv, (q + kv) * dim, kv * dim);
    if (role == "attn_output.weight") return matrix(blk.wo, 0, dim * q);
    if (role == "ffn_gate.weight") return matrix(blk.wgu, 0, ffn * dim);
    if (role == "ffn_up.weight") return matrix(blk.wgu, ffn * dim, ffn * dim);
    if (role == "ffn_down.weight") return matrix(blk.wdown, 0, dim * ffn);
    if (m_shape.attentionBias) {
        if (role == "attn_q.bias") return vec(blk.bqkv, 0, q);
        if (role == "attn_k.bias") return vec(blk.bqkv, q, kv);
        if (role == "attn_v.bias") return vec(blk.bqkv, q + kv, kv);
    }
    return std::nullopt;
}

Result<CudaLlamaRunner::Slot> CudaLlamaRunner::find(const std::string& name)
{
    const LlamaShape& s = m_shape;
    const std::size_t dim = std::size_t(s.dim);
    if (name == "token_embd.weight") {
        Slot slot;
        slot.tensor = &m_embd;
        slot.count = std::size_t(s.vocab) * dim;
        return slot;
    }
    if (name == "output_norm.weight") {
        Slot slot;
        slot.vector = &m_outputNorm;
        slot.count = dim;
        return slot;
    }
    if (name == "output.weight" && !s.tiedOutput) {
        Slot slot;
        slot.tensor = &m_output;
        slot.count = std::size_t(s.vocab) * dim;
        return slot;
    }
    if (name.rfind("blk.", 0) == 0) {
        const std::size_t dot = name.find('.', 4);
        if (dot != std::string::npos && dot > 4) {
            const std::string index = name.substr(4, dot - 4);
            if (index.find_first_not_of("0123456789") == std::string::npos && index.size() < 9) {
                const std::int64_t b = std::stoll(index);
                // Streaming: the slot says where and how much; block b is not held there.
                if (b < s.blocks)
                    if (auto slot =
                            slotIn(m_blocks[m_streamed ? 0 : std::size_t(b)], name.substr(dot + 1)))
                        return *slot;
            }
        }
    }
    return makeError(
        ErrorCode::InvalidArgument,
        "the GPU model holds no tensor " + name +
            (name == "output.weight" ? " (the head is tied to token_embd.weight)" : ""));
}

Status CudaLlamaRunner::upload(const Slot& slot, std::span<const float> values, cudaStream_t stream,
                               DeviceBuffer<float>& staging)
{
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
    if (staging.empty()) {
        auto st =
            DeviceBuffer<float>::allocate(kStagingFloats, &m_memory, "the upload staging buffer");
        if (!st) return st.error();
        staging = std::move(st).value();
    }
    // Stream order keeps the next copy into the staging buffer behind the previous conversion.
    for (std::size_t i = 0; i < values.size(); i += kStagingFloats) {
        const std::size_t n = std::min(kStagingFloats, values.size() - i);
        QL_CUDA_TRY(cudaMemcpyAsync(staging.data(), values.data() + i, n * sizeof(float),
                                    cudaMemcpyHostToDevice, stream));
        launchFromF32(staging.data(), n, t.at(slot.offset + i), t.type(), stream);
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
    if (m_streamed && name.rfind("blk.", 0) == 0) {
        // Uploaded with its block on every forward.
        try {
            m_overrides[name].assign(values.begin(), values.end());
        } catch (const std::bad_alloc&) {
            return makeError(ErrorCode::OutOfMemory, "out of host memory for " + name);
        }
        // A block-by-block pass holding this block in slot 0 sees the new values too.
        const std::size_t dot = name.find('.', 4);
        if (m_slotBlock < 0 || dot == std::string::npos ||
            name.substr(4, dot - 4) != std::to_string(m_slotBlock))
            return {};
        auto held = slotIn(m_blocks[0], name.substr(dot + 1));
        if (!held) return {};
        QL_TRY_STATUS(upload(*held, values, m_ctx->stream(), m_staging));
        QL_TRY_STATUS(m_ctx->synchronize());
        m_staging.release();
        return {};
    }
    QL_TRY_STATUS(upload(*slot, values, m_ctx->stream(), m_staging));
    QL_TRY_STATUS(m_ctx->synchronize());
    m_staging.release();
    return {};
}

Status CudaLlamaRunner::ensureResidual(std::int64_t rows)
{
    if (rows <= m_residualRows) return {};
    m_x.release();
    m_ids.release();
    m_residualRows = 0;
    auto x =
        DeviceBuffer<float>::allocate(std::size_t(rows * m_shape.dim), &m_memory,
                                      "the residual stream of " + std::to_string(rows) + " tokens");
    if (!x) return x.error();
    m_x = std::move(x).value();
    auto ids = DeviceBuffer<std::int32_t>::allocate(std::size_t(rows), &m_memory, "token ids");
    if (!ids) return ids.error();
    m_ids = std::move(ids).value();
    m_residualRows = rows;
    return {};
}

Status CudaLlamaRunner::ensureActivations(std::int64_t rows)
{
    if (rows <= m_rows) return {};
    // Free the old set first: a longer batch should not need both at once.
    m_h.release();
    m_hf.release();
    m_qkv.release();
    m_attn.release();
    m_gu.release();
    m_g.release();
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
    QL_TRY_STATUS(tensor(m_h, m_type, s.dim, "normed"));
    QL_TRY_STATUS(tensor(m_hf, m_type, s.dim, "FFN-normed"));
    QL_TRY_STATUS(tensor(m_qkv, m_type, m_qkvDim, "q/k/v"));
    QL_TRY_STATUS(tensor(m_attn, m_type, m_qDim, "attention output"));
    QL_TRY_STATUS(tensor(m_gu, m_type, 2 * s.ffnDim, "gate/up"));
    QL_TRY_STATUS(tensor(m_g, m_type, s.ffnDim, "SwiGLU"));
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

Status CudaLlamaRunner::uploadBlock(std::int64_t b, Block& blk)
{
    const LlamaBlockView& v = m_host.blocks[std::size_t(b)];
    const std::string p = "blk." + std::to_string(b) + ".";
    auto put = [&](const char* role, std::span<const float> values) -> Status {
        if (values.empty()) return {};
        const auto o = m_overrides.find(p + role);
        if (o != m_overrides.end()) values = o->second;
        auto slot = slotIn(blk, role);
        if (!slot) return makeError(ErrorCode::InvalidArgument, "no slot for " + p + role);
        return upload(*slot, values, m_copyStream, m_copyStaging);
    };
    for (const auto& [role, values] : blockTensors(v, m_shape.attentionBias))
        QL_TRY_STATUS(put(role, values));
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

Status CudaLlamaRunner::runBlock(const Block& w, int bi, float* x, std::int64_t rows,
                                 std::int64_t T, std::int32_t firstSample, AttentionKernel kernel,
                                 int stopAt)
{
    const LlamaShape& s = m_shape;
    cudaStream_t stream = m_ctx->stream();
    AttentionShape as;
    as.batch = rows / T;
    as.seqLen = T;
    as.heads = s.heads;
    as.kvHeads = s.kvHeads;
    as.headDim = s.headDim;
    as.ld = m_qkvDim;
    as.qOffset = 0;
    as.kOffset = m_qDim;
    as.vOffset = m_qDim + m_kvDim;
    as.ldOut = m_qDim;
    LinearInput probe;
    probe.rows = rows;
    probe.type = m_type;
    probe.stream = stream;
    probe.seqLen = T;
    probe.firstSample = firstSample;
    probe.block = bi;
    auto observe = [&](int site, const void* data, std::int64_t cols) {
        probe.site = site;
        probe.data = data;
        probe.cols = cols;
        return onLinearInput(probe);
    };

    QL_TRY_STATUS(waitStats(0));
    launchRmsNorm(x, rows, s.dim, w.attnNorm.data(), s.rmsNormEps, m_h.data(), m_type, stream);
    QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
    QL_TRY_STATUS(observe(0, m_h.data(), s.dim));
    if (stopAt == 0) return {};
    QL_TRY_STATUS(linear(*m_ctx, m_h.data(), m_type, s.dim, w.wqkv.data(), rows, s.dim, m_qkvDim,
                         m_qkv.data(), m_type, m_qkvDim));
    if (s.attentionBias) {
        launchAddBias(m_qkv.data(), m_type, rows, m_qkvDim, m_qkvDim, w.bqkv.data(), stream);
        QL_TRY_STATUS(CudaContext::checkLaunch("bias add"));
    }
    launchRope(m_qkv.data(), m_type, rows, m_qkvDim, int(s.heads), int(s.headDim), m_ropeCos.data(),
               m_ropeSin.data(), T, s.ropeHalfSplit, stream);
    launchRope(m_qkv.at(std::size_t(m_qDim)), m_type, rows, m_qkvDim, int(s.kvHeads),
               int(s.headDim), m_ropeCos.data(), m_ropeSin.data(), T, s.ropeHalfSplit, stream);
    QL_TRY_STATUS(CudaContext::checkLaunch("rope"));
    QL_TRY_STATUS(waitStats(1));
    QL_TRY_STATUS(
        causalAttention(*m_ctx, m_attention, as, m_qkv.data(), m_type, m_attn.data(), kernel));
    QL_TRY_STATUS(observe(1, m_attn.data(), m_qDim));
    if (stopAt == 1) return {};
    QL_TRY_STATUS(linear(*m_ctx, m_attn.data(), m_type, m_qDim, w.wo.data(), rows, m_qDim, s.dim, x,
                         DType::F32, s.dim, 1.0f));

    QL_TRY_STATUS(waitStats(2));
    launchRmsNorm(x, rows, s.dim, w.ffnNorm.data(), s.rmsNormEps, m_hf.data(), m_type, stream);
    QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
    QL_TRY_STATUS(observe(2, m_hf.data(), s.dim));
    if (stopAt == 2) return {};
    QL_TRY_STATUS(linear(*m_ctx, m_hf.data(), m_type, s.dim, w.wgu.data(), rows, s.dim,
                         2 * s.ffnDim, m_gu.data(), m_type, 2 * s.ffnDim));
    QL_TRY_STATUS(waitStats(3));
    launchSwiglu(m_gu.data(), m_type, rows, s.ffnDim, 2 * s.ffnDim, s.ffnDim, m_g.data(), m_type,
                 stream);
    QL_TRY_STATUS(CudaContext::checkLaunch("swiglu"));
    QL_TRY_STATUS(observe(3, m_g.data(), s.ffnDim));
    if (stopAt == 3) return {};
    return linear(*m_ctx, m_g.data(), m_type, s.ffnDim, w.wdown.data(), rows, s.ffnDim, s.dim, x,
                  DType::F32, s.dim, 1.0f);
}

Status CudaLlamaRunner::forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                                const LogitsFn& onLogits, const ProgressFn& progress,
                                std::int32_t firstSample)
{
    const LlamaShape& s = m_shape;
    const auto rows = static_cast<std::int64_t>(tokens.size());
    if (m_blockRows > 0)
        return makeError(ErrorCode::InvalidArgument,
                         "forward: a block-by-block pass is in progress (endBlocks first)");
    auto seqLen = checkTokens("forward", tokens, batch);
    if (!seqLen) return seqLen.error();
    const std::int64_t T = *seqLen;
    // Resident: all rows through each block at once. Streaming: chunks of whole sequences, every
    // chunk through a block before the next block's weights are needed.
    const std::int64_t chunk =
        m_streamed ? std::min(rows, std::max<std::int64_t>(1, m_chunkRows / T) * T) : rows;
    auto cancelled = [&]() -> Status {
        QL_TRY_STATUS(m_ctx->synchronize());
        QL_TRY_STATUS(syncStats());
        if (m_copyStream) cudaStreamSynchronize(m_copyStream);
        return makeError(ErrorCode::Cancelled, "the forward pass was cancelled");
    };
    try {
        QL_TRY_STATUS(m_ctx->activate());
        QL_TRY_STATUS(ensureResidual(rows));
        QL_TRY_STATUS(ensureActivations(chunk));
        QL_TRY_STATUS(ensureRope(T));
        cudaStream_t stream = m_ctx->stream();
        QL_CUDA_TRY(cudaMemcpyAsync(m_ids.data(), tokens.data(),
                                    tokens.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                                    stream));
        launchEmbedding(m_embd.data(), m_embd.type(), m_ids.data(), rows, s.dim, m_x.data(),
                        stream);
        QL_TRY_STATUS(CudaContext::checkLaunch("embedding lookup"));
        const AttentionKernel kernel = attentionKernelFromEnvironment();

        if (m_streamed) {
            // Nothing from an earlier call may still read slot 0.
            m_slotBlock = -1;
            QL_CUDA_TRY(cudaStreamSynchronize(m_copyStream));
            QL_TRY_STATUS(uploadBlock(0, m_blocks[0]));
            QL_CUDA_TRY(cudaEventRecord(m_slotReady[0], m_copyStream));
        }
        for (std::int64_t b = 0; b < s.blocks; ++b) {
            const std::size_t slot = m_streamed ? std::size_t(b % 2) : std::size_t(b);
            if (m_streamed) QL_CUDA_TRY(cudaStreamWaitEvent(stream, m_slotReady[slot], 0));
            for (std::int64_t r0 = 0; r0 < rows; r0 += chunk)
                QL_TRY_STATUS(runBlock(m_blocks[slot], int(b), m_x.data() + std::size_t(r0 * s.dim),
                                       std::min(chunk, rows - r0), T,
                                       firstSample + std::int32_t(r0 / T), kernel));
            if (m_streamed) {
                QL_CUDA_TRY(cudaEventRecord(m_slotFree[slot], stream));
                if (b + 1 < s.blocks) {
                    // The other slot was last read by block b - 1; the host copy overlaps block
                    // b's compute, already queued.
                    const std::size_t next = std::size_t((b + 1) % 2);
                    if (b >= 1) QL_CUDA_TRY(cudaStreamWaitEvent(m_copyStream, m_slotFree[next], 0));
                    QL_TRY_STATUS(uploadBlock(b + 1, m_blocks[next]));
                    QL_CUDA_TRY(cudaEventRecord(m_slotReady[next], m_copyStream));
                }
                if (m_statsEnabled) QL_TRY_STATUS(collectBlockStats(b));
            }
            if (!reportProgress(progress, double(b + 1) / double(s.blocks + 1), "forward"))
                return cancelled();
        }
        QL_TRY_STATUS(runHead(rows, T, onLogits));
        QL_TRY_STATUS(m_ctx->synchronize());
        QL_TRY_STATUS(syncStats());
        if (m_statsEnabled) accountStatsMemory();
        if (!reportProgress(progress, 1.0, "forward"))
            return makeError(ErrorCode::Cancelled, "the forward pass was cancelled");
        return {};
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory in the GPU forward pass");
    }
}

Status CudaLlamaRunner::collectBlockStats(std::int64_t b)
{
    QL_TRY_STATUS(m_ctx->synchronize());
    QL_TRY_STATUS(syncStats());
    // The four probes on four host threads, each through a lane of its own (the ffn_down Hessian
    // alone is 800 MB for an 8B model).
    while (m_lanes.size() < 4) {
        auto lane = DownloadLane::create();
        if (!lane) break;
        m_lanes.push_back(std::move(lane).value());
    }
    std::optional<Result<ActivationStats>> got[4];
    auto work = [&](std::size_t site) {
        if (!m_ctx->activate()) return;
        try {
            got[site].emplace(
                m_stats[site].download(m_lanes.size() > site ? &m_lanes[site] : nullptr));
        } catch (const std::bad_alloc&) {
            got[site].emplace(
                makeError(ErrorCode::OutOfMemory, "out of host memory for the statistics"));
        }
    };
    try {
        std::vector<std::thread> pool;
        for (std::size_t site = 1; site < 4; ++site) pool.emplace_back(work, site);
        work(0);
        for (auto& t : pool) t.join();
    } catch (const std::system_error& e) {
        return makeError(ErrorCode::Device, std::string("collecting statistics: ") + e.what());
    }
    for (std::size_t site = 0; site < 4; ++site) {
        if (!got[site]) return makeError(ErrorCode::Device, "a statistics download did not run");
        if (!*got[site]) return got[site]->error();
        auto& into = m_hostStats[std::size_t(b) * 4 + site];
        if (into)
            QL_TRY_STATUS(into->merge(got[site]->value()));
        else
            into = std::move(*got[site]).value();
        QL_TRY_STATUS(m_stats[site].reset());
    }
    return {};
}

Status CudaLlamaRunner::enableStats(const RunnerStatsOptions& options)
{
    QL_TRY_STATUS(m_ctx->activate());
    releaseStats();
    QL_TRY_STATUS(createStatsStream());
    const std::int64_t widths[4] = {m_shape.dim, m_qDim, m_shape.dim, m_shape.ffnDim};
    try {
        std::vector<DeviceStats> stats;
        const std::int64_t sets = m_streamed ? 1 : m_shape.blocks;
        stats.reserve(std::size_t(sets) * 4);
        std::uint64_t bytes = 0;
        for (std::int64_t b = 0; b < sets; ++b)
            for (std::int64_t width : widths) {
                auto s =
                    DeviceStats::create(std::int32_t(width), options, m_statsStream, m_statsBlas);
                if (!s) {
                    if (s.error().code == ErrorCode::OutOfMemory)
                        return makeError(ErrorCode::OutOfMemory,
                                         "out of GPU memory for the activation statistics of " +
                                             std::to_string(sets * 4) + " probes (" +
                                             formatGiB(bytes) +
                                             " allocated when it ran out): " + s.error().message);
                    return s.error();
                }
                bytes += s->deviceBytes();
                stats.push_back(std::move(s).value());
            }
        m_stats = std::move(stats);
        m_hostStats.assign(m_streamed ? std::size_t(m_shape.blocks) * 4 : 0, std::nullopt);
        m_statsOptions = options;
        m_statsHessian = options.hessian;
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
    QL_TRY_STATUS(m_ctx->synchronize());
    QL_TRY_STATUS(syncStats());
    if (m_streamed) {
        // Each block's statistics reached the host when the block finished.
        std::vector<ActivationStats> out;
        out.reserve(m_hostStats.size());
        for (std::size_t i = 0; i < m_hostStats.size(); ++i) {
            if (m_hostStats[i])
                out.push_back(std::move(*m_hostStats[i]));
            else
                out.emplace_back(m_stats[i % 4].channels(), m_statsHessian,
                                 m_statsOptions.histogramBins, m_statsOptions.topK);
            m_hostStats[i].reset();
        }
        return out;
    }
    // The Hessians are most of the bytes (5 GB for a 1B model): probes go to host threads, largest
    // first, each with its own DownloadLane, so the copies and the host page faults run in
    // parallel instead of one pageable cudaMemcpy at a time.
    const std::size_t n = m_stats.size();
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return m_stats[a].channels() > m_stats[b].channels();
    });
    const std::size_t threads =
        std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, kDownloadThreads);
    const std::size_t lanes = std::min(threads, n);
    while (m_lanes.size() < lanes) {
        auto lane = DownloadLane::create();
        if (!lane) break;  // page-locked memory is short: fewer lanes (or plain copies) still work
        m_lanes.push_back(std::move(lane).value());
    }
    std::vector<std::optional<Result<ActivationStats>>> results(n);
    std::atomic<std::size_t> next{0};
    auto work = [&](DownloadLane* lane) {
        if (!m_ctx->activate()) return;
        for (std::size_t k; (k = next.fetch_add(1)) < n;) {
            try {
                results[order[k]].emplace(m_stats[order[k]].download(lane));
            } catch (const std::bad_alloc&) {
                results[order[k]].emplace(
                    makeError(ErrorCode::OutOfMemory, "out of host memory for the statistics"));
            }
        }
    };
    try {
        std::vector<std::thread> pool;
        for (std::size_t t = 1; t < std::max<std::size_t>(m_lanes.size(), 1); ++t)
            pool.emplace_back(work, &m_lanes[t]);
        work(m_lanes.empty() ? nullptr : &m_lanes[0]);
        for (auto& t : pool) t.join();
        std::vector<ActivationStats> out;
        out.reserve(n);
        for (auto& r : results) {
            if (!r) return makeError(ErrorCode::Device, "takeStats: a download did not run");
            if (!*r) return r->error();
            out.push_back(std::move(*r).value());
        }
        for (DeviceStats& s : m_stats) QL_TRY_STATUS(s.reset());
        return out;
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory for the statistics");
    } catch (const std::system_error& e) {
        return makeError(ErrorCode::Device, std::string("takeStats: ") + e.what());
    }
}

Status CudaLlamaRunner::createStatsStream()
{
    if (m_statsStream) return {};
    // The highest priority: a probe's blocks go onto SMs as soon as the GEMM's retire, so the
    // statistics keep up with the forward instead of making it wait before a buffer is reused.
    int leastPriority = 0, greatestPriority = 0;
    QL_CUDA_TRY(cudaDeviceGetStreamPriorityRange(&leastPriority, &greatestPriority));
    QL_CUDA_TRY(
        cudaStreamCreateWithPriority(&m_statsStream, cudaStreamNonBlocking, greatestPriority));
    QL_CUDA_TRY(cudaEventCreateWithFlags(&m_statsFork, cudaEventDisableTiming));
    for (auto& e : m_statsDone) QL_CUDA_TRY(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    if (cublasCreate(&m_statsBlas) != CUBLAS_STATUS_SUCCESS) {
        m_statsBlas = nullptr;
        return makeError(ErrorCode::Device, "cannot create a cuBLAS handle for the statistics");
    }
    if (cublasSetStream(m_statsBlas, m_statsStream) != CUBLAS_STATUS_SUCCESS)
        return makeError(ErrorCode::Device, "cublasSetStream failed for the statistics");
    // The events start out recorded, so the first waits find nothing pending.
    for (auto& e : m_statsDone) QL_CUDA_TRY(cudaEventRecord(e, m_statsStream));
    return {};
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
    // Work still queued on the streams may read the accumulators.
    (void)m_ctx->synchronize();
    (void)syncStats();
    m_stats.clear();
    m_hostStats.clear();
    m_memory.remove(m_statsBytes);
    m_statsBytes = 0;
    m_statsEnabled = false;
}

Result<std::int64_t> CudaLlamaRunner::checkTokens(const char* what,
                                                  std::span<const std::int32_t> tokens,
                                                  std::int64_t batch) const
{
    const auto rows = static_cast<std::int64_t>(tokens.size());
    if (batch <= 0 || rows == 0 || rows % batch != 0)
        return makeError(ErrorCode::InvalidArgument,
                         std::string(what) + ": " + std::to_string(rows) + " tokens do not make " +
                             std::to_string(batch) + " sequences of equal length");
    const std::int64_t T = rows / batch;
    for (std::size_t t = 0; t < tokens.size(); ++t)
        if (tokens[t] < 0 || tokens[t] >= m_shape.vocab)
            return makeError(ErrorCode::InvalidArgument,
                             "token id " + std::to_string(tokens[t]) + " at position " +
                                 std::to_string(std::int64_t(t) % T) +
                                 " is outside the vocabulary of " + std::to_string(m_shape.vocab));
    return T;
}

std::int64_t CudaLlamaRunner::blockChunkRows() const
{
    const std::int64_t T = m_blockSeqLen;
    return std::min(m_blockRows, std::max<std::int64_t>(1, kStreamChunkTokens / T) * T);
}

Status CudaLlamaRunner::beginBlocks(std::span<const std::int32_t> tokens, std::int64_t batch)
{
    const LlamaShape& s = m_shape;
    const auto rows = static_cast<std::int64_t>(tokens.size());
    auto seqLen = checkTokens("beginBlocks", tokens, batch);
    if (!seqLen) return seqLen.error();
    const std::int64_t T = *seqLen;
    endBlocks();
    try {
        QL_TRY_STATUS(m_ctx->activate());
        QL_TRY_STATUS(ensureResidual(rows));
        m_blockRows = rows;
        m_blockSeqLen = T;
        const std::int64_t chunk = blockChunkRows();
        Status ok = ensureActivations(chunk);
        if (ok) ok = ensureRope(T);
        if (ok) {
            auto scratch = DeviceBuffer<float>::allocate(
                std::size_t(chunk * s.dim), &m_memory,
                "a copy of the residual stream of " + std::to_string(chunk) + " tokens");
            if (scratch)
                m_xScratch = std::move(scratch).value();
            else
                ok = scratch.error();
        }
        if (!ok) {
            endBlocks();
            return ok;
        }
        cudaStream_t stream = m_ctx->stream();
        QL_CUDA_TRY(cudaMemcpyAsync(m_ids.data(), tokens.data(),
                                    tokens.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice,
                                    stream));
        launchEmbedding(m_embd.data(), m_embd.type(), m_ids.data(), rows, s.dim, m_x.data(),
                        stream);
        QL_TRY_STATUS(CudaContext::checkLaunch("embedding lookup"));
        // The token ids are read before the host's span may go.
        return m_ctx->synchronize();
    } catch (const std::bad_alloc&) {
        endBlocks();
        return makeError(ErrorCode::OutOfMemory, "out of host memory in beginBlocks");
    }
}

void CudaLlamaRunner::endBlocks()
{
    if (!m_ctx->activate()) return;
    (void)m_ctx->synchronize();
    (void)syncStats();
    m_probeStats.reset();
    m_xScratch.release();
    m_blockRows = 0;
    m_blockSeqLen = 0;
    // The hidden states of a calibration set are large (2 GB for 128 x 2048 tokens of a 1B
    // model): give them back.
    m_x.release();
    m_ids.release();
    m_residualRows = 0;
}

Result<const CudaLlamaRunner::Block*> CudaLlamaRunner::blockForPass(int block, const char* what)
{
    if (m_blockRows <= 0)
        return makeError(ErrorCode::InvalidArgument, std::string(what) + ": no beginBlocks");
    if (block < 0 || block >= m_shape.blocks)
        return makeError(ErrorCode::InvalidArgument,
                         std::string(what) + ": no block " + std::to_string(block));
    QL_TRY_STATUS(m_ctx->activate());
    if (!m_streamed) return &m_blocks[std::size_t(block)];
    if (m_slotBlock != block) {
        // Slot 0 may still be read by queued work.
        QL_TRY_STATUS(m_ctx->synchronize());
        QL_CUDA_TRY(cudaStreamSynchronize(m_copyStream));
        m_slotBlock = -1;
        QL_TRY_STATUS(uploadBlock(block, m_blocks[0]));
        QL_CUDA_TRY(cudaStreamSynchronize(m_copyStream));
        m_slotBlock = block;
    }
    return &m_blocks[0];
}

Result<ActivationStats> CudaLlamaRunner::probeBlock(int block, int site,
                                                    const RunnerStatsOptions& options,
                                                    const ProgressFn& progress)
{
    if (site < 0 || site > 3)
        return makeError(ErrorCode::InvalidArgument, "probeBlock: no site " + std::to_string(site));
    auto blk = blockForPass(block, "probeBlock");
    if (!blk) return blk.error();
    QL_TRY_STATUS(createStatsStream());
    const std::int64_t widths[4] = {m_shape.dim, m_qDim, m_shape.dim, m_shape.ffnDim};
    auto created =
        DeviceStats::create(std::int32_t(widths[site]), options, m_statsStream, m_statsBlas);
    if (!created) return created.error();
    m_probeStats.emplace(std::move(created).value());
    m_probeBlock = block;
    m_probeSite = site;
    // Whatever happens below, the probe's accumulators go when this returns.
    struct Release {
        CudaLlamaRunner* r;
        ~Release()
        {
            (void)r->m_ctx->synchronize();
            (void)r->syncStats();
            r->m_memory.remove(r->m_probeBytes);
            r->m_probeBytes = 0;
            r->m_probeStats.reset();
            r->m_probeBlock = r->m_probeSite = -1;
        }
    } release{this};
    m_probeBytes = m_probeStats->deviceBytes();
    m_memory.add(m_probeBytes);

    const LlamaShape& s = m_shape;
    const std::int64_t T = m_blockSeqLen, chunk = blockChunkRows();
    const AttentionKernel kernel = attentionKernelFromEnvironment();
    cudaStream_t stream = m_ctx->stream();
    for (std::int64_t r0 = 0; r0 < m_blockRows; r0 += chunk) {
        const std::int64_t n = std::min(chunk, m_blockRows - r0);
        float* x = m_x.data() + std::size_t(r0 * s.dim);
        if (site >= 2) {
            // The attention's residual add comes before this site: work on a copy.
            QL_CUDA_TRY(cudaMemcpyAsync(m_xScratch.data(), x, std::size_t(n * s.dim) * 4,
                                        cudaMemcpyDeviceToDevice, stream));
            x = m_xScratch.data();
        }
        QL_TRY_STATUS(
            runBlock(**blk, block, x, n, T, std::int32_t(r0 / T), kernel, /*stopAt=*/site));
        if (!reportProgress(progress, double(r0 + n) / double(m_blockRows), "probe")) {
            QL_TRY_STATUS(m_ctx->synchronize());
            return makeError(ErrorCode::Cancelled, "the block pass was cancelled");
        }
    }
    QL_TRY_STATUS(m_ctx->synchronize());
    QL_TRY_STATUS(syncStats());
    // The statistics' scratch grew with the rows they saw: count it.
    m_memory.add(m_probeStats->deviceBytes() - std::min(m_probeBytes, m_probeStats->deviceBytes()));
    m_probeBytes = std::max(m_probeBytes, m_probeStats->deviceBytes());
    if (m_lanes.empty())
        if (auto lane = DownloadLane::create()) m_lanes.push_back(std::move(lane).value());
    try {
        return m_probeStats->download(m_lanes.empty() ? nullptr : &m_lanes[0]);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of host memory for the statistics");
    }
}

Status CudaLlamaRunner::advanceBlock(int block, const ProgressFn& progress)
{
    auto blk = blockForPass(block, "advanceBlock");
    if (!blk) return blk.error();
    const LlamaShape& s = m_shape;
    const std::int64_t T = m_blockSeqLen, chunk = blockChunkRows();
    const AttentionKernel kernel = attentionKernelFromEnvironment();
    for (std::int64_t r0 = 0; r0 < m_blockRows; r0 += chunk) {
        const std::int64_t n = std::min(chunk, m_blockRows - r0);
        QL_TRY_STATUS(runBlock(**blk, block, m_x.data() + std::size_t(r0 * s.dim), n, T,
                               std::int32_t(r0 / T), kernel));
        if (!reportProgress(progress, double(r0 + n) / double(m_blockRows), "block")) {
            QL_TRY_STATUS(m_ctx->synchronize());
            return makeError(ErrorCode::Cancelled, "the block pass was cancelled");
        }
    }
    return m_ctx->synchronize();
}

Status CudaLlamaRunner::runHead(std::int64_t rows, std::int64_t seqLen, const LogitsFn& onLogits)
{
    const LlamaShape& s = m_shape;
    cudaStream_t stream = m_ctx->stream();
    const DeviceTensor& head = s.tiedOutput ? m_embd : m_output;
    if (onLogits && m_hostLogits.size() < m_logits.size()) {
        auto p = PinnedBuffer<float>::allocate(m_logits.size());
        if (!p) return p.error();
        m_hostLogits = std::move(p).value();
    }
    const std::size_t vocab = std::size_t(s.vocab);
    for (std::int64_t r0 = 0; r0 < rows; r0 += m_logitRows) {
        const std::int64_t n = std::min(m_logitRows, rows - r0);
        // m_h holds m_rows rows (m_logitRows <= m_rows): normalise this chunk only.
        if (r0 == 0) QL_TRY_STATUS(waitStats(0));
        launchRmsNorm(m_x.data() + std::size_t(r0 * s.dim), n, s.dim, m_outputNorm.data(),
                      s.rmsNormEps, m_h.data(), m_type, stream);
        QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
        QL_TRY_STATUS(linear(*m_ctx, m_h.data(), m_type, s.dim, head.data(), n, s.dim, s.vocab,
                             m_logits.data(), DType::F32, s.vocab));
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
                                                           Precision precision,
                                                           const RunnerOptions& options)
{
    return CudaLlamaRunner::create(std::move(ctx), weights, precision, options);
}

}  // namespace ql::cuda
