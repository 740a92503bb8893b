// W8A8 simulation (quant/w8a8.h): row-wise symmetric fake quantization, the activation hook and
// the model with rounded weights.
#include "quant/w8a8.h"

#include <algorithm>
#include <cmath>

#include "quant/ggml_dequant.h"

namespace ql {

const char* activationQuantName(ActivationQuant mode)
{
    switch (mode) {
        case ActivationQuant::None: return "none";
        case ActivationQuant::PerToken: return "per-token";
        case ActivationQuant::PerTensorStatic: return "static";
    }
    return "?";
}

Result<ActivationQuant> parseActivationQuant(const std::string& text)
{
    if (text == "none" || text == "float") return ActivationQuant::None;
    if (text == "per-token" || text == "token" || text == "dynamic")
        return ActivationQuant::PerToken;
    if (text == "static" || text == "per-tensor" || text == "tensor")
        return ActivationQuant::PerTensorStatic;
    return makeError(ErrorCode::InvalidArgument,
                     "activation quantization '" + text + "': expected per-token, static or none");
}

void fakeQuantizeClip(float* data, std::int64_t count, float clip, int bits)
{
    if (!(clip > 0) || !std::isfinite(clip)) return;
    const float qmax = float((1 << (bits - 1)) - 1);
    const float scale = clip / qmax;
    for (std::int64_t i = 0; i < count; ++i)
        data[i] = std::clamp(std::nearbyint(data[i] / scale), -qmax, qmax) * scale;
}

void fakeQuantizeRows(float* data, std::int64_t rows, std::int64_t cols, int bits)
{
#pragma omp parallel for if (rows * cols > (1 << 16))
    for (std::int64_t r = 0; r < rows; ++r) {
        float* row = data + r * cols;
        float amax = 0;
        for (std::int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
        fakeQuantizeClip(row, cols, amax, bits);
    }
}

void ActivationQuantizer::apply(int block, LinearGroup group, Eigen::Ref<MatrixXfRowMajor> x) const
{
    // Eigen::Ref of a row-major matrix may have an outer stride (a block of the KV cache is never
    // passed here, but be safe): work row by row.
    switch (m_mode) {
        case ActivationQuant::None: return;
        case ActivationQuant::PerToken:
            if (x.outerStride() == x.cols()) {
                fakeQuantizeRows(x.data(), x.rows(), x.cols(), m_bits);
            } else {
                for (Eigen::Index r = 0; r < x.rows(); ++r)
                    fakeQuantizeRows(x.row(r).data(), 1, x.cols(), m_bits);
            }
            return;
        case ActivationQuant::PerTensorStatic: {
            const auto it =
                m_clips.find(probeName(block, static_cast<ProbeSite>(static_cast<int>(group))));
            if (it == m_clips.end()) return;
            for (Eigen::Index r = 0; r < x.rows(); ++r)
                fakeQuantizeClip(x.row(r).data(), x.cols(), it->second, m_bits);
            return;
        }
    }
}

std::map<std::string, float> staticActivationClips(const Model& model,
                                                   const CalibrationResult& calibration,
                                                   const std::map<std::string, ScaleFold>* folds)
{
    std::map<std::string, float> clips;
    for (const ProbeStats& p : calibration.probes) {
        const std::vector<float>& absMax = p.stats.channelAbsMax();
        const std::vector<float>* s = nullptr;
        if (folds) {
            for (const FoldSite& site : foldSites(model, p.block)) {
                if (site.site != p.site) continue;
                auto it = folds->find(site.members[0]->name);
                if (it != folds->end() && it->second.colMul.size() == absMax.size())
                    s = &it->second.colMul;
            }
        }
        float clip = 0;
        for (std::size_t c = 0; c < absMax.size(); ++c)
            clip = std::max(clip, s ? absMax[c] / (*s)[c] : absMax[c]);
        clips[p.name] = clip;
    }
    return clips;
}

Result<LlamaModel> createW8A8Model(const Model& model,
                                   const std::map<std::string, ScaleFold>* folds,
                                   const W8A8Options& options, const CalibrationResult* calibration,
                                   const ProgressFn& progress)
{
    if (options.weightBits != 0 && (options.weightBits < 2 || options.weightBits > 8))
        return makeError(ErrorCode::InvalidArgument, "W8A8: weight bits must be 2..8 (or 0)");
    if (options.activationBits < 2 || options.activationBits > 16)
        return makeError(ErrorCode::InvalidArgument, "W8A8: activation bits must be 2..16");
    if (options.activations == ActivationQuant::PerTensorStatic && !calibration)
        return makeError(ErrorCode::InvalidArgument,
                         "static activation quantization needs a calibration (its abs-max)");
    LlamaLoadOptions load;
    load.override = [&](const TensorInfo& t) -> Result<std::optional<std::vector<float>>> {
        const ScaleFold* fold = nullptr;
        if (folds)
            if (auto it = folds->find(t.name); it != folds->end()) fold = &it->second;
        const bool roundIt = options.weightBits != 0 && t.block >= 0 && isLinearWeight(t.role);
        if (!fold && !roundIt) return std::optional<std::vector<float>>();
        auto v = dequantizeTensor(model, t);
        if (!v) return v.error();
        if (fold) fold->apply(*v, t.rows(), t.cols());
        if (roundIt) fakeQuantizeRows(v->data(), t.rows(), t.cols(), options.weightBits);
        return std::optional<std::vector<float>>(std::move(v).value());
    };
    auto llama = LlamaModel::create(model, load, progress);
    if (!llama) return llama.error();
    if (options.activations != ActivationQuant::None) {
        std::map<std::string, float> clips;
        if (options.activations == ActivationQuant::PerTensorStatic)
            clips = staticActivationClips(model, *calibration, folds);
        llama->setLinearInputHook(std::make_shared<ActivationQuantizer>(
            options.activations, options.activationBits, std::move(clips)));
    }
    return llama;
}

}  // namespace ql
