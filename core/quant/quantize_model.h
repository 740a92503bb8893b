// Applying a Layout to a whole model: every tensor is decoded to float, quantized with the format
// and method its plan names (round-to-nearest for now; gptq and awq rules are refused as not
// implemented yet before any work starts) and measured against the source: MSE, SQNR, max |error|
// and, when a calibration session holds a Hessian for the tensor's input, the output error
// tr(dW H dW^T) (error_metrics.h).
//
// With a calibration result, a tensor's input probe also supplies importance weights (mean x^2 per
// input channel) for the llama.cpp formats' scale search. Inputs by tensor:
//   attn_q, attn_k, attn_v -> blk.N.attn_qkv      attn_output -> blk.N.attn_output
//   ffn_gate, ffn_up       -> blk.N.ffn_gate_up   ffn_down    -> blk.N.ffn_down
// A tensor whose planned storage type equals its stored type (F32 kept F32, a Q4_K tensor no
// rule matches) is copied byte for byte, not re-encoded.
//
// quantizeTensor() does one tensor and is what the GGUF writer streams through; quantizeModel()
// keeps every tensor in memory (for evaluating a quantized model in memory).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "calib/calibration.h"
#include "layout/layout.h"
#include "model/model.h"
#include "quant/error_metrics.h"
#include "quant/format.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct QuantizeOptions {
    int threads = 0;            // 0 = all cores
    bool useImportance = true;  // importance weights from the calibration, when given
    bool hessianError = true;   // compute tr(dW H dW^T) when the calibration has Hessians
};

// Everything known about one tensor's quantization except its data.
struct TensorReport {
    TensorPlan plan;
    ErrorMetrics metrics;                    // quantized vs source, element-wise
    std::optional<OutputError> outputError;  // when the calibration has the input's Hessian
    std::string probe;                       // the tensor's input probe ("" when it has none)
    bool usedImportance = false;
    bool copied = false;           // stored bytes taken unchanged from the source
    std::uint64_t storedBits = 0;  // the format's size (format.h's accounting)
    double seconds = 0;
    std::string note;  // e.g. why the calibration could not be used for this tensor
};

struct TensorQuantization {
    TensorReport report;
    QuantizedTensor quantized;  // Float and llama.cpp formats hold their raw bytes in `blocks`
};

struct QuantizedModel {
    std::string layout;  // canonical layout text
    LayoutPlan plan;
    std::vector<TensorQuantization> tensors;  // the model's tensor order
    double seconds = 0;

    const TensorQuantization* find(std::string_view name) const;
    std::int64_t weightCount() const;
    std::uint64_t storedBits() const;
};

// The calibration probe feeding a tensor ("blk.3.attn_qkv"), or "" for tensors without one.
std::string inputProbeName(const TensorInfo& tensor);

// Unsupported when a plan entry asks for a method that is not implemented yet (gptq, awq).
Status checkMethodsAvailable(const Layout& layout, const LayoutPlan& plan);

// One tensor of `model` as `plan` says. `calibration` may be null.
Result<TensorQuantization> quantizeTensor(const Model& model, const TensorPlan& plan,
                                          const CalibrationResult* calibration,
                                          const QuantizeOptions& options = {},
                                          const ProgressFn& progress = {});

// The whole model; cancellable through `progress` (then ErrorCode::Cancelled).
Result<QuantizedModel> quantizeModel(const Model& model, const Layout& layout,
                                     const CalibrationResult* calibration = nullptr,
                                     const ProgressFn& progress = {},
                                     const QuantizeOptions& options = {});

// The float weights a quantized tensor decodes to, row-major in the source shape.
Result<std::vector<float>> dequantizedWeights(const QuantizedModel& model, std::string_view name);

}  // namespace ql
