// The QuantLens session file (HDF5). One file holds the model's identity and the work done on it;
// opening it recomputes nothing. Writes go to "<path>.tmp-<pid>" and are renamed into place, so a
// cancelled or failed write never leaves a half-written session.
//
// Layout, version 1 (every later addition is a new group; readers ignore groups they don't know):
//
//   /                          attrs  format = "quantlens-session" (string), version = 1 (int32),
//                                     quantlens_version (string), created (string, ISO 8601 UTC)
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

#include "calib/calibration.h"
#include "layout/sensitivity.h"
#include "model/model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

inline constexpr int kSessionVersion = 1;

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

struct SessionData {
    ModelIdentity model;
    std::optional<CalibrationResult> calibration;
    std::optional<SensitivityTable> sensitivity;
};

Status writeSession(const std::string& path, const SessionData& session,
                    const ProgressFn& progress = {});
Result<SessionData> readSession(const std::string& path, const ProgressFn& progress = {});

// Does the model file still match the identity stored in a session? An error message that tells
// the user what changed when it does not.
Status checkModelIdentity(const ModelIdentity& stored, const ModelIdentity& current);

}  // namespace ql
