// Per-tensor sensitivity: one runner holds the model; each (tensor, format) swaps in the tensor's
// decoded values, runs the evaluation windows and compares with reference log-probabilities kept
// on the host, then swaps the original values back (see sensitivity.h).
#include "layout/sensitivity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>

#include "eval/evaluator.h"
#include "layout/layout.h"
#include "layout/size.h"
#include "model/llama_runner.h"
#include "quant/ggml_dequant.h"
#include "quant/quantize_model.h"

namespace ql {

const SensitivityTensor* SensitivityTable::find(const std::string& name) const
{
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

int SensitivityTable::formatIndex(const std::string& format) const
{
    for (std::size_t i = 0; i < formats.size(); ++i)
        if (formats[i] == format) return int(i);
    return -1;
}

std::vector<QuantFormat> defaultSensitivityFormats()
{
    std::vector<QuantFormat> out;
    for (const char* f : {"q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0", "q4_0", "q4_1", "q5_0",
                          "q5_1", "f16", "int4:g32", "int8"})
        out.push_back(*parseQuantFormat(f));
    return out;
}

namespace {

bool isCandidate(const TensorInfo& t, const SensitivityOptions& options)
{
    if (t.shape.size() != 2) return false;
    const bool embed = t.role == TensorRole::TokenEmbd || t.role == TensorRole::Output;
    if (!isLinearWeight(t.role) && !embed) return false;
    if (embed && !options.embeddings) return false;
    return globMatch(options.tensors, t.name);
}

// Log-probabilities of the scored positions of every window, row after row.
struct Reference {
    std::vector<float> logProbs;  // positions x vocab
    std::vector<std::int32_t> top;
    std::int64_t positions = 0;
};

template <class Fn>
Status runWindows(ModelRunner& runner, const std::vector<TokenWindow>& windows, Fn&& onRow)
{
    std::int64_t row = 0;
    for (const TokenWindow& w : windows) {
        const std::int32_t first = std::max<std::int32_t>(w.scoreFrom - 1, 0);
        const std::int32_t last = std::int32_t(w.tokens.size()) - 2;
        std::vector<std::int32_t> tokens(w.tokens.begin(), w.tokens.end());
        Status st = runner.forward(
            tokens, 1, [&](std::int64_t, std::int32_t pos, std::span<const float> logits) {
                if (pos < first || pos > last) return;
                onRow(row++, logits);
            });
        if (!st) return st;
    }
    return {};
}

}  // namespace

Result<SensitivityTable> measureSensitivity(const Model& model, Backend& backend,
                                            const std::vector<TokenWindow>& windows,
                                            const CalibrationResult* calibration,
                                            const SensitivityOptions& options,
                                            const ProgressFn& progress)
{
    const auto start = std::chrono::steady_clock::now();
    if (windows.empty())
        return makeError(ErrorCode::InvalidArgument, "sensitivity needs at least one window");
    const std::vector<QuantFormat> formats =
        options.formats.empty() ? defaultSensitivityFormats() : options.formats;
    SensitivityTable table;
    for (const auto& f : formats) table.formats.push_back(formatToString(f));
    table.windows = std::int32_t(windows.size());
    table.ctx = std::int32_t(windows.front().tokens.size());

    auto llama = LlamaModel::create(model);
    if (!llama) return llama.error();
    std::unique_ptr<ModelRunner> runner;
    if (backend.device().isGpu) {
        auto r = createLlamaRunner(backend, *llama, Precision::Float32);
        if (!r) return r.error();
        runner = std::move(r).value();
    } else {
        runner = std::make_unique<CpuLlamaRunner>(*llama);
    }
    table.device = runner->device().name;
    const std::int64_t vocab = runner->shape().vocab;

    Reference ref;
    for (const auto& w : windows)
        ref.positions += std::max<std::int64_t>(
            0, std::int64_t(w.tokens.size()) - 1 - std::max<std::int32_t>(w.scoreFrom - 1, 0));
    table.positions = ref.positions;
    ref.logProbs.resize(std::size_t(ref.positions * vocab));
    ref.top.resize(std::size_t(ref.positions));
    QL_TRY_STATUS(runWindows(*runner, windows, [&](std::int64_t row, std::span<const float> l) {
        std::span<float> out(ref.logProbs.data() + row * vocab, std::size_t(vocab));
        logSoftmax(l, out);
        ref.top[std::size_t(row)] = std::int32_t(std::max_element(l.begin(), l.end()) - l.begin());
    }));

    std::vector<const TensorInfo*> candidates;
    for (const TensorInfo& t : model.tensors)
        if (isCandidate(t, options)) candidates.push_back(&t);
    if (candidates.empty())
        return makeError(ErrorCode::InvalidArgument,
                         "no tensor matches '" + options.tensors + "' for a sensitivity sweep");
    const double total = double(candidates.size() * formats.size());
    double done = 0;
    std::vector<float> logq(static_cast<std::size_t>(vocab));
    QuantizeOptions qopts;
    qopts.useImportance = false;  // plain rtn, as an export without a session does
    qopts.hessianError = calibration != nullptr;

    for (const TensorInfo* t : candidates) {
        SensitivityTensor st;
        st.name = t->name;
        st.block = t->block;
        st.role = tensorRoleName(t->role);
        st.rows = t->rows();
        st.cols = t->cols();
        const std::span<const float> live = llama->weights().values(t->name);
        if (live.empty())
            return makeError(ErrorCode::InvalidArgument, "the runner holds no tensor " + t->name);
        const std::vector<float> original(live.begin(), live.end());
        std::map<std::string, SensitivityCell> byStored;
        for (const QuantFormat& f : formats) {
            if (!reportProgress(progress, done / total, t->name))
                return makeError(ErrorCode::Cancelled, "sensitivity sweep cancelled");
            done += 1;
            auto layout = Layout::parse(t->name + "=" + formatToString(f));
            if (!layout) return layout.error();
            auto plan = layout->resolve(model);
            if (!plan) return plan.error();
            const TensorPlan* p = plan->find(t->name);
            const std::string stored = formatToString(p->format);
            if (auto it = byStored.find(stored); it != byStored.end()) {
                st.cells.push_back(it->second);
                continue;
            }
            SensitivityCell cell;
            cell.stored = stored;
            auto size = estimateSize(model, *plan, {});
            if (!size) return size.error();
            cell.bytes = size->find(t->name)->bytes;
            if (p->format == floatFormat(TensorType::F32)) {
                cell.deltaKl = 0;
                cell.sameTop = 1;
                cell.hessianError = 0;
            } else {
                auto q = quantizeTensor(model, *p, calibration, qopts);
                if (!q) return q.error();
                if (q->report.outputError && calibration) {
                    const ProbeStats* probe = calibration->find(q->report.probe);
                    const double tokens =
                        probe ? std::max<double>(1, double(probe->stats.tokenCount())) : 1;
                    cell.hessianError = q->report.outputError->weighted / tokens;
                }
                auto values = q->quantized.dequantize();
                if (!values) return values.error();
                QL_TRY_STATUS(runner->replaceWeight(t->name, *values));
                double kl = 0;
                std::int64_t same = 0;
                Status run =
                    runWindows(*runner, windows, [&](std::int64_t row, std::span<const float> l) {
                        logSoftmax(l, logq);
                        const float* lp = ref.logProbs.data() + row * vocab;
                        double k = 0;
                        for (std::int64_t v = 0; v < vocab; ++v)
                            k += std::exp(double(lp[v])) * (double(lp[v]) - double(logq[v]));
                        kl += std::max(0.0, k);
                        const auto top = std::max_element(l.begin(), l.end()) - l.begin();
                        if (top == ref.top[std::size_t(row)]) ++same;
                    });
                QL_TRY_STATUS(runner->replaceWeight(t->name, original));
                if (!run) return run.error();
                const double n = double(std::max<std::int64_t>(1, ref.positions));
                cell.deltaKl = kl / n;
                cell.sameTop = double(same) / n;
                // The diagonal-Hessian proxy needs only sum x^2 per input channel.
                if (calibration) {
                    if (const ProbeStats* probe = calibration->find(q->report.probe)) {
                        const auto& sq = probe->stats.sumSquare();
                        const double tokens = std::max<double>(1, probe->stats.tokenCount());
                        double e = 0;
                        const std::int64_t rows = t->rows(), cols = t->cols();
                        if (std::int64_t(sq.size()) == cols)
                            for (std::int64_t r = 0; r < rows; ++r)
                                for (std::int64_t c = 0; c < cols; ++c) {
                                    const double d = double((*values)[std::size_t(r * cols + c)]) -
                                                     original[std::size_t(r * cols + c)];
                                    e += sq[std::size_t(c)] / tokens * d * d;
                                }
                        cell.actWeightedMse = e;
                    }
                }
            }
            byStored[stored] = cell;
            st.cells.push_back(cell);
        }
        table.tensors.push_back(std::move(st));
    }
    QL_TRY_STATUS(computeProxies(model, calibration, table));
    table.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    reportProgress(progress, 1.0, "sensitivity done");
    return table;
}

Status computeProxies(const Model& model, const CalibrationResult* calibration,
                      SensitivityTable& table, const ProgressFn& progress)
{
    for (std::size_t i = 0; i < table.tensors.size(); ++i) {
        SensitivityTensor& st = table.tensors[i];
        const TensorInfo* info = model.find(st.name);
        if (!info) return makeError(ErrorCode::InvalidArgument, "the model has no " + st.name);
        auto w = dequantizeTensor(model, *info);
        if (!w) return w.error();
        const double n = double(w->size());
        double mean = 0;
        for (float v : *w) mean += v;
        mean /= n;
        double m2 = 0, m4 = 0;
        for (float v : *w) {
            const double d = v - mean;
            m2 += d * d;
            m4 += d * d * d * d;
        }
        m2 /= n;
        m4 /= n;
        st.kurtosis = m2 > 0 ? m4 / (m2 * m2) : kNoValue;
        const double limit = 3 * std::sqrt(m2);
        std::int64_t outliers = 0;
        for (float v : *w)
            if (std::fabs(v - mean) > limit) ++outliers;
        st.outlierShare = double(outliers) / n;
        if (calibration) {
            if (const ProbeStats* probe = calibration->find(inputProbeName(*info))) {
                const double tokens = std::max<double>(1, probe->stats.tokenCount());
                double e = 0;
                for (double s : probe->stats.sumSquare()) e += s / tokens;
                st.activationEnergy = e;
            }
        }
        if (!reportProgress(progress, double(i + 1) / table.tensors.size(), "proxies"))
            return makeError(ErrorCode::Cancelled, "proxies cancelled");
    }
    return {};
}

namespace {

std::vector<double> ranks(const std::vector<double>& v)
{
    std::vector<std::size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < idx.size();) {
        std::size_t j = i;
        while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
        const double avg = 0.5 * double(i + j) + 1;
        for (std::size_t k = i; k <= j; ++k) r[idx[k]] = avg;
        i = j + 1;
    }
    return r;
}

}  // namespace

double spearman(const std::vector<double>& x, const std::vector<double>& y)
{
    std::vector<double> a, b;
    for (std::size_t i = 0; i < x.size() && i < y.size(); ++i)
        if (std::isfinite(x[i]) && std::isfinite(y[i])) {
            a.push_back(x[i]);
            b.push_back(y[i]);
        }
    if (a.size() < 3) return kNoValue;
    const auto ra = ranks(a), rb = ranks(b);
    const double n = double(ra.size());
    const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n;
    const double mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
    double sab = 0, saa = 0, sbb = 0;
    for (std::size_t i = 0; i < ra.size(); ++i) {
        sab += (ra[i] - ma) * (rb[i] - mb);
        saa += (ra[i] - ma) * (ra[i] - ma);
        sbb += (rb[i] - mb) * (rb[i] - mb);
    }
    if (saa <= 0 || sbb <= 0) return kNoValue;
    return sab / std::sqrt(saa * sbb);
}

std::vector<ProxyCorrelation> proxyCorrelations(const SensitivityTable& table)
{
    std::vector<ProxyCorrelation> out;
    const std::size_t nf = table.formats.size();
    // Per-cell proxies: per format, and pooled over every (tensor, format) pair.
    auto cellProxy = [&](const char* name, double SensitivityCell::*field) {
        ProxyCorrelation c;
        c.proxy = name;
        std::vector<double> allX, allY;
        for (std::size_t f = 0; f < nf; ++f) {
            std::vector<double> x, y;
            for (const auto& t : table.tensors) {
                const SensitivityCell& cell = t.cells[f];
                if (cell.stored == "f32") continue;
                x.push_back(cell.*field);
                y.push_back(cell.deltaKl);
            }
            c.perFormat.push_back(spearman(x, y));
            allX.insert(allX.end(), x.begin(), x.end());
            allY.insert(allY.end(), y.begin(), y.end());
        }
        c.pooled = spearman(allX, allY);
        for (std::size_t i = 0; i < allX.size(); ++i)
            if (std::isfinite(allX[i]) && std::isfinite(allY[i])) ++c.pairs;
        out.push_back(std::move(c));
    };
    cellProxy("hessian_error", &SensitivityCell::hessianError);
    cellProxy("act_weighted_mse", &SensitivityCell::actWeightedMse);
    // Per-tensor proxies: against ΔKL at each format; "pooled" is the mean over formats.
    auto tensorProxy = [&](const char* name, double SensitivityTensor::*field) {
        ProxyCorrelation c;
        c.proxy = name;
        double sum = 0;
        int count = 0;
        for (std::size_t f = 0; f < nf; ++f) {
            std::vector<double> x, y;
            for (const auto& t : table.tensors) {
                if (t.cells[f].stored == "f32") continue;
                x.push_back(t.*field);
                y.push_back(t.cells[f].deltaKl);
            }
            const double rho = spearman(x, y);
            c.perFormat.push_back(rho);
            if (std::isfinite(rho)) {
                sum += rho;
                ++count;
                c.pairs += int(x.size());
            }
        }
        c.pooled = count ? sum / count : kNoValue;
        out.push_back(std::move(c));
    };
    tensorProxy("activation_energy", &SensitivityTensor::activationEnergy);
    tensorProxy("kurtosis", &SensitivityTensor::kurtosis);
    tensorProxy("outlier_share", &SensitivityTensor::outlierShare);
    return out;
}

}  // namespace ql
