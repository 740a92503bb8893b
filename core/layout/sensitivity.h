// Sensitivity of a model to the quantization of each tensor, measured and predicted.
//
// Measured (measureSensitivity): for every candidate tensor and format, that tensor alone is
// quantized (rtn, llama.cpp's fallback rules applied), its decoded values swapped into a runner
// (ModelRunner::replaceWeight: on the GPU when createBackend finds one, else the CPU runner over a
// mutable LlamaModel), a small evaluation set run, and the mean KL divergence of the model's
// next-token distribution from the unquantized model's over the scored positions recorded
// (ΔKL: the unquantized model's own KL is 0 on the same runner, float32). Formats that fall back
// to the same stored format for a tensor are measured once. The reference log-probabilities of
// every scored position are kept in host memory (windows x scored x vocab floats).
//
// Proxies (computeProxies): cheap stand-ins with no forward pass, each compared with the measured
// ΔKL by Spearman's rank correlation:
//   hessian_error      tr(dW H dW^T) / tokens, per tensor and format (the session's Hessians)
//   act_weighted_mse   sum_c E[x_c^2] * sum_r dW_rc^2, per tensor and format (diagonal of H only:
//                      needs only the activation energy, no Hessian)
//   activation_energy  sum_c E[x_c^2] of the tensor's input, per tensor (calibration)
//   kurtosis           E[(w-mean)^4] / var^2 of the weights, per tensor
//   outlier_share      share of weights with |w - mean| > 3 std, per tensor
// A per-tensor proxy's correlation is taken against ΔKL at each format; a per-format one over all
// (tensor, format) pairs. Token embedding and output head have no calibrated input (NaN).
//
// The table is stored in the session file (/sensitivity, session.h).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "calib/calibration.h"
#include "calib/dataset.h"
#include "compute/backend.h"
#include "model/model.h"
#include "quant/format.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

inline constexpr double kNoValue = std::numeric_limits<double>::quiet_NaN();

// One measured cell: tensor t quantized with format f alone.
struct SensitivityCell {
    std::string stored;              // the format actually stored (after fallback), canonical text
    std::uint64_t bytes = 0;         // its GGUF data bytes (size.h's accounting, no padding)
    double deltaKl = kNoValue;       // mean KL from the unquantized model, nats per token
    double sameTop = kNoValue;       // share of positions whose top token is unchanged
    double hessianError = kNoValue;  // proxy: tr(dW H dW^T) / tokens
    double actWeightedMse = kNoValue;  // proxy: sum_c E[x_c^2] * sum_r dW_rc^2
};

struct SensitivityTensor {
    std::string name;
    int block = -1;
    std::string role;  // tensorRoleName
    std::int64_t rows = 0, cols = 0;
    double activationEnergy = kNoValue;
    double kurtosis = kNoValue;
    double outlierShare = kNoValue;
    std::vector<SensitivityCell> cells;  // one per SensitivityTable::formats
};

struct SensitivityTable {
    std::vector<std::string> formats;  // candidate formats as asked (canonical text)
    std::vector<SensitivityTensor> tensors;
    std::string text;  // evaluation text file
    std::int32_t ctx = 0;
    std::int32_t windows = 0;
    std::int64_t positions = 0;  // scored positions per measurement
    std::string device;
    double seconds = 0;

    const SensitivityTensor* find(const std::string& name) const;
    int formatIndex(const std::string& format) const;  // -1 when absent
};

struct SensitivityOptions {
    std::vector<QuantFormat> formats;  // empty: defaultSensitivityFormats()
    std::string tensors = "*";         // glob over tensor names
    bool embeddings = true;            // include token_embd / output
};

// q2_k q3_k q4_k q5_k q6_k q8_0 q4_0 q5_0 int4 int8 (int formats as int4:g32 / int8 per channel).
std::vector<QuantFormat> defaultSensitivityFormats();

// Measures ΔKL on `windows` (e.g. makeLlamaCppChunks of a short text) on `backend`'s device (from
// createBackend(BackendKind::Auto): the GPU when present). `calibration` (may be null) only feeds
// the proxies. Cancellable.
Result<SensitivityTable> measureSensitivity(const Model& model, Backend& backend,
                                            const std::vector<TokenWindow>& windows,
                                            const CalibrationResult* calibration,
                                            const SensitivityOptions& options = {},
                                            const ProgressFn& progress = {});

// Fills the per-tensor proxies (kurtosis, outlier share, activation energy) and, with a
// calibration holding Hessians, the per-cell Hessian error, for every tensor of `table`.
Status computeProxies(const Model& model, const CalibrationResult* calibration,
                      SensitivityTable& table, const ProgressFn& progress = {});

struct ProxyCorrelation {
    std::string proxy;
    std::vector<double> perFormat;  // Spearman rho against ΔKL at each format (NaN: too few)
    double pooled = kNoValue;       // over all (tensor, format) pairs, or the per-format mean
    int pairs = 0;
};
std::vector<ProxyCorrelation> proxyCorrelations(const SensitivityTable& table);

// Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 finite pairs.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace ql
