// AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM Compression and
// Acceleration") on the CPU, for the Llama family, with any quantized format.
//
// Linear layers sharing an input are scaled together: q/k/v (input: attn_norm's output), gate/up
// (ffn_norm's output) and ffn_down (silu(gate) * up). Per input channel c the scale is
// s_c = mean|x_c|^alpha, normalised by sqrt(max s * min s); alpha runs over a grid (0, 1/grid, ..,
// 1) and the one minimising the group's summed output error sum_layers tr(dW H dW^T) wins, with
// dW = Q(W diag(s)) diag(s)^-1 - W and H the calibration Hessian of the input (so no activations
// are stored). alpha = 0 is round-to-nearest, so AWQ's error never exceeds RTN's on this objective.
//
// The scales are folded so the exported model needs nothing extra: attn_norm / ffn_norm are
// divided by s (q/k/v, gate/up), ffn_up's rows are divided by ffn_down's s (silu(gate) * up is
// linear in up); the layers store Q(W diag(s)). attn_output is not scaled (with grouped-query
// attention its scale cannot be folded into v exactly): an awq rule quantizes it with rtn, with a
// note. A group is scaled only when every member's plan says awq with a quantized format.
//
// With `clip`, each output row of W diag(s) is clamped to a shrunk range ratio x [min, max] per
// scale group (ratio 1.0, 0.95, .. 0.5, per row) before rounding, the ratio minimising the row's
// output error dw H' dw^T (H' the Hessian of the scaled input) chosen.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "calib/calibration.h"
#include "layout/layout.h"
#include "model/model.h"
#include "quant/format.h"
#include "quant/scale_fold.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct AwqOptions {
    int grid = 20;      // grid=N: alpha in 0, 1/N, .., 1
    bool clip = false;  // clip[=BOOL]: per-row clipping search
};

// grid=N (1..1000), clip[=BOOL].
Result<AwqOptions> parseAwqOptions(
    std::span<const std::pair<std::string, std::string>> methodOptions);
std::string awqOptionsText(const AwqOptions& options);  // "grid=20 clip"

// One layer of a group being searched: W rows x cols row-major.
struct AwqLayer {
    const float* w = nullptr;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    QuantFormat format;
};

struct AwqSearch {
    double alpha = 0;
    std::vector<float> scales;         // cols values, the chosen s
    std::vector<double> rtnError;      // per layer, tr(dW H dW^T) at alpha = 0
    std::vector<double> awqError;      // per layer, at the chosen alpha
    std::vector<double> reference;     // per layer, tr(W H W^T) of the unscaled weights
    std::vector<double> errorByAlpha;  // the group's summed error per grid point
};

// meanAbs: cols values (ActivationStats::channelMeanAbs); hessian: cols x cols row-major.
Result<AwqSearch> searchAwqScales(std::span<const AwqLayer> layers, std::span<const double> meanAbs,
                                  std::span<const double> hessian, const AwqOptions& options,
                                  int threads = 0);

// W diag(s) quantized with rtn (after the clipping search when options.clip), in `format`.
// scaledHessian: the Hessian of the scaled input, diag(1/s) H diag(1/s) (needed for clip only).
Result<QuantizedTensor> quantizeAwqScaled(const float* scaled, std::int64_t rows, std::int64_t cols,
                                          const QuantFormat& format,
                                          std::span<const double> scaledHessian,
                                          const AwqOptions& options, int threads = 0,
                                          std::vector<float>* clipRatios = nullptr);

// What AWQ does to one tensor (quant/scale_fold.h): colMul = s for a scaled linear layer, 1/s for
// a folded norm (rows = 1); rowDiv = ffn_down's s for ffn_up.
struct AwqTensorPlan : ScaleFold {
    bool quantize = false;  // a scaled linear layer (AWQ quantizes it), not only a fold target
    std::string group;      // "blk.3.attn_qkv"
    double alpha = 0;
    double rtnError = 0;  // tr(dW H dW^T) of rtn, from the search
    double awqError = 0;  // the same for AWQ at alpha (before clipping)
    // tr(W H W^T) in the search's frame: the tensor before other folds (ffn_up's rows) touch it.
    double reference = 0;
    AwqOptions options;
};

struct AwqTransform {
    std::map<std::string, AwqTensorPlan> tensors;
    std::map<std::string, std::string> notes;  // awq tensors left to rtn, and why

    const AwqTensorPlan* find(const std::string& name) const;
};

// Whether any plan entry asks for awq.
bool usesAwq(const LayoutPlan& plan);

// The scale search for every group of the plan's awq tensors (calibration must hold the
// Hessians of their inputs: InvalidArgument otherwise, naming the tensor).
Result<AwqTransform> computeAwqTransform(const Model& model, const LayoutPlan& plan,
                                         const CalibrationResult* calibration, int threads = 0,
                                         const ProgressFn& progress = {});

}  // namespace ql
