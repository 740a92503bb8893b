// Model runners of the Llama family (interface in compute/runner.h): the weights view the CUDA
// runner uploads from, the CPU runner over LlamaModel (the reference), the factory that picks one
// for a backend, and the evaluator's view of a runner.
#pragma once

#include <map>
#include <memory>

#include "compute/runner.h"
#include "eval/evaluator.h"
#include "model/llama.h"

namespace ql {

LlamaShape shapeOf(const LlamaConfig& config);
// Spans over `weights`' float32 tensors; valid while `weights` lives and is not replaced.
LlamaWeightsView viewOf(const LlamaWeights& weights);

// LlamaModel's forward pass, one sequence at a time. Statistics go through ForwardProbe into
// ActivationStats, as calibrate() gathers them. Runs float32 only.
class CpuLlamaRunner final : public ModelRunner {
public:
    // replaceWeight is refused: the model is read-only through this runner.
    explicit CpuLlamaRunner(const LlamaModel& model);
    // replaceWeight writes into `model`.
    explicit CpuLlamaRunner(LlamaModel& model);
    ~CpuLlamaRunner() override;

    DeviceInfo device() const override;
    Precision precision() const override { return Precision::Float32; }
    const LlamaShape& shape() const override { return m_shape; }
    Status forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                   const LogitsFn& onLogits, const ProgressFn& progress = {},
                   std::int32_t firstSample = 0) override;
    Status enableStats(const RunnerStatsOptions& options) override;
    Result<std::vector<ActivationStats>> takeStats() override;
    void disableStats() override;
    Status replaceWeight(const std::string& name, std::span<const float> values) override;
    std::uint64_t peakMemoryBytes() const override;  // the float32 weights held on the host
    // Each sequence's hidden state is its own matrix, run through a block one at a time
    // (LlamaModel::runBlock); a probe runs the whole block on a copy.
    Status beginBlocks(std::span<const std::int32_t> tokens, std::int64_t batch) override;
    Result<ActivationStats> probeBlock(int block, int site, const RunnerStatsOptions& options,
                                       const ProgressFn& progress = {}) override;
    Status advanceBlock(int block, const ProgressFn& progress = {}) override;
    void endBlocks() override { m_hidden.clear(); }

private:
    class Probe;
    const LlamaModel& m_model;
    LlamaModel* m_mutable = nullptr;
    LlamaShape m_shape;
    std::unique_ptr<Probe> m_probe;
    std::vector<MatrixXfRowMajor> m_hidden;  // beginBlocks' sequences
};

// A runner of `model` on `backend`'s device: the backend's own runner on a GPU, else a
// CpuLlamaRunner reading `model`. Keep `model` alive as long as the runner: the CPU runner reads
// it, and so does a GPU runner that streams its weights (options.residency; with Resident the
// weights are uploaded and the model may go). Precision::BFloat16 on the CPU is Unsupported.
Result<std::unique_ptr<ModelRunner>> createLlamaRunner(Backend& backend, const LlamaModel& model,
                                                       Precision precision,
                                                       const RunnerOptions& options = {});

// The evaluator's view of a runner: one window per forward (batch 1).
class RunnerLogitsSource : public LogitsSource {
public:
    explicit RunnerLogitsSource(ModelRunner& runner) : m_runner(runner) {}
    Status forward(std::span<const TokenId> tokens, const PositionFn& onLogits,
                   const ProgressFn& progress) override;
    std::int32_t vocabSize() const override
    {
        return static_cast<std::int32_t>(m_runner.shape().vocab);
    }

private:
    ModelRunner& m_runner;
};

}  // namespace ql
