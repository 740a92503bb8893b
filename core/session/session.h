// The QuantLens session file (HDF5). One file holds the model's identity and the work done on it;
// opening it recomputes nothing. Writes go to "<path>.tmp-<pid>" and are renamed into place, so a
// cancelled or failed write never leaves a half-written session.
//
// Versions. `version` is the format this file was written in; `compatible_version` the oldest
// reader that reads it correctly (absent: equal to version). A reader refuses a file whose
// compatible_version is newer than kSessionVersion, reads everything else, and ignores groups it
// does not know, so a later addition (a new group, e.g. /sensitivity) raises `version` but not
// `compatible_version`. Upgrade: version 1 files (model + calibration) read with empty layout,
// quantization, evaluations and view state; saving writes the current version.
// History: 1 model, calibration. 2 layout, quantization, evaluations, view, compatible_version.
//
// Layout, version 2:
//
//   /                          attrs  format = "quantlens-session" (string), version = 2 (int32),
//                                     compatible_version = 1 (int32), quantlens_version
//                                     (string), created (string, ISO 8601 UTC)
//   /model                     attrs  path, format ("GGUF" | "safetensors" | "llama2.c"),
//                                     architecture (strings); file_size (uint64); hash (string,
//                                     16 hex digits of ql::hashPath); parameters (int64)
//   /calibration               attrs  text_files (string, one path per line), samples, seq_len,
//                                     histogram_bins, top_k (int32); seed (uint64);
//                                     consecutive (int32 0/1); hessian ("none" | "f32" | "f64");
//                                     tokens (int64); seconds (double); device (string)
//   /calibration/probes/<name> one group per probe point, name "blk.N.<site>" with site one of
//                              attn_qkv, attn_output, ffn_gate_up, ffn_down
//                              attrs  block (int32), site (string), channels (int32),
//                                     tokens (int64), hist_range (double: histogram covers
//                                     [-hist_range, hist_range])
//                              datasets
//                                abs_max   float32 [C]     per-channel max |x|
//                                sum_abs   float64 [C]     per-channel Σ|x|   (mean = / tokens)
//                                sum_sq    float64 [C]     per-channel Σx²
//                                hist      uint64  [B]     signed histogram counts
//                                top_value float32 [K], top_channel / top_sample / top_position
//                                          int32 [K]       largest |x|, by descending |x|
//                                top_before / top_token / top_after  variable-length strings [K]
//                                hessian   float32 or float64 [C][C]   Σ xᵀx (absent for "none")
//   /layout                    attrs  text (string: the layout being edited, canonical rules)
//   /quantization              the last quantization of the model, one row per tensor (N):
//                              attrs  layout (string), seconds (double)
//                              datasets name, format, method   strings [N]
//                                       mse, sqnr_db, output_error_rel (NaN: unknown)  f64 [N]
//                                       gptq_loss, rtn_loss, damp (NaN: not GPTQ)      f64 [N]
//                                       dead_columns int64 [N]; act_order int32 [N]
//   /quantization/order/<name> int32 [<= 64]: GPTQ's first processed columns (act-order)
//   /evaluations/<i>           one group per evaluation, i = 0, 1, ... in the order run
//                              attrs  layout, text, protocol ("llama.cpp" | "per-document"),
//                                     device, created (strings); ctx, tokens, windows (int64);
//                                     ppl, ppl_stderr (double); reference_ppl, kl_mean, kl_p99,
//                                     same_top (double, present with a KL comparison)
//   /view                      datasets keys, values   strings [M]: the GUI's view state
//                              (selected tensor, window geometry and dock state as base64...)
//                              as opaque key/value pairs
//   /sensitivity               per-tensor sensitivity (layout/sensitivity.h), T tensors x F formats
//                              attrs  text (string), ctx, windows (int32), positions (int64),
//                                     device (string), seconds (double)
//                              datasets
//                                formats           strings [F]   candidate formats as asked
//                                tensors           strings [T]   tensor names, model order
//                                block             int32   [T]   (-1 outside the blocks)
//                                role              strings [T]
//                                shape             int64   [T][2] rows, cols
//                                activation_energy, kurtosis, outlier_share  float64 [T]
//                                stored            strings [T*F] format stored after fallback
//                                bytes             uint64  [T][F] GGUF data bytes
//                                delta_kl, same_top, hessian_error, act_weighted_mse
//                                                  float64 [T][F] (NaN: not measured)
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <limits>
#include <utility>
#include <vector>

#include "calib/calibration.h"
#include "layout/sensitivity.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

inline constexpr int kSessionVersion = 2;
// The oldest reader version that reads what this version writes.
inline constexpr int kSessionCompatibleVersion = 1;

struct ModelIdentity {
    std::string path;
    std::string format;
    std::string architecture;
    std::uint64_t fileSize = 0;
    std::uint64_t hash = 0;
    std::int64_t parameters = 0;
};

// Identity of an opened model (hashes its files: cancellable).
Result<ModelIdentity> identifyModel(const Model& model, const ProgressFn& progress = {});

// One tensor of a quantization run, without its data (from quant/quantize_model.h's report).
struct SessionTensorResult {
    std::string name, format, method;
    double mse = 0, sqnrDb = 0;
    double outputErrorRelative = std::numeric_limits<double>::quiet_NaN();
    double gptqLoss = std::numeric_limits<double>::quiet_NaN();  // NaN: GPTQ did not run
    double rtnLoss = std::numeric_limits<double>::quiet_NaN();
    double damp = std::numeric_limits<double>::quiet_NaN();
    std::int64_t deadColumns = 0;
    bool actOrder = false;
    std::vector<std::int32_t> orderHead;  // GPTQ's first processed columns (at most 64)
};

struct SessionQuantization {
    std::string layout;
    double seconds = 0;
    std::vector<SessionTensorResult> tensors;
};
// The summary of a quantized model a session keeps.
SessionQuantization summarizeQuantization(const QuantizedModel& model);

struct SessionEvaluation {
    std::string layout;  // empty: the unquantized model
    std::string text, protocol = "llama.cpp", device, created;
    std::int64_t ctx = 0, tokens = 0, windows = 0;
    double ppl = 0, pplStdError = 0;
    std::optional<double> referencePpl, klMean, klP99, sameTop;
};

struct SessionData {
    ModelIdentity model;
    std::optional<CalibrationResult> calibration;
    std::string layout;
    std::optional<SessionQuantization> quantization;
    std::vector<SessionEvaluation> evaluations;
    std::vector<std::pair<std::string, std::string>> view;  // key, value (UI-defined)
    int fileVersion = kSessionVersion;                      // as read (0 for a new session)

    const std::string* viewValue(const std::string& key) const;
    std::optional<SensitivityTable> sensitivity;
};

// Lines describing a session (quantlens-cli session info).
std::vector<std::string> describeSession(const SessionData& session);

Status writeSession(const std::string& path, const SessionData& session,
                    const ProgressFn& progress = {});
Result<SessionData> readSession(const std::string& path, const ProgressFn& progress = {});

// Does the model file still match the identity stored in a session? An error message that tells
// the user what changed when it does not.
Status checkModelIdentity(const ModelIdentity& stored, const ModelIdentity& current);

}  // namespace ql
