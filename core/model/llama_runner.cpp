// The CPU runner, the weights view and the runner factory (see llama_runner.h).
#include "model/llama_runner.h"

#include <new>

namespace ql {

LlamaShape shapeOf(const LlamaConfig& c)
{
    LlamaShape s;
    s.blocks = c.blocks;
    s.dim = c.dim;
    s.ffnDim = c.ffnDim;
    s.heads = c.heads;
    s.kvHeads = c.kvHeads;
    s.headDim = c.headDim;
    s.vocab = c.vocab;
    s.rmsNormEps = c.rmsNormEps;
    s.attentionBias = c.attentionBias;
    s.tiedOutput = c.tiedOutput;
    s.ropeHalfSplit = c.rope.style == RopeStyle::HalfSplit;
    s.ropeInvFreq = c.rope.invFreq;
    s.ropeMagnitude = c.rope.magnitude;
    return s;
}

namespace {

template <class M>
std::span<const float> span(const M& m)
{
    return {m.data(), static_cast<std::size_t>(m.size())};
}

}  // namespace

LlamaWeightsView viewOf(const LlamaWeights& w)
{
    LlamaWeightsView v;
    v.shape = shapeOf(w.config());
    v.tokenEmbd = span(w.tokenEmbedding());
    if (!w.config().tiedOutput) v.output = span(w.outputHead());
    v.outputNorm = span(w.outputNorm());
    v.blocks.reserve(static_cast<std::size_t>(w.config().blocks));
    for (std::int64_t b = 0; b < w.config().blocks; ++b) {
        const LlamaBlockWeights& bw = w.block(b);
        LlamaBlockView bv;
        bv.attnNorm = span(bw.attnNorm);
        bv.ffnNorm = span(bw.ffnNorm);
        bv.wq = span(bw.wq);
        bv.wk = span(bw.wk);
        bv.wv = span(bw.wv);
        bv.wo = span(bw.wo);
        bv.bq = span(bw.bq);
        bv.bk = span(bw.bk);
        bv.bv = span(bw.bv);
        bv.gate = span(bw.gate);
        bv.up = span(bw.up);
        bv.down = span(bw.down);
        v.blocks.push_back(bv);
    }
    return v;
}

// Per-probe statistics of the CPU runner: entry block * 4 + site (runner.h).
class CpuLlamaRunner::Probe final : public ForwardProbe {
public:
    Probe(const LlamaShape& shape, const RunnerStatsOptions& options)
        : m_shape(shape), m_options(options)
    {
        reset();
    }
    void reset()
    {
        m_stats.clear();
        m_stats.reserve(static_cast<std::size_t>(m_shape.blocks * 4));
        const std::int64_t widths[4] = {m_shape.dim, m_shape.heads * m_shape.headDim, m_shape.dim,
                                        m_shape.ffnDim};
        for (std::int64_t b = 0; b < m_shape.blocks; ++b)
            for (std::int64_t w : widths)
                m_stats.emplace_back(static_cast<std::int32_t>(w), m_options.hessian,
                                     m_options.histogramBins, m_options.topK);
    }
    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        ActivationStats& s = m_stats[static_cast<std::size_t>(block) * 4 + int(group)];
        if (x.outerStride() == x.cols()) {
            s.add(std::span<const float>(x.data(), static_cast<std::size_t>(x.size())), x.rows(),
                  m_sample);
        } else {
            const MatrixXfRowMajor copy = x;
            s.add(std::span<const float>(copy.data(), static_cast<std::size_t>(copy.size())),
                  copy.rows(), m_sample);
        }
    }
    void setSample(std::int32_t sample) { m_sample = sample; }
    std::vector<ActivationStats> take()
    {
        std::vector<ActivationStats> out = std::move(m_stats);
        reset();
        return out;
    }

private:
    LlamaShape m_shape;
    RunnerStatsOptions m_options;
    std::int32_t m_sample = 0;
    std::vector<ActivationStats> m_stats;
};

CpuLlamaRunner::CpuLlamaRunner(const LlamaModel& model)
    : m_model(model), m_shape(shapeOf(model.config()))
{
}

