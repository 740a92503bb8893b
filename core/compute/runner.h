// A model runner: one Llama-family model resident on a compute device, running whole causal
// forward passes over batches of token sequences and, when asked, collecting the activation
// statistics of every linear-layer input on the device (calibration).
//
// The CPU runner (model/llama_runner.h) wraps LlamaModel and is the reference; the CUDA runner
// (kernels/) uploads the weights once and runs every op on the GPU. Both see the weights through
// LlamaWeightsView: plain spans over float32 data, so kernels/ needs neither Eigen nor Qt.
//
// Statistics are indexed like calib's probes: entry block * 4 + site, with site 0 attn_qkv (the
// attention-norm output, read by q/k/v), 1 attn_output (the attention output, read by wo),
// 2 ffn_gate_up (the ffn-norm output, read by gate/up), 3 ffn_down (silu(gate)·up, read by down).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "calib/activation_stats.h"
#include "compute/backend.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

enum class Precision {
    Float32,   // float32 storage and GEMMs (no TF32): matches the CPU path to float rounding
    BFloat16,  // bf16 weights and activations, float32 accumulation and norms: the fast path
};
const char* precisionName(Precision p);  // "f32", "bf16"
// "f32" or "bf16" (also "float32", "bfloat16"); nullopt otherwise.
std::optional<Precision> parsePrecision(std::string_view name);

struct LlamaShape {
    std::int64_t blocks = 0, dim = 0, ffnDim = 0, heads = 0, kvHeads = 0, headDim = 0, vocab = 0;
    float rmsNormEps = 1e-5f;
    bool attentionBias = false;
    bool tiedOutput = false;
    bool ropeHalfSplit = false;       // RoPE pairs (x[i], x[i+d/2]); else adjacent (x[2i], x[2i+1])
    std::vector<double> ropeInvFreq;  // headDim / 2 radians per position
    double ropeMagnitude = 1.0;       // multiplies cos and sin (YaRN)
};

// Row-major float32 tensors, weights {out, in} as in LlamaWeights; bq/bk/bv empty without bias,
// output empty when the head is tied to tokenEmbd.
struct LlamaBlockView {
    std::span<const float> attnNorm, ffnNorm, wq, wk, wv, wo, bq, bk, bv, gate, up, down;
};
struct LlamaWeightsView {
    LlamaShape shape;
    std::span<const float> tokenEmbd, output, outputNorm;
    std::vector<LlamaBlockView> blocks;
};

// Where a GPU runner keeps the transformer blocks' weights. Resident: all on the device, uploaded
// once. Streamed: on the host; each forward uploads them block by block (the next block's upload
// overlaps the current block's compute) and runs every sequence of the call through a block before
// the next, so a model larger than the GPU still runs; statistics then hold one block's
// accumulators on the device at a time and move each finished block's to the host. Auto streams
// when the resident weights and a working set would not fit the memory limit.
enum class WeightResidency { Auto, Resident, Streamed };

struct RunnerOptions {
    WeightResidency residency = WeightResidency::Auto;
    // Device bytes the runner may plan for; 0: the device's free memory when it is created.
    std::uint64_t memoryLimit = 0;
};

struct RunnerStatsOptions {
    HessianPrecision hessian = HessianPrecision::Float32;
    int histogramBins = 2048;
    int topK = 32;
};

class ModelRunner {
public:
    // Logits of one position of one sequence, vocab floats on the host, valid during the call.
    using LogitsFn = std::function<void(std::int64_t sequence, std::int32_t position,
                                        std::span<const float> logits)>;

    virtual ~ModelRunner() = default;
    virtual DeviceInfo device() const = 0;
    virtual Precision precision() const = 0;
    virtual const LlamaShape& shape() const = 0;

    // Causal forward of `batch` sequences of tokens.size() / batch tokens each (row-major), at
    // positions 0..T-1. Every position's logits go to onLogits in order (sequence, position);
    // with an empty onLogits the head still runs but nothing is copied back (benchmarks).
    // While statistics are enabled, sequence i counts as calibration sample firstSample + i.
    // Returns when the work is done; a runner is driven by one thread at a time.
    virtual Status forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                           const LogitsFn& onLogits, const ProgressFn& progress = {},
                           std::int32_t firstSample = 0) = 0;

    // From now on every forward adds its linear-layer inputs to per-probe statistics.
    virtual Status enableStats(const RunnerStatsOptions& options) = 0;
    // The statistics gathered since enableStats (blocks * 4 entries, see above); collection
    // continues afresh.
    virtual Result<std::vector<ActivationStats>> takeStats() = 0;
    // Stops collecting and frees the accumulators: later forwards run as if never enabled.
    virtual void disableStats() = 0;

    // Swap in new values for one tensor ("blk.0.attn_q.weight", same element count).
    virtual Status replaceWeight(const std::string& name, std::span<const float> values) = 0;

    // The most device memory this runner has held (weights, activations, statistics), bytes.
    virtual std::uint64_t peakMemoryBytes() const = 0;
    // Device memory held now, bytes.
    virtual std::uint64_t memoryBytes() const { return peakMemoryBytes(); }

    // Whether each forward streams the weights from the host (WeightResidency::Streamed): callers
    // then pass as many sequences per call as they can (calibrateWindows passes all of them).
    virtual bool streamsWeights() const { return false; }

    // Block by block, for true-sequential quantization (quant/gptq_sequential.h). beginBlocks
    // embeds `batch` sequences of tokens.size() / batch tokens and keeps their hidden states with
    // the runner, on its device. probeBlock runs them through block `block` as far as the input of
    // `site` (0..3, as the statistics' sites above) and returns the statistics of that input over
    // every sequence (sequence i is sample i), leaving the hidden states as they were;
    // advanceBlock runs them through the whole block and keeps its output; endBlocks frees them.
    // Weights replaced in between (replaceWeight) take effect at the next call. Statistics turned
    // on with enableStats see none of this. forward() is refused between beginBlocks and
    // endBlocks. Memory: the hidden states (tokens x dim floats) and one probe's statistics on
    // top of the runner's own.
    virtual Status beginBlocks(std::span<const std::int32_t> tokens, std::int64_t batch) = 0;
    virtual Result<ActivationStats> probeBlock(int block, int site,
                                               const RunnerStatsOptions& options,
                                               const ProgressFn& progress = {}) = 0;
    virtual Status advanceBlock(int block, const ProgressFn& progress = {}) = 0;
    virtual void endBlocks() = 0;
};

}  // namespace ql
