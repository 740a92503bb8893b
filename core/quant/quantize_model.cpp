// Whole-model quantization. Tensors are done one after another, each on all cores (quantizeRtn
// splits rows over threads), which keeps memory at one tensor's float copy plus its encoding and
// makes progress and cancellation simple: the overall fraction is weights done / all weights.
// The per-tensor work is a free function so the GGUF writer can stream through it without ever
// holding the whole quantized model.
#include "quant/quantize_model.h"

#include <chrono>
#include <cstring>

#include "quant/ggml_dequant.h"
#include "quant/rtn.h"

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
        return makeError(ErrorCode::Unsupported,
                         describeRule(layout, p.rule) + " asks for " + quantMethodName(p.method) +
                             " (first on " + p.name +
                             "), which is not implemented yet; only rtn quantizes for now");
    }
    return {};
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

Result<TensorQuantization> quantizeTensor(const Model& model, const TensorPlan& plan,
                                          const CalibrationResult* calibration,
                                          const QuantizeOptions& options,
                                          const ProgressFn& progress)
{
    const auto start = std::chrono::steady_clock::now();
    const TensorInfo* info = model.find(plan.name);
    if (!info) return makeError(ErrorCode::InvalidArgument, "the model has no tensor " + plan.name);
    if (plan.method != QuantMethod::Rtn)
        return makeError(ErrorCode::Unsupported, plan.name + ": " + quantMethodName(plan.method) +
                                                     " is not implemented yet (only rtn)");
    if (info->elementCount() != plan.elementCount())
        return makeError(ErrorCode::InvalidArgument,
                         plan.name + ": the plan was made for another shape");
    if (!reportProgress(progress, 0.0, plan.name))
        return makeError(ErrorCode::Cancelled, "quantization cancelled");

    TensorQuantization out;
    TensorReport& rep = out.report;
    rep.plan = plan;
    rep.probe = inputProbeName(*info);

    auto decoded = dequantizeTensor(model, *info);
    if (!decoded) return decoded.error();
    const std::vector<float>& ref = *decoded;

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

    QuantizedTensor& q = out.quantized;
    const bool sameStorage =
        (plan.format.kind == QuantKind::Float || plan.format.kind == QuantKind::Ggml) &&
        plan.format.type == info->type;
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
        auto encoded = quantizeRtn(ref.data(), plan.rows, plan.cols, plan.format,
                                   importance.empty() ? nullptr : importance.data(), progress,
                                   options.threads);
        if (!encoded) {
            Error e = encoded.error();
            if (e.code != ErrorCode::Cancelled) e.message = plan.name + ": " + e.message;
            return e;
        }
        q = std::move(encoded).value();
    }

    auto approx = q.dequantize();
    if (!approx) return approx.error();
    auto metrics = computeErrorMetrics(ref, *approx);
    if (!metrics) return metrics.error();
    rep.metrics = *metrics;
    if (probe && options.hessianError &&
        probe->stats.hessianPrecision() != HessianPrecision::None) {
        auto err = hessianWeightedError(ref, *approx, plan.rows, plan.cols, probe->stats.hessian());
        if (!err) return err.error();
        rep.outputError = *err;
    }
    rep.storedBits = q.storedBits();
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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

    QuantizedModel out;
    out.layout = layout.toString();
    out.plan = *plan;
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
            auto t = quantizeTensor(model, p, calibration, options, inner);
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
