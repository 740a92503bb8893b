// Whole-model quantization. Tensors are done one after another, each on all cores (quantizeRtn
// splits rows over threads; GPTQ's matrix products run on Eigen's threads), which keeps memory at
// one tensor's float copy plus its encoding and makes progress and cancellation simple: the overall
// fraction is weights done / all weights. The per-tensor work is a free function so the GGUF writer
// can stream through it without ever holding the whole quantized model.
#include "quant/quantize_model.h"

#include <chrono>
#include <cstdio>
#include <cstring>

#include "compute/backend.h"
#include "quant/ggml_dequant.h"
#include "quant/gptq.h"
#include "quant/rtn.h"
#include "util/pause_gate.h"

namespace ql {

std::string inputProbeName(const TensorInfo& tensor)
{
    if (tensor.block < 0) return {};
    switch (tensor.role) {
        case TensorRole::AttnQ:
        case TensorRole::AttnK:
        case TensorRole::AttnV: return probeName(tensor.block, ProbeSite::AttnQkv);
        case TensorRole::AttnOutput: return probeName(tensor.block, ProbeSite::AttnOutput);
        case TensorRole::FfnGate:
        case TensorRole::FfnUp: return probeName(tensor.block, ProbeSite::FfnGateUp);
        case TensorRole::FfnDown: return probeName(tensor.block, ProbeSite::FfnDown);
        default: return {};
    }
}

Status checkMethodsAvailable(const Layout& layout, const LayoutPlan& plan)
{
    for (const TensorPlan& p : plan.tensors) {
        if (p.method == QuantMethod::Rtn) continue;
        if (p.method == QuantMethod::Gptq) {
            if (auto o = parseGptqOptions(p.methodOptions); !o)
                return makeError(ErrorCode::InvalidArgument,
                                 describeRule(layout, p.rule) + ": " + o.error().message);
            continue;
        }
        if (auto o = parseAwqOptions(p.methodOptions); !o)
            return makeError(ErrorCode::InvalidArgument,
                             describeRule(layout, p.rule) + ": " + o.error().message);
    }
    return {};
}

bool runsGptq(const Model& model, const TensorPlan& plan)
{
    if (plan.method != QuantMethod::Gptq || plan.format.kind == QuantKind::Float) return false;
    const TensorInfo* info = model.find(plan.name);
    if (!info || inputProbeName(*info).empty()) return false;
    // A llama.cpp tensor kept in its own type is copied, not re-encoded.
    return !(plan.format.kind == QuantKind::Ggml && plan.format.type == info->type);
}

namespace {

// Why `calibration` cannot give GPTQ the Hessian of `probe` for a tensor of `cols` columns, or
// "" when it can.
std::string missingHessian(const CalibrationResult* calibration, const std::string& probe,
                           std::int64_t cols)
{
    if (!calibration)
        return "gptq needs the Hessian of its input " + probe + ", and no calibration was given";
    const ProbeStats* p = calibration->find(probe);
    if (!p) return "gptq needs the Hessian of its input " + probe + ", which the calibration lacks";
    if (p->stats.channels() != cols)
        return "gptq needs the Hessian of its input " + probe + ": the calibration's has " +
               std::to_string(p->stats.channels()) + " channels, the tensor " +
               std::to_string(cols) + " columns";
    if (p->stats.hessianPrecision() == HessianPrecision::None)
        return "gptq needs the Hessian of its input " + probe +
               ", and the calibration holds none (it was made with --hessian none; calibrate "
               "again with --hessian f32 or f64)";
    return {};
}

}  // namespace

Status checkGptqCalibration(const Model& model, const LayoutPlan& plan,
                            const CalibrationResult* calibration)
{
    for (const TensorPlan& p : plan.tensors) {
        if (!runsGptq(model, p)) continue;
        const std::string why =
            missingHessian(calibration, inputProbeName(*model.find(p.name)), p.cols);
        if (!why.empty()) return makeError(ErrorCode::InvalidArgument, p.name + ": " + why);
    }
    return {};
}

std::string gptqSummary(const TensorReport& report)
{
    if (!report.gptq) return {};
    const GptqReport& g = *report.gptq;
    auto sci = [](double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.3e", v);
        return std::string(buf);
    };
    std::string s = report.plan.name + " " + formatToString(report.plan.format) + ": loss " +
                    sci(g.loss) + " vs rtn " + sci(g.rtnLoss);
    if (g.rtnLoss > 0) {
        char buf[32];
        std::snprintf(buf, sizeof buf, " (%+.1f%%)", 100.0 * (g.loss / g.rtnLoss - 1.0));
        s += buf;
    }
    if (report.outputError)
        s += ", output error " + sci(report.outputError->relative) + " vs rtn " +
             sci(g.rtnError.relative) + " (relative)";
    char damp[80];
    std::snprintf(damp, sizeof damp, ", damp %.3g", g.damp);
    s += damp;
    if (!g.dampRaises.empty()) {
        std::snprintf(damp, sizeof damp, " (raised %zu time%s from %.3g)", g.dampRaises.size(),
                      g.dampRaises.size() == 1 ? "" : "s", g.options.damp);
        s += damp;
    }
    if (g.deadColumns > 0) s += ", " + std::to_string(g.deadColumns) + " dead columns";
    return s;
}

std::string awqSummary(const TensorReport& report)
{
    if (!report.awq) return {};
    const AwqReport& a = *report.awq;
    char buf[256];
    // The search's errors are relative to its own reference: a tensor a later fold rescales
    // (ffn_up's rows, by ffn_down's scales) has another tr(W H W^T) by the time it is quantized,
    // though its relative row errors are the same.
    const double ref =
        a.reference > 0 ? a.reference : (report.outputError ? report.outputError->reference : 0);
    const double rtn = ref > 0 ? a.rtnError / ref : a.rtnError;
    const double awq = a.options.clip && report.outputError
                           ? report.outputError->relative
                           : (ref > 0 ? a.awqError / ref : a.awqError);
    std::snprintf(buf, sizeof buf, ": alpha %.2f, output error %.3e vs rtn %.3e%s (%+.1f%%)",
                  a.alpha, awq, rtn, ref > 0 ? " (relative)" : "",
                  rtn > 0 ? 100.0 * (awq / rtn - 1.0) : 0.0);
    std::string s = report.plan.name + " " + formatToString(report.plan.format) + buf;
    if (a.options.clip) {
        std::snprintf(buf, sizeof buf, ", mean clip %.3f", a.meanClip);
        s += buf;
    }
    return s;
}

const TensorQuantization* QuantizedModel::find(std::string_view name) const
{
    for (const auto& t : tensors)
        if (t.report.plan.name == name) return &t;
    return nullptr;
}

std::int64_t QuantizedModel::weightCount() const
{
    std::int64_t n = 0;
    for (const auto& t : tensors) n += t.report.plan.elementCount();
    return n;
}

std::uint64_t QuantizedModel::storedBits() const
{
    std::uint64_t n = 0;
    for (const auto& t : tensors) n += t.report.storedBits;
    return n;
}

std::size_t QuantizedModel::finishedCount() const
{
    std::size_t n = 0;
    for (const auto& t : tensors) n += t.report.unfinished ? 0 : 1;
    return n;
}

std::vector<GptqPlannedLayer> plannedGptqLayers(const Model& model, const LayoutPlan& plan)
{
    std::vector<GptqPlannedLayer> layers;
    for (const TensorPlan& p : plan.tensors)
        if (runsGptq(model, p))
            layers.push_back({p.name, p.rows, p.cols, formatToString(p.format)});
    return layers;
}

Status completePartialModel(const Model& model, const std::vector<bool>& finished,
                            QuantizedModel& out)
{
    const std::size_t n = out.plan.tensors.size();
    if (out.tensors.size() < n) out.tensors.resize(n);
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (i < finished.size() && finished[i]) continue;
        TensorPlan& p = out.plan.tensors[i];
        const TensorInfo* info = model.find(p.name);
        if (!info)
            return makeError(ErrorCode::InvalidArgument, "the model has no tensor " + p.name);
        const QuantFormat source =
            traits(info->type).blockSize == 1 ? floatFormat(info->type) : ggmlFormat(info->type);
        p.requested = source;
        p.format = source;
        p.method = QuantMethod::Rtn;
        p.methodOptions.clear();
        p.fallbackReason.clear();
        TensorQuantization t;
        t.report.plan = p;
        t.report.probe = inputProbeName(*info);
        t.report.copied = true;
        t.report.unfinished = true;
        t.report.note = "not quantized: the run stopped first (kept as in the source)";
        const auto bytes = model.data(*info);
        t.quantized.format = source;
        t.quantized.rows = p.rows;
        t.quantized.cols = p.cols;
        t.quantized.blocks.assign(bytes.begin(), bytes.end());
        t.report.storedBits = t.quantized.storedBits();
        out.tensors[i] = std::move(t);
        ++kept;
    }
    std::erase_if(out.plan.fallbacks, [&](const LayoutFallback& f) {
        const TensorQuantization* t = out.find(f.tensor);
        return t && t->report.unfinished;
    });
    out.partial = kept > 0;
    if (out.partial)
        out.plan.warnings.push_back("partial model: the run was cancelled after " +
                                    std::to_string(n - kept) + " of " + std::to_string(n) +
                                    " tensors; the other " + std::to_string(kept) +
                                    " are kept as in the source");
    return {};
}