CpuLlamaRunner::CpuLlamaRunner(LlamaModel& model)
    : m_model(model), m_mutable(&model), m_shape(shapeOf(model.config()))
{
}

CpuLlamaRunner::~CpuLlamaRunner() = default;

DeviceInfo CpuLlamaRunner::device() const
{
    return createCpuBackend()->device();
}

Status CpuLlamaRunner::forward(std::span<const std::int32_t> tokens, std::int64_t batch,
                               const LogitsFn& onLogits, const ProgressFn& progress,
                               std::int32_t firstSample)
{
    const auto total = static_cast<std::int64_t>(tokens.size());
    if (batch <= 0 || total == 0 || total % batch != 0)
        return makeError(ErrorCode::InvalidArgument,
                         "forward: " + std::to_string(total) + " tokens do not make " +
                             std::to_string(batch) + " sequences of equal length");
    const std::int64_t T = total / batch;
    for (std::int64_t i = 0; i < batch; ++i) {
        if (m_probe) m_probe->setSample(firstSample + static_cast<std::int32_t>(i));
        auto part = [&, i](double f, std::string_view what) {
            return reportProgress(progress, (double(i) + f) / double(batch), what);
        };
        LlamaModel::PositionFn each;
        if (onLogits)
            each = [&, i](std::int32_t pos, std::span<const float> logits) {
                onLogits(i, pos, logits);
            };
        QL_TRY_STATUS(m_model.forward(
            tokens.subspan(static_cast<std::size_t>(i * T), static_cast<std::size_t>(T)), each,
            part, m_probe.get()));
    }
    return {};
}

Status CpuLlamaRunner::enableStats(const RunnerStatsOptions& options)
{
    try {
        m_probe = std::make_unique<Probe>(m_shape, options);
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory for the activation statistics");
    }
    return {};
}

Result<std::vector<ActivationStats>> CpuLlamaRunner::takeStats()
{
    if (!m_probe)
        return makeError(ErrorCode::InvalidArgument, "takeStats: statistics are not enabled");
    try {
        return m_probe->take();
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory for the activation statistics");
    }
}

void CpuLlamaRunner::disableStats()
{
    m_probe.reset();
}

Status CpuLlamaRunner::replaceWeight(const std::string& name, std::span<const float> values)
{
    if (!m_mutable)
        return makeError(ErrorCode::Unsupported,
                         "this CPU runner reads a model it may not change: replace the weight in "
                         "the LlamaModel, or make the runner over a mutable model");
    return m_mutable->weights().replaceWeights(name, values);
}

std::uint64_t CpuLlamaRunner::peakMemoryBytes() const
{
    return m_model.weights().bytes();
}

namespace {

// The statistics of one site of one block (CpuLlamaRunner::probeBlock).
class SiteProbe final : public ForwardProbe {
public:
    SiteProbe(int block, int site, std::int32_t channels, const RunnerStatsOptions& options)
        : m_block(block),
          m_site(site),
          m_stats(channels, options.hessian, options.histogramBins, options.topK)
    {
    }
    void onLinearInput(int block, LinearGroup group,
                       const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        if (block != m_block || int(group) != m_site) return;
        m_reached = true;
        if (x.outerStride() == x.cols()) {
            m_stats.add(std::span<const float>(x.data(), std::size_t(x.size())), x.rows(),
                        m_sample);
        } else {
            const MatrixXfRowMajor copy = x;
            m_stats.add(std::span<const float>(copy.data(), std::size_t(copy.size())), copy.rows(),
                        m_sample);
        }
    }
    void setSample(std::int32_t s) { m_sample = s; }
    bool reached() const { return m_reached; }
    ActivationStats& stats() { return m_stats; }

private:
    int m_block, m_site;
    std::int32_t m_sample = 0;
    bool m_reached = false;
    ActivationStats m_stats;
};

}  // namespace

