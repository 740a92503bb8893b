// SmoothQuant (quant/smoothquant.h): scales from the calibration's abs-max, the per-site alpha
// search on captured inputs, and the folds.
#include "quant/smoothquant.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "quant/ggml_dequant.h"

namespace ql {

namespace {

// Captures every linear input of one block, windows appended as rows.
class CaptureProbe final : public ForwardProbe {
public:
    void onLinearInput(int, LinearGroup group, const Eigen::Ref<const MatrixXfRowMajor>& x) override
    {
        auto& parts = m_parts[static_cast<int>(group)];
        parts.emplace_back(x);
    }
    MatrixXfRowMajor take(ProbeSite site)
    {
        auto& parts = m_parts[static_cast<int>(site)];
        Eigen::Index rows = 0, cols = parts.empty() ? 0 : parts[0].cols();
        for (const auto& p : parts) rows += p.rows();
        MatrixXfRowMajor out(rows, cols);
        Eigen::Index r = 0;
        for (const auto& p : parts) {
            out.middleRows(r, p.rows()) = p;
            r += p.rows();
        }
        parts.clear();
        return out;
    }

private:
    std::vector<MatrixXfRowMajor> m_parts[4];
};

Result<std::vector<std::vector<float>>> decodeMembers(const Model& model, const FoldSite& site)
{
    std::vector<std::vector<float>> out;
    for (const TensorInfo* m : site.members) {
        auto w = dequantizeTensor(model, *m);
        if (!w) return w.error();
        out.push_back(std::move(w).value());
    }
    return out;
}

std::vector<float> columnAbsMax(const std::vector<std::vector<float>>& weights, std::int64_t cols)
{
    std::vector<float> m(std::size_t(cols), 0.0f);
    for (const auto& w : weights)
        for (std::size_t i = 0; i < w.size(); ++i) {
            float& v = m[i % std::size_t(cols)];
            v = std::max(v, std::fabs(w[i]));
        }
    return m;
}

}  // namespace

Result<std::vector<double>> parseAlphaGrid(const std::string& text)
{
    std::vector<double> grid;
    std::stringstream ss(text);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        const double a = std::strtod(item.c_str(), &end);
        if (item.empty() || *end || !(a >= 0.0 && a <= 1.0))
            return makeError(ErrorCode::InvalidArgument,
                             "alpha grid '" + text + "': '" + item + "' is not a number in 0..1");
        grid.push_back(a);
    }
    if (grid.empty())
        return makeError(ErrorCode::InvalidArgument, "alpha grid '" + text + "' is empty");
    return grid;
}

const SmoothSite* SmoothQuantTransform::find(const std::string& probe) const
{
    for (const SmoothSite& s : sites)
        if (s.probe == probe) return &s;
    return nullptr;
}

double maxMedianRatio(std::span<const float> values)
{
    if (values.empty()) return 0;
    std::vector<float> a(values.size());
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::fabs(values[i]);
    const float mx = *std::max_element(a.begin(), a.end());
    const std::size_t mid = a.size() / 2;
    std::nth_element(a.begin(), a.begin() + std::ptrdiff_t(mid), a.end());
    double median = a[mid];
    if (a.size() % 2 == 0) {
        const float lower = *std::max_element(a.begin(), a.begin() + std::ptrdiff_t(mid));
        median = 0.5 * (double(lower) + median);
    }
    return median > 0 ? double(mx) / median : 0.0;
}

std::vector<float> smoothingScales(std::span<const float> actAbsMax,
                                   std::span<const float> weightAbsMax, double alpha,
                                   double minScale)
{
    std::vector<float> s(actAbsMax.size(), 1.0f);
    for (std::size_t j = 0; j < s.size() && j < weightAbsMax.size(); ++j) {
        const double a = actAbsMax[j], w = weightAbsMax[j];
        if (!(a > 0) || !(w > 0)) continue;
        const double v = std::pow(a, alpha) / std::pow(w, 1.0 - alpha);
        s[j] = float(std::max(v, minScale));
    }
    return s;
}