Result<TensorQuantization> quantizeTensor(const Model& model, const TensorPlan& plan,
                                          const CalibrationResult* calibration,
                                          const QuantizeOptions& options,
                                          const ProgressFn& progress)
{
    const auto start = std::chrono::steady_clock::now();
    const TensorInfo* info = model.find(plan.name);
    if (!info) return makeError(ErrorCode::InvalidArgument, "the model has no tensor " + plan.name);
    GptqOptions gptqOptions;
    if (plan.method == QuantMethod::Gptq) {
        auto o = parseGptqOptions(plan.methodOptions);
        if (!o) return makeError(ErrorCode::InvalidArgument, plan.name + ": " + o.error().message);
        gptqOptions = *o;
        gptqOptions.threads = options.threads;
    }
    if (info->elementCount() != plan.elementCount())
        return makeError(ErrorCode::InvalidArgument,
                         plan.name + ": the plan was made for another shape");
    if (!reportProgress(progress, 0.0, plan.name) ||
        (options.pauseGate &&
         !options.pauseGate->pass([&] { return reportProgress(progress, 0.0, "paused"); })))
        return makeError(ErrorCode::Cancelled, "quantization cancelled");

    TensorQuantization out;
    TensorReport& rep = out.report;
    rep.plan = plan;
    rep.probe = inputProbeName(*info);

    auto decoded = dequantizeTensor(model, *info);
    if (!decoded) return decoded.error();
    const AwqTensorPlan* awq = options.awq ? options.awq->find(plan.name) : nullptr;
    const ScaleFold* fold = awq;
    if (!fold && options.folds)
        if (auto it = options.folds->find(plan.name); it != options.folds->end())
            fold = &it->second;
    if (fold) fold->apply(*decoded, plan.rows, plan.cols);
    const std::vector<float>& ref = *decoded;
    if (plan.method == QuantMethod::Awq && options.awq && (!awq || !awq->quantize)) {
        auto it = options.awq->notes.find(plan.name);
        const std::string why = it != options.awq->notes.end()
                                    ? it->second
                                    : (plan.format.kind == QuantKind::Float
                                           ? "awq does nothing for a float format: converted"
                                           : "awq does not scale this tensor: quantized with rtn");
        rep.note = rep.note.empty() ? why : rep.note + "; " + why;
    }

    const ProbeStats* probe = nullptr;
    if (calibration && !rep.probe.empty()) {
        probe = calibration->find(rep.probe);
        if (probe && probe->stats.channels() != plan.cols) {
            rep.note = "calibration probe " + rep.probe + " has " +
                       std::to_string(probe->stats.channels()) + " channels, the tensor " +
                       std::to_string(plan.cols) + " columns: not used";
            probe = nullptr;
        } else if (!probe) {
            rep.note = "no calibration probe " + rep.probe;
        }
    }
    // The Hessian of the tensor's input as AWQ's (or SmoothQuant's) scales leave it: diag(1/s) H
    // diag(1/s).
    std::vector<double> scaledHessian;
    auto hessianOf = [&]() -> std::vector<double> {
        std::vector<double> h = probe->stats.hessian();
        if (fold && !fold->colMul.empty() && plan.rows > 0)
            for (std::int64_t i = 0; i < plan.cols; ++i)
                for (std::int64_t j = 0; j < plan.cols; ++j)
                    h[std::size_t(i * plan.cols + j)] /=
                        double(fold->colMul[std::size_t(i)]) * double(fold->colMul[std::size_t(j)]);
        return h;
    };
    // GPTQ measures its own output error with the same Hessian: no copy for it here.
    const bool gptqRuns = runsGptq(model, plan);
    if (probe && probe->stats.hessianPrecision() != HessianPrecision::None &&
        ((options.hessianError && !gptqRuns) || (awq && awq->quantize && awq->options.clip)))
        scaledHessian = hessianOf();

    QuantizedTensor& q = out.quantized;
    const bool sameStorage =
        (plan.format.kind == QuantKind::Float || plan.format.kind == QuantKind::Ggml) &&
        plan.format.type == info->type && !fold;
    if (sameStorage) {
        const auto bytes = model.data(*info);
        q.format = plan.format;
        q.rows = plan.rows;
        q.cols = plan.cols;
        q.blocks.assign(bytes.begin(), bytes.end());
        rep.copied = true;
    } else {
        std::vector<float> importance;
        if (probe && options.useImportance && plan.format.kind == QuantKind::Ggml) {
            const std::vector<double> ms = probe->stats.channelMeanSquare();
            importance.assign(ms.begin(), ms.end());
            rep.usedImportance = true;
        }
        const float* imp = importance.empty() ? nullptr : importance.data();
        if (runsGptq(model, plan)) {
            const std::string why = missingHessian(calibration, rep.probe, plan.cols);
            if (!why.empty()) return makeError(ErrorCode::InvalidArgument, plan.name + ": " + why);
            const GptqMonitor monitor{options.gptqObserver, options.pauseGate, plan.name};
            Result<GptqResult> g = Error{};
            if (options.backend && !fold && !probe->stats.hessianF32().empty()) {
                // A GPU calibration's float32 Hessian goes to the backend as it is.
                g = options.backend->quantizeGptqF32(ref.data(), plan.rows, plan.cols,
                                                     probe->stats.hessianF32(), plan.format,
                                                     gptqOptions, imp, progress, monitor);
            } else {
                // The Hessian of the input as a fold leaves it (as the error below uses).
                const std::vector<double> h = fold ? hessianOf() : probe->stats.hessian();
                g = options.backend ? options.backend->quantizeGptq(
                                          ref.data(), plan.rows, plan.cols, h, plan.format,
                                          gptqOptions, imp, progress, monitor)
                                    : quantizeGptq(ref.data(), plan.rows, plan.cols, h, plan.format,
                                                   gptqOptions, imp, progress, monitor);
            }
            if (!g) {
                Error e = g.error();
                if (e.code != ErrorCode::Cancelled) e.message = plan.name + ": " + e.message;
                return e;
            }
            GptqReport gr;
            gr.options = gptqOptions;
            gr.loss = g->loss;
            gr.rtnLoss = g->rtnLoss;
            gr.rtnError = g->rtnError;
            gr.damp = g->damp;
            gr.dampRaises = g->dampRaises;
            gr.deadColumns = g->deadColumns;
            gr.orderHead.assign(g->order.begin(),
                                g->order.begin() + std::min<std::ptrdiff_t>(64, g->order.size()));
            gr.seconds = g->seconds;
            rep.gptq = std::move(gr);
            // GPTQ measured tr(dW H dW^T) against the same weights and Hessian already.
            if (options.hessianError) rep.outputError = g->error;
            if (!g->note.empty()) rep.note = rep.note.empty() ? g->note : rep.note + "; " + g->note;
            q = std::move(g->quantized);
        } else if (awq && awq->quantize && plan.method == QuantMethod::Awq) {
            std::vector<float> clip;
            auto encoded = quantizeAwqScaled(ref.data(), plan.rows, plan.cols, plan.format,
                                             scaledHessian, awq->options, options.threads, &clip);
            if (!encoded) {
                Error e = encoded.error();
                e.message = plan.name + ": " + e.message;
                return e;
            }
            q = std::move(encoded).value();
            AwqReport ar;
            ar.options = awq->options;
            ar.group = awq->group;
            ar.alpha = awq->alpha;
            ar.rtnError = awq->rtnError;
            ar.awqError = awq->awqError;
            ar.reference = awq->reference;
            if (!clip.empty()) {
                double sum = 0;
                for (float c : clip) sum += c;
                ar.meanClip = sum / double(clip.size());
            }
            rep.awq = ar;
        } else {
            if (plan.method == QuantMethod::Gptq) {
                const std::string why =
                    plan.format.kind == QuantKind::Float
                        ? "gptq does nothing for a float format: converted"
                        : "no calibration probe feeds this tensor (it is not a linear layer's "
                          "weight): quantized with rtn";
                rep.note = rep.note.empty() ? why : rep.note + "; " + why;
            }
            auto encoded = quantizeRtn(ref.data(), plan.rows, plan.cols, plan.format, imp, progress,
                                       options.threads);
            if (!encoded) {
                Error e = encoded.error();
                if (e.code != ErrorCode::Cancelled) e.message = plan.name + ": " + e.message;
                return e;
            }
            q = std::move(encoded).value();
        }
    }

    auto approx = q.dequantize();
    if (!approx) return approx.error();
    auto metrics = computeErrorMetrics(ref, *approx);
    if (!metrics) return metrics.error();
    rep.metrics = *metrics;
    if (probe && options.hessianError && !scaledHessian.empty() && !rep.gptq) {
        auto err = hessianWeightedError(ref, *approx, plan.rows, plan.cols, scaledHessian);
        if (!err) return err.error();
        rep.outputError = *err;
    }
    rep.storedBits = q.storedBits();
    if (options.keepDecoded) out.decoded = std::move(approx).value();
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (options.observer) options.observer->tensorDone(rep);
    return out;
}

