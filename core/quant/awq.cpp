// AWQ: the scale search per group of linear layers sharing an input, the clipping search, and the
// model-level plan of scales and folds (quant/awq.h). Errors are tr(dW H dW^T), computed with
// Eigen in float (the Hessian converted once per group) and summed in double.
#include "quant/awq.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "quant/ggml_dequant.h"
#include "quant/rtn.h"

namespace ql {

namespace {

using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Result<bool> parseBool(const std::string& key, const std::string& v)
{
    if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
    if (v == "false" || v == "0" || v == "no" || v == "off") return false;
    return makeError(ErrorCode::InvalidArgument,
                     "awq option " + key + "=" + v + ": expected true/false, 1/0, yes/no, on/off");
}

MatrixRM toFloatMatrix(std::span<const double> h, std::int64_t n)
{
    MatrixRM m(n, n);
    for (std::int64_t i = 0; i < n * n; ++i) m.data()[i] = float(h[std::size_t(i)]);
    return m;
}

// Per-row dw H dw^T for dw = a - b (rows x cols row-major).
Eigen::VectorXd rowErrors(const float* a, const float* b, std::int64_t rows, std::int64_t cols,
                          const MatrixRM& h)
{
    MatrixRM d(rows, cols);
    for (std::int64_t i = 0; i < rows * cols; ++i) d.data()[i] = a[i] - b[i];
    const MatrixRM dh = d * h;
    return dh.cwiseProduct(d).cast<double>().rowwise().sum();
}

}  // namespace

Result<AwqOptions> parseAwqOptions(
    std::span<const std::pair<std::string, std::string>> methodOptions)
{
    AwqOptions o;
    for (const auto& [key, value] : methodOptions) {
        if (key == "grid") {
            char* end = nullptr;
            const long n = std::strtol(value.c_str(), &end, 10);
            if (value.empty() || *end || n < 1 || n > 1000)
                return makeError(ErrorCode::InvalidArgument,
                                 "awq option grid=" + value + ": expected an integer 1..1000");
            o.grid = int(n);
        } else if (key == "clip") {
            auto b = parseBool(key, value);
            if (!b) return b.error();
            o.clip = *b;
        } else {
            return makeError(ErrorCode::InvalidArgument,
                             "unknown awq option '" + key + "' (grid=N, clip)");
        }
    }
    return o;
}

std::string awqOptionsText(const AwqOptions& options)
{
    std::string s = "grid=" + std::to_string(options.grid);
    if (options.clip) s += " clip";
    return s;
}

Result<AwqSearch> searchAwqScales(std::span<const AwqLayer> layers, std::span<const double> meanAbs,
                                  std::span<const double> hessian, const AwqOptions& options,
                                  int threads)
{
    if (layers.empty()) return makeError(ErrorCode::InvalidArgument, "awq: no layers");
    const std::int64_t cols = layers[0].cols;
    for (const AwqLayer& l : layers)
        if (l.cols != cols || !l.w || l.rows <= 0)
            return makeError(ErrorCode::InvalidArgument, "awq: the group's layers differ in shape");
    if (std::int64_t(meanAbs.size()) != cols || std::int64_t(hessian.size()) != cols * cols)
        return makeError(ErrorCode::InvalidArgument,
                         "awq: statistics do not match the layers' columns");
    const MatrixRM h = toFloatMatrix(hessian, cols);
    double maxMean = 0;
    for (double m : meanAbs) maxMean = std::max(maxMean, m);
    const double floorMean = maxMean > 0 ? maxMean * 1e-6 : 1.0;

    AwqSearch out;
    const std::vector<float> zeros(
        std::size_t(
            std::max_element(layers.begin(), layers.end(),
                             [](const AwqLayer& a, const AwqLayer& b) { return a.rows < b.rows; })
                ->rows *
            cols),
        0.0f);
    for (const AwqLayer& l : layers)
        out.reference.push_back(rowErrors(l.w, zeros.data(), l.rows, cols, h).sum());
    double best = INFINITY;
    std::vector<float> s(static_cast<std::size_t>(cols)), scaled, back;
    std::vector<double> perLayer(layers.size());
    for (int g = 0; g <= options.grid; ++g) {
        const double alpha = double(g) / options.grid;
        double smax = 0, smin = INFINITY;
        std::vector<double> sd(static_cast<std::size_t>(cols));
        for (std::int64_t c = 0; c < cols; ++c) {
            sd[c] = std::pow(std::max(meanAbs[c], floorMean), alpha);
            smax = std::max(smax, sd[c]);
            smin = std::min(smin, sd[c]);
        }
        const double norm = std::sqrt(smax * smin);
        for (std::int64_t c = 0; c < cols; ++c) s[c] = float(sd[c] / norm);
        double total = 0;
        for (std::size_t li = 0; li < layers.size(); ++li) {
            const AwqLayer& l = layers[li];
            const std::int64_t n = l.rows * cols;
            scaled.resize(std::size_t(n));
            for (std::int64_t r = 0; r < l.rows; ++r)
                for (std::int64_t c = 0; c < cols; ++c)
                    scaled[r * cols + c] = l.w[r * cols + c] * s[c];
            auto q = quantizeRtn(scaled.data(), l.rows, cols, l.format, nullptr, {}, threads);
            if (!q) return q.error();
            auto deq = q->dequantize();
            if (!deq) return deq.error();
            back.resize(std::size_t(n));
            for (std::int64_t r = 0; r < l.rows; ++r)
                for (std::int64_t c = 0; c < cols; ++c)
                    back[r * cols + c] = (*deq)[r * cols + c] / s[c];
            perLayer[li] = rowErrors(back.data(), l.w, l.rows, cols, h).sum();
            total += perLayer[li];
        }
        out.errorByAlpha.push_back(total);
        if (g == 0) out.rtnError = perLayer;
        if (total < best) {
            best = total;
            out.alpha = alpha;
            out.scales = s;
            out.awqError = perLayer;
        }
    }
    return out;
}

Result<QuantizedTensor> quantizeAwqScaled(const float* scaled, std::int64_t rows, std::int64_t cols,
                                          const QuantFormat& format,
                                          std::span<const double> scaledHessian,
                                          const AwqOptions& options, int threads,
                                          std::vector<float>* clipRatios)
{
    if (!options.clip) return quantizeRtn(scaled, rows, cols, format, nullptr, {}, threads);
    if (std::int64_t(scaledHessian.size()) != cols * cols)
        return makeError(ErrorCode::InvalidArgument, "awq clip: the Hessian does not match");
    const MatrixRM h = toFloatMatrix(scaledHessian, cols);
    const std::int64_t group = std::max<std::int64_t>(1, scaleGroupSize(format, cols));
    const std::size_t n = std::size_t(rows * cols);
    auto clamp = [&](std::vector<float>& out, std::int64_t r, float ratio) {
        for (std::int64_t g0 = 0; g0 < cols; g0 += group) {
            const std::int64_t g1 = std::min(cols, g0 + group);
            float lo = INFINITY, hi = -INFINITY;
            for (std::int64_t c = g0; c < g1; ++c) {
                lo = std::min(lo, scaled[r * cols + c]);
                hi = std::max(hi, scaled[r * cols + c]);
            }
            lo *= ratio;
            hi *= ratio;
            for (std::int64_t c = g0; c < g1; ++c)
                out[r * cols + c] =
                    std::clamp(scaled[r * cols + c], std::min(lo, hi), std::max(lo, hi));
        }
    };
    std::vector<float> bestRatio(std::size_t(rows), 1.0f);
    Eigen::VectorXd bestErr = Eigen::VectorXd::Constant(rows, INFINITY);
    std::vector<float> clamped(n);
    for (int k = 0; k <= 10; ++k) {
        const float ratio = 1.0f - 0.05f * float(k);
        for (std::int64_t r = 0; r < rows; ++r) clamp(clamped, r, ratio);
        auto q = quantizeRtn(clamped.data(), rows, cols, format, nullptr, {}, threads);
        if (!q) return q.error();
        auto deq = q->dequantize();
        if (!deq) return deq.error();
        const Eigen::VectorXd e = rowErrors(deq->data(), scaled, rows, cols, h);
        for (std::int64_t r = 0; r < rows; ++r)
            if (e[r] < bestErr[r]) {
                bestErr[r] = e[r];
                bestRatio[std::size_t(r)] = ratio;
            }
    }
    for (std::int64_t r = 0; r < rows; ++r) clamp(clamped, r, bestRatio[std::size_t(r)]);
    if (clipRatios) *clipRatios = bestRatio;
    return quantizeRtn(clamped.data(), rows, cols, format, nullptr, {}, threads);
}

const AwqTensorPlan* AwqTransform::find(const std::string& name) const
{
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : &it->second;
}

bool usesAwq(const LayoutPlan& plan)
{
    for (const TensorPlan& p : plan.tensors)
        if (p.method == QuantMethod::Awq) return true;
    return false;
}

Result<AwqTransform> computeAwqTransform(const Model& model, const LayoutPlan& plan,
                                         const CalibrationResult* calibration, int threads,
                                         const ProgressFn& progress)
{
    AwqTransform out;
    int blocks = 0;
    for (const TensorInfo& t : model.tensors) blocks = std::max(blocks, t.block + 1);

    auto awqPlan = [&](const TensorInfo* info) -> const TensorPlan* {
        if (!info) return nullptr;
        const TensorPlan* p = plan.find(info->name);
        return p && p->method == QuantMethod::Awq ? p : nullptr;
    };
    auto quantizable = [](const TensorPlan& p, const TensorInfo& info) {
        return p.format.kind != QuantKind::Float &&
               !(p.format.kind == QuantKind::Ggml && p.format.type == info.type);
    };

    for (int b = 0; b < blocks; ++b) {
        if (!reportProgress(progress, double(b) / std::max(1, blocks), "awq scale search"))
            return makeError(ErrorCode::Cancelled, "awq cancelled");
        for (const FoldSite& site : foldSites(model, b)) {
            const std::vector<const TensorInfo*>& members = site.members;
            if (site.site == ProbeSite::AttnOutput) {
                // AWQ's scales are per channel; tying them per KV head is SmoothQuant's way.
                if (awqPlan(members[0]))
                    out.notes[members[0]->name] =
                        "awq does not scale attn_output (with grouped-query attention the scale "
                        "cannot be folded into attn_v exactly): quantized with rtn";
                continue;
            }
            bool anyAwq = false, allAwq = true;
            for (const TensorInfo* info : members) {
                const TensorPlan* p = awqPlan(info);
                if (p && quantizable(*p, *info))
                    anyAwq = true;
                else
                    allAwq = false;
            }
            if (!anyAwq) continue;
            const std::string probeNameText = probeName(b, site.site);
            std::string why = site.why;
            if (!allAwq)
                why = "awq scales " + probeNameText +
                      "'s layers together, and not all of them are awq with a quantized format";
            if (!why.empty()) {
                for (const TensorInfo* m : members)
                    if (awqPlan(m)) out.notes[m->name] = why + ": quantized with rtn";
                continue;
            }
            const ProbeStats* probe = calibration ? calibration->find(probeNameText) : nullptr;
            const std::int64_t cols = site.channels;
            if (!probe || probe->stats.channels() != cols ||
                probe->stats.hessianPrecision() == HessianPrecision::None)
                return makeError(ErrorCode::InvalidArgument,
                                 members[0]->name + ": awq needs the Hessian of its input " +
                                     probeNameText +
                                     (calibration ? ", which the calibration lacks (calibrate "
                                                    "with --hessian f32 or f64)"
                                                  : ", and no calibration was given"));
            std::vector<std::vector<float>> weights;
            std::vector<AwqLayer> layers;
            for (const TensorInfo* m : members) {
                auto w = dequantizeTensor(model, *m);
                if (!w) return w.error();
                weights.push_back(std::move(w).value());
            }
            for (std::size_t i = 0; i < members.size(); ++i) {
                const TensorPlan* p = plan.find(members[i]->name);
                layers.push_back({weights[i].data(), p->rows, p->cols, p->format});
            }
            auto options = parseAwqOptions(plan.find(members[0]->name)->methodOptions);
            if (!options)
                return makeError(ErrorCode::InvalidArgument,
                                 members[0]->name + ": " + options.error().message);
            const std::vector<double> meanAbs = probe->stats.channelMeanAbs();
            auto search =
                searchAwqScales(layers, meanAbs, probe->stats.hessian(), *options, threads);
            if (!search) {
                Error e = search.error();
                e.message = members[0]->name + ": " + e.message;
                return e;
            }
            QL_TRY_STATUS(foldScales(
                site, search->scales,
                [&](const std::string& name) -> ScaleFold& { return out.tensors[name]; }));
            for (std::size_t i = 0; i < members.size(); ++i) {
                AwqTensorPlan& tp = out.tensors[members[i]->name];
                tp.quantize = true;
                tp.group = probeNameText;
                tp.alpha = search->alpha;
                tp.rtnError = search->rtnError[i];
                tp.awqError = search->awqError[i];
                tp.reference = search->reference[i];
                tp.options = *options;
                if (const TensorPlan* p = plan.find(members[i]->name))
                    if (auto o = parseAwqOptions(p->methodOptions)) tp.options = *o;
            }
        }
    }
    (void)reportProgress(progress, 1.0, "awq scale search");
    return out;
}

}  // namespace ql