std::vector<float> siteScales(const FoldSite& site, std::span<const float> actAbsMax,
                              std::span<const float> weightAbsMax, double alpha, double minScale)
{
    if (!site.needsTiedHeads()) return smoothingScales(actAbsMax, weightAbsMax, alpha, minScale);
    std::vector<double> a(actAbsMax.begin(), actAbsMax.end());
    std::vector<double> w(weightAbsMax.begin(), weightAbsMax.end());
    auto mx = [](double p, double q) { return std::max(p, q); };
    tieToKvHeads(a, site.heads, site.kvHeads, site.headDim, mx);
    tieToKvHeads(w, site.heads, site.kvHeads, site.headDim, mx);
    const std::vector<float> af(a.begin(), a.end()), wf(w.begin(), w.end());
    return smoothingScales(af, wf, alpha, minScale);
}

SmoothingPreview previewSmoothing(std::span<const float> actAbsMax,
                                  std::span<const float> weightAbsMax, std::vector<float> scales)
{
    SmoothingPreview p;
    p.scales = std::move(scales);
    p.actAfter.resize(actAbsMax.size());
    p.weightAfter.resize(weightAbsMax.size());
    for (std::size_t c = 0; c < actAbsMax.size(); ++c)
        p.actAfter[c] = actAbsMax[c] / (c < p.scales.size() ? p.scales[c] : 1.0f);
    for (std::size_t c = 0; c < weightAbsMax.size(); ++c)
        p.weightAfter[c] = weightAbsMax[c] * (c < p.scales.size() ? p.scales[c] : 1.0f);
    p.actRatioBefore = maxMedianRatio(actAbsMax);
    p.actRatioAfter = maxMedianRatio(p.actAfter);
    p.weightRatioBefore = maxMedianRatio(weightAbsMax);
    p.weightRatioAfter = maxMedianRatio(p.weightAfter);
    return p;
}

Result<std::vector<float>> weightColumnAbsMax(const Model& model, const FoldSite& site)
{
    auto w = decodeMembers(model, site);
    if (!w) return w.error();
    return columnAbsMax(*w, site.channels);
}

double w8a8OutputError(const MatrixXfRowMajor& x, std::span<const std::vector<float>> weights,
                       std::span<const float> s, const W8A8Options& options, float staticClip)
{
    const Eigen::Index cols = x.cols();
    MatrixXfRowMajor xs = x;
    if (!s.empty())
        for (Eigen::Index j = 0; j < cols; ++j) xs.col(j) /= s[std::size_t(j)];
    switch (options.activations) {
        case ActivationQuant::None: break;
        case ActivationQuant::PerToken:
            fakeQuantizeRows(xs.data(), xs.rows(), cols, options.activationBits);
            break;
        case ActivationQuant::PerTensorStatic:
            fakeQuantizeClip(xs.data(), xs.size(), staticClip, options.activationBits);
            break;
    }
    double err = 0, ref = 0;
    for (const std::vector<float>& wv : weights) {
        const Eigen::Index rows = Eigen::Index(wv.size()) / cols;
        const Eigen::Map<const MatrixXfRowMajor> w(wv.data(), rows, cols);
        MatrixXfRowMajor ws = w;
        if (!s.empty())
            for (Eigen::Index j = 0; j < cols; ++j) ws.col(j) *= s[std::size_t(j)];
        if (options.weightBits > 0) fakeQuantizeRows(ws.data(), rows, cols, options.weightBits);
        const MatrixXfRowMajor yRef = x * w.transpose();
        const MatrixXfRowMajor y = xs * ws.transpose();
        err += double((y - yRef).squaredNorm());
        ref += double(yRef.squaredNorm());
    }
    return ref > 0 ? err / ref : err;
}

