// W8A8 simulation on the CPU forward pass (SmoothQuant's setting): every linear layer inside the
// blocks multiplies int8 activations by int8 weights, simulated in float ("fake quantization").
//
// Weights: symmetric per output channel, scale = max|w_row| / 127 (float32), codes -127..127.
// Activations at each linear input (LlamaModel's LinearInputHook), symmetric, codes -127..127:
//   PerToken        dynamic, scale = max|x_token| / 127 per row (what SmoothQuant's O1..O3 kernels
//                   do at run time for per-token, and the harder case for outlier channels);
//   PerTensorStatic one scale per probe site from the calibration's abs-max (divided by the
//                   smoothing scales when the model is smoothed); values beyond it saturate.
// The embedding, the output head, the norms and attention's own products (q k^T, softmax v) stay
// float, as in SmoothQuant's W8A8 linear layers. Smoothing (quant/smoothquant.h) is folded into the
// float weights before they are rounded.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "calib/calibration.h"
#include "model/llama.h"
#include "model/model.h"
#include "quant/scale_fold.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

enum class ActivationQuant { None, PerToken, PerTensorStatic };
const char* activationQuantName(ActivationQuant mode);  // "none", "per-token", "static"
Result<ActivationQuant> parseActivationQuant(const std::string& text);

struct W8A8Options {
    int weightBits = 8;  // 2..8; 0 keeps float weights
    int activationBits = 8;
    ActivationQuant activations = ActivationQuant::PerToken;
};

// Symmetric round-to-nearest of each row of a row-major rows x cols matrix in place, scale =
// max|row| / (2^(bits-1) - 1): the per-output-channel weight and per-token activation quantizer.
void fakeQuantizeRows(float* data, std::int64_t rows, std::int64_t cols, int bits);
// The same with one given clip for all values (static per-tensor); values beyond it saturate.
void fakeQuantizeClip(float* data, std::int64_t count, float clip, int bits);

// The activation quantizer as a LlamaModel hook. Static clips are per probe name
// ("blk.3.ffn_down"); a site without a clip is left in float.
class ActivationQuantizer final : public LinearInputHook {
public:
    ActivationQuantizer(ActivationQuant mode, int bits,
                        std::map<std::string, float> staticClips = {})
        : m_mode(mode), m_bits(bits), m_clips(std::move(staticClips))
    {
    }
    void apply(int block, LinearGroup group, Eigen::Ref<MatrixXfRowMajor> x) const override;

private:
    ActivationQuant m_mode;
    int m_bits;
    std::map<std::string, float> m_clips;
};

// Static clips from a calibration: per probe, max over channels of absMax_c / s_c, with s the
// smoothing scales folds has for the probe's input (the colMul of its first member), or 1.
std::map<std::string, float> staticActivationClips(const Model& model,
                                                   const CalibrationResult& calibration,
                                                   const std::map<std::string, ScaleFold>* folds);

// A LlamaModel of `model` with `folds` applied (may be null) and, as `options` says, the blocks'
// linear weights rounded and the activation quantizer installed. `calibration` is needed for
// PerTensorStatic only.
Result<LlamaModel> createW8A8Model(const Model& model,
                                   const std::map<std::string, ScaleFold>* folds,
                                   const W8A8Options& options,
                                   const CalibrationResult* calibration = nullptr,
                                   const ProgressFn& progress = {});

}  // namespace ql