Result<QuantizedModel> quantizeModel(const Model& model, const Layout& layout,
                                     const CalibrationResult* calibration,
                                     const ProgressFn& progress, const QuantizeOptions& options)
{
    const auto start = std::chrono::steady_clock::now();
    auto plan = layout.resolve(model);
    if (!plan) return plan.error();
    QL_TRY_STATUS(checkMethodsAvailable(layout, *plan));
    QL_TRY_STATUS(checkGptqCalibration(model, *plan, calibration));
    QuantizeOptions opts = options;
    AwqTransform awq;
    if (usesAwq(*plan) && !opts.awq) {
        auto t = computeAwqTransform(model, *plan, calibration, options.threads);
        if (!t) return t.error();
        awq = std::move(t).value();
        opts.awq = &awq;
    }

    QuantizedModel out;
    out.layout = layout.toString();
    out.plan = *plan;
    if (options.gptqObserver) options.gptqObserver->runStarted({plannedGptqLayers(model, *plan)});
    double total = 0;
    for (const auto& p : plan->tensors) total += double(p.elementCount());
    double done = 0;
    try {
        out.tensors.reserve(plan->tensors.size());
        for (const TensorPlan& p : plan->tensors) {
            const double n = double(p.elementCount());
            ProgressFn inner;
            if (progress)
                inner = [&](double f, std::string_view) {
                    return progress(total > 0 ? (done + f * n) / total : 1.0, p.name);
                };
            auto t = quantizeTensor(model, p, calibration, opts, inner);
            if (!t && t.error().code == ErrorCode::Cancelled && options.partialOnCancel) {
                std::vector<bool> finished(out.tensors.size(), true);
                QL_TRY_STATUS(completePartialModel(model, finished, out));
                out.seconds =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                return out;
            }
            if (!t) return t.error();
            out.tensors.push_back(std::move(t).value());
            done += n;
        }
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory,
                         "out of memory while quantizing " + std::to_string(out.tensors.size()) +
                             " of " + std::to_string(plan->tensors.size()) + " tensors");
    }
    (void)reportProgress(progress, 1.0, "done");
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
}

Result<std::vector<float>> dequantizedWeights(const QuantizedModel& model, std::string_view name)
{
    const TensorQuantization* t = model.find(name);
    if (!t)
        return makeError(ErrorCode::InvalidArgument,
                         "the quantized model has no tensor " + std::string(name));
    return t->quantized.dequantize();
}

}  // namespace ql