Result<SmoothQuantTransform> computeSmoothQuant(
    const Model& model, const CalibrationResult& calibration, const SmoothQuantOptions& options,
    const LlamaModel* llama, const std::vector<TokenWindow>* windows, const ProgressFn& progress)
{
    const bool search = !options.alphaGrid.empty();
    const bool haveInputs = llama && windows && !windows->empty();
    if (search && !haveInputs)
        return makeError(ErrorCode::InvalidArgument,
                         "the alpha search needs calibration windows to run through the model");
    if (!search && !(options.alpha >= 0 && options.alpha <= 1))
        return makeError(ErrorCode::InvalidArgument, "alpha must be in 0..1");

    SmoothQuantTransform out;
    out.options = options;
    const int blocks = int(model.hparams.blockCount);

    // Hidden states of the windows, carried block by block through the float model.
    std::vector<MatrixXfRowMajor> hidden;
    if (haveInputs) {
        for (const TokenWindow& w : *windows) {
            auto x = llama->embed(w.tokens);
            if (!x) return x.error();
            hidden.push_back(std::move(x).value());
        }
    }

    for (int b = 0; b < blocks; ++b) {
        if (!reportProgress(progress, double(b) / std::max(1, blocks), "smoothquant"))
            return makeError(ErrorCode::Cancelled, "smoothquant cancelled");
        CaptureProbe capture;
        if (haveInputs)
            for (MatrixXfRowMajor& h : hidden) QL_TRY_STATUS(llama->runBlock(b, h, &capture));

        for (const FoldSite& site : foldSites(model, b)) {
            SmoothSite ss;
            ss.block = b;
            ss.site = site.site;
            ss.probe = probeName(b, site.site);
            for (const TensorInfo* m : site.members) ss.members.push_back(m->name);
            const MatrixXfRowMajor x =
                haveInputs ? capture.take(site.site) : MatrixXfRowMajor(0, site.channels);
            const ProbeStats* probe = calibration.find(ss.probe);
            if (!probe || probe->stats.channels() != site.channels) {
                ss.note = probe ? "the calibration's probe has another width"
                                : "the calibration has no probe " + ss.probe;
                ss.scales.assign(std::size_t(site.channels), 1.0f);
                out.sites.push_back(std::move(ss));
                continue;
            }
            auto weights = decodeMembers(model, site);
            if (!weights) return weights.error();
            ss.actAbsMax = probe->stats.channelAbsMax();
            ss.weightAbsMax = columnAbsMax(*weights, site.channels);
            ss.actRatioBefore = maxMedianRatio(ss.actAbsMax);
            ss.weightRatioBefore = maxMedianRatio(ss.weightAbsMax);

            auto clipFor = [&](std::span<const float> s) {
                float clip = 0;
                for (std::size_t c = 0; c < ss.actAbsMax.size(); ++c)
                    clip = std::max(clip, ss.actAbsMax[c] / (s.empty() ? 1.0f : s[c]));
                return clip;
            };
            auto errorOf = [&](std::span<const float> s) {
                return w8a8OutputError(x, *weights, s, options.w8a8, clipFor(s));
            };

            std::string skip;
            if (!site.foldable())
                skip = "not smoothed: " + site.why;
            else if (site.site == ProbeSite::AttnOutput && !options.attnOutput)
                skip = "not smoothed: attn_output smoothing is off";
            if (haveInputs) ss.errorBefore = errorOf({});
            if (!skip.empty()) {
                ss.note = skip;
                ss.scales.assign(std::size_t(site.channels), 1.0f);
                ss.errorAfter = ss.errorBefore;
            } else if (search) {
                double best = ss.errorBefore;
                for (double alpha : options.alphaGrid) {
                    std::vector<float> s =
                        siteScales(site, ss.actAbsMax, ss.weightAbsMax, alpha, options.minScale);
                    const double e = errorOf(s);
                    ss.errorByAlpha.push_back(e);
                    if (e < best) {
                        best = e;
                        ss.alpha = alpha;
                        ss.scales = std::move(s);
                        ss.smoothed = true;
                    }
                }
                ss.errorAfter = best;
                if (!ss.smoothed) {
                    ss.note = "not smoothed: no alpha of the grid lowers the W8A8 error";
                    ss.scales.assign(std::size_t(site.channels), 1.0f);
                }
            } else {
                ss.alpha = options.alpha;
                ss.scales = siteScales(site, ss.actAbsMax, ss.weightAbsMax, options.alpha,
                                       options.minScale);
                ss.smoothed = true;
                if (haveInputs) ss.errorAfter = errorOf(ss.scales);
            }
            if (ss.smoothed)
                QL_TRY_STATUS(foldScales(
                    site, ss.scales,
                    [&](const std::string& name) -> ScaleFold& { return out.folds[name]; }));
            const SmoothingPreview after =
                previewSmoothing(ss.actAbsMax, ss.weightAbsMax, ss.scales);
            ss.actRatioAfter = after.actRatioAfter;
            ss.weightRatioAfter = after.weightRatioAfter;
            out.sites.push_back(std::move(ss));
        }
    }
    (void)reportProgress(progress, 1.0, "smoothquant");
    return out;
}

}  // namespace ql
