// SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization
// for Large Language Models") for the Llama family on the CPU.
//
// Activation outliers sit in a few input channels, so per-token int8 activations lose the small
// channels. SmoothQuant migrates the difficulty into the weights with a per-input-channel scale
//   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
// (max|X_j| the calibration's abs-max of channel j, max|W_j| the abs-max of column j over every
// layer reading that input) and computes (X diag(1/s)) (W diag(s))^T, the same product. The scales
// are folded exactly (quant/scale_fold.h): into attn_norm (q/k/v), ffn_norm (gate/up), ffn_up's
// rows (ffn_down) and attn_v's rows (attn_output). For attn_output under grouped-query attention
// the statistics are first tied per KV head (max over the query heads sharing it), so its scales
// fold exactly too; where a site cannot be folded it is skipped with a note.
//
// alpha is given, or searched per site over a grid: a few calibration windows run through the
// float model block by block, each site's input X is captured, and the alpha whose W8A8 output
// error sum_i ||Q(X/s) Q(W_i s)^T - X W_i^T||^2 / sum_i ||X W_i^T||^2 is smallest wins
// (quant/w8a8.h's quantizers, the activations as options.activations says). "No smoothing" competes
// too, so a searched site never does worse than the unsmoothed one on this measure. Memory: the
// windows' hidden states and one block's captured inputs.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "calib/calibration.h"
#include "calib/dataset.h"
#include "model/llama.h"
#include "model/model.h"
#include "quant/scale_fold.h"
#include "quant/w8a8.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct SmoothQuantOptions {
    double alpha = 0.5;             // used when alphaGrid is empty
    std::vector<double> alphaGrid;  // search per site over these (needs windows)
    bool attnOutput = true;         // smooth attn_output too (tied per KV head)
    double minScale = 1e-5;         // scales are clamped to at least this (as the reference code)
    W8A8Options w8a8;               // the quantizers the search and the error figures use
};

// Parses "0.3,0.4,0.5" (each 0..1).
Result<std::vector<double>> parseAlphaGrid(const std::string& text);

struct SmoothSite {
    std::string probe;  // "blk.0.attn_qkv"
    int block = 0;
    ProbeSite site = ProbeSite::AttnQkv;
    std::vector<std::string> members;  // the linear layers reading the input
    bool smoothed = false;
    std::string note;  // why the site was skipped or left unsmoothed
    double alpha = 0;
    std::vector<float> scales;        // s per input channel (1 when not smoothed)
    std::vector<float> actAbsMax;     // per channel, before smoothing (calibration)
    std::vector<float> weightAbsMax;  // per channel, max over the members' columns, before
    // max / median over channels, before and after smoothing (act / s, weight * s).
    double actRatioBefore = 0, actRatioAfter = 0;
    double weightRatioBefore = 0, weightRatioAfter = 0;
    // W8A8 relative output error on the search windows (when there were some): unsmoothed, at the
    // chosen alpha, and per grid point.
    double errorBefore = -1, errorAfter = -1;
    std::vector<double> errorByAlpha;
};

struct SmoothQuantTransform {
    SmoothQuantOptions options;
    std::vector<SmoothSite> sites;           // block order, execution order within a block
    std::map<std::string, ScaleFold> folds;  // what to do to each tensor

    const SmoothSite* find(const std::string& probe) const;
};

// max / median of |values| (0 when empty or the median is 0).
double maxMedianRatio(std::span<const float> values);

// s_j = max(actAbsMax_j, eps)^alpha / max(weightAbsMax_j, eps)^(1-alpha), clamped to minScale;
// channels with no activation or no weight get 1.
std::vector<float> smoothingScales(std::span<const float> actAbsMax,
                                   std::span<const float> weightAbsMax, double alpha,
                                   double minScale = 1e-5);

// The scales of one site at alpha: smoothingScales over its statistics, tied per KV head first
// (max over the query heads sharing it) when the site is attn_output under grouped-query attention.
std::vector<float> siteScales(const FoldSite& site, std::span<const float> actAbsMax,
                              std::span<const float> weightAbsMax, double alpha,
                              double minScale = 1e-5);

// One site's channels before and after smoothing with scales s: what computeSmoothQuant reports
// and the GUI draws (act / s, weight * s, and the max / median ratios of both).
struct SmoothingPreview {
    std::vector<float> scales, actAfter, weightAfter;
    double actRatioBefore = 0, actRatioAfter = 0;
    double weightRatioBefore = 0, weightRatioAfter = 0;
};
SmoothingPreview previewSmoothing(std::span<const float> actAbsMax,
                                  std::span<const float> weightAbsMax, std::vector<float> scales);

// Column abs-max over the members of a site (its weights decoded from the model).
Result<std::vector<float>> weightColumnAbsMax(const Model& model, const FoldSite& site);

// The relative W8A8 output error of layers `weights` (each rows_i x cols, row-major) on inputs x
// (tokens x cols) smoothed by s (empty: none); staticClip > 0 for static activations.
double w8a8OutputError(const MatrixXfRowMajor& x, std::span<const std::vector<float>> weights,
                       std::span<const float> s, const W8A8Options& options, float staticClip = 0);

// Scales for every site from the calibration's abs-max. With options.alphaGrid, `llama` (the
// unsmoothed float model) and `windows` are needed for the search; with a fixed alpha they are
// optional and only give the error figures.
Result<SmoothQuantTransform> computeSmoothQuant(const Model& model,
                                                const CalibrationResult& calibration,
                                                const SmoothQuantOptions& options,
                                                const LlamaModel* llama = nullptr,
                                                const std::vector<TokenWindow>* windows = nullptr,
                                                const ProgressFn& progress = {});

}  // namespace ql