Status CpuLlamaRunner::beginBlocks(std::span<const std::int32_t> tokens, std::int64_t batch)
{
    const auto total = static_cast<std::int64_t>(tokens.size());
    if (batch <= 0 || total == 0 || total % batch != 0)
        return makeError(ErrorCode::InvalidArgument,
                         "beginBlocks: " + std::to_string(total) + " tokens do not make " +
                             std::to_string(batch) + " sequences of equal length");
    const std::int64_t T = total / batch;
    try {
        m_hidden.clear();
        m_hidden.reserve(std::size_t(batch));
        for (std::int64_t i = 0; i < batch; ++i) {
            auto h = m_model.embed(tokens.subspan(std::size_t(i * T), std::size_t(T)));
            if (!h) {
                m_hidden.clear();
                return h.error();
            }
            m_hidden.push_back(std::move(h).value());
        }
    } catch (const std::bad_alloc&) {
        m_hidden.clear();
        return makeError(ErrorCode::OutOfMemory, "out of memory for the hidden states of " +
                                                     std::to_string(batch) + " sequences of " +
                                                     std::to_string(T) + " tokens");
    }
    return {};
}

Result<ActivationStats> CpuLlamaRunner::probeBlock(int block, int site,
                                                   const RunnerStatsOptions& options,
                                                   const ProgressFn& progress)
{
    if (m_hidden.empty())
        return makeError(ErrorCode::InvalidArgument, "probeBlock: no beginBlocks");
    if (site < 0 || site > 3)
        return makeError(ErrorCode::InvalidArgument, "probeBlock: no site " + std::to_string(site));
    const std::int64_t widths[4] = {m_shape.dim, m_shape.heads * m_shape.headDim, m_shape.dim,
                                    m_shape.ffnDim};
    try {
        SiteProbe probe(block, site, std::int32_t(widths[site]), options);
        for (std::size_t s = 0; s < m_hidden.size(); ++s) {
            probe.setSample(std::int32_t(s));
            MatrixXfRowMajor h = m_hidden[s];
            QL_TRY_STATUS(m_model.runBlock(block, h, &probe));
            if (!reportProgress(progress, double(s + 1) / double(m_hidden.size()), "probe"))
                return makeError(ErrorCode::Cancelled, "the block pass was cancelled");
        }
        if (!probe.reached())
            return makeError(
                ErrorCode::InvalidArgument,
                "block " + std::to_string(block) + " never reached site " + std::to_string(site));
        return std::move(probe.stats());
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory for a block's statistics");
    }
}

Status CpuLlamaRunner::advanceBlock(int block, const ProgressFn& progress)
{
    if (m_hidden.empty())
        return makeError(ErrorCode::InvalidArgument, "advanceBlock: no beginBlocks");
    for (std::size_t s = 0; s < m_hidden.size(); ++s) {
        QL_TRY_STATUS(m_model.runBlock(block, m_hidden[s]));
        if (!reportProgress(progress, double(s + 1) / double(m_hidden.size()), "block"))
            return makeError(ErrorCode::Cancelled, "the block pass was cancelled");
    }
    return {};
}

Result<std::unique_ptr<ModelRunner>> createLlamaRunner(Backend& backend, const LlamaModel& model,
                                                       Precision precision,
                                                       const RunnerOptions& options)
{
    if (backend.device().isGpu) {
        try {
            return backend.createRunner(viewOf(model.weights()), precision, options);
        } catch (const std::bad_alloc&) {
            return makeError(ErrorCode::OutOfMemory, "out of host memory for the weights view");
        }
    }
    if (precision != Precision::Float32)
        return makeError(ErrorCode::Unsupported,
                         std::string("precision ") + precisionName(precision) +
                             " needs a CUDA GPU; the CPU runs float32 (--precision f32)");
    return std::unique_ptr<ModelRunner>(std::make_unique<CpuLlamaRunner>(model));
}

Status RunnerLogitsSource::forward(std::span<const TokenId> tokens, const PositionFn& onLogits,
                                   const ProgressFn& progress)
{
    ModelRunner::LogitsFn each;
    if (onLogits)
        each = [&](std::int64_t, std::int32_t pos, std::span<const float> logits) {
            onLogits(pos, logits);
        };
    return m_runner.forward(tokens, 1, each, progress);
}

}  // namespace ql
