// Applying a Layout to a whole model: every tensor is decoded to float, quantized with the format
// and method its plan names (rtn, or gptq with the Hessian of the tensor's input from the
// calibration, quant/gptq.h, or awq, quant/awq.h: its scales are searched for the whole model
// first, and the folded norms and ffn_up tensors come out among the model's tensors)
// and measured against the source: MSE, SQNR, max |error| and, when a calibration session holds a
// Hessian for the tensor's input, the output error tr(dW H dW^T) (error_metrics.h).
//
// GPTQ needs a Hessian: a gptq tensor whose probe the calibration lacks, or whose probe has no
// Hessian (calibrated with --hessian none), is an error (checkGptqCalibration finds these before
// any work). Tensors no probe feeds (token_embd, output) are quantized with rtn, with a note;
// float formats are converted as with rtn. quantizeModel() takes every Hessian from one
// calibration of the unquantized model; gptq_sequential.h quantizes block by block instead,
// recomputing each sublayer's inputs with the layers before it already quantized.
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
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "calib/calibration.h"
#include "layout/layout.h"
#include "model/model.h"
#include "quant/awq.h"
#include "quant/error_metrics.h"
#include "quant/format.h"
#include "quant/gptq.h"
#include "quant/gptq_observer.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

class Backend;
struct TensorReport;

// Sees each tensor's report as soon as the tensor is done, on the calling thread (e.g. to print
// GPTQ's loss as it goes).
class TensorObserver {
public:
    virtual ~TensorObserver() = default;
    virtual void tensorDone(const TensorReport& report) = 0;
};

struct QuantizeOptions {
    int threads = 0;            // 0 = all cores
    bool useImportance = true;  // importance weights from the calibration, when given
    bool hessianError = true;   // compute tr(dW H dW^T) when the calibration has Hessians
    TensorObserver* observer = nullptr;
    // GPTQ's live events (gptq_observer.h) and the gate the run holds at while paused: before
    // each tensor, between GPTQ's lazy blocks and (true-sequential) between calibration windows.
    GptqObserver* gptqObserver = nullptr;
    PauseGate* pauseGate = nullptr;
    // A cancelled whole-model run returns what it finished (QuantizedModel::partial) instead of
    // ErrorCode::Cancelled. Other errors are still errors.
    bool partialOnCancel = false;
    // AWQ's scales and folds (computeAwqTransform); quantizeModel and the GGUF writer fill it in
    // when the layout has awq rules. A tensor it names is transformed before quantization (and
    // re-encoded even when its storage type is kept: a folded norm is written as its new F32).
    const AwqTransform* awq = nullptr;
    // Other scales folded into tensors before quantization (SmoothQuant's, quant/smoothquant.h);
    // a tensor named here is re-encoded even when its storage type is kept. AWQ's entry wins.
    const std::map<std::string, ScaleFold>* folds = nullptr;
    // Where GPTQ runs (Backend::quantizeGptq: the GPU for the formats it has); null: core's
    // quantizeGptq on the CPU.
    Backend* backend = nullptr;
    // quantizeTensor hands back the decoded values it measured (TensorQuantization::decoded).
    bool keepDecoded = false;
};

// What AWQ reported for one tensor it scaled.
struct AwqReport {
    AwqOptions options;
    std::string group;     // the input probe whose layers were scaled together
    double alpha = 0;      // the chosen exponent
    double rtnError = 0;   // tr(dW H dW^T) for rtn
    double awqError = 0;   // the same for AWQ at alpha, before clipping
    double reference = 0;  // tr(W H W^T) in the search's frame (0: unknown)
    double meanClip = 1;   // mean per-row clip ratio (1 without clip)
};

// What GPTQ reported for one tensor (quant/gptq.h's GptqResult without the data).
struct GptqReport {
    GptqOptions options;
    double loss = 0;       // GPTQ's loss, tr(dW H' dW^T) with the damped Hessian H'
    double rtnLoss = 0;    // the same for rtn in the same format
    OutputError rtnError;  // rtn's tr(dW H dW^T); GPTQ's is TensorReport::outputError
    double damp = 0;       // fraction of mean(diag H) finally used
    std::vector<std::string> dampRaises;
    std::int64_t deadColumns = 0;
    std::vector<std::int32_t> orderHead;  // the first (at most 64) columns GPTQ processed
    double seconds = 0;
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
    std::string note;                // e.g. why the calibration could not be used for this tensor
    std::optional<GptqReport> gptq;  // when GPTQ quantized the tensor
    std::optional<AwqReport> awq;    // when AWQ scaled and quantized the tensor
    // In a partial model: the run stopped before this tensor, which is kept as in the source
    // (its plan names the source's storage type, its bytes are the source's).
    bool unfinished = false;
};

struct TensorQuantization {
    TensorReport report;
    QuantizedTensor quantized;   // Float and llama.cpp formats hold their raw bytes in `blocks`
    std::vector<float> decoded;  // quantized's values, with QuantizeOptions::keepDecoded only
};

// A partial model comes from a run cancelled with QuantizeOptions::partialOnCancel: the tensors
// the run finished are quantized as the layout says, the others (TensorReport::unfinished) are
// the source's bytes in the source's type, and `plan` says so for each tensor (their fallbacks
// dropped, a warning added), so the partial model evaluates and exports like any other.
struct QuantizedModel {
    std::string layout;  // canonical layout text
    LayoutPlan plan;
    std::vector<TensorQuantization> tensors;  // the model's tensor order
    double seconds = 0;
    bool partial = false;

    const TensorQuantization* find(std::string_view name) const;
    std::int64_t weightCount() const;
    std::uint64_t storedBits() const;
    std::size_t finishedCount() const;  // tensors not unfinished
};

// The tensors a whole-model run will quantize with GPTQ, in the order quantizeModel does them
// (runStarted's list).
std::vector<GptqPlannedLayer> plannedGptqLayers(const Model& model, const LayoutPlan& plan);

// Makes `out` a partial model: tensors whose `finished` flag is false (or that are missing from
// out.tensors, which must then be empty or hold plan order) are taken from the source unchanged.
Status completePartialModel(const Model& model, const std::vector<bool>& finished,
                            QuantizedModel& out);

// One line on a tensor GPTQ quantized, for logs: name, format, GPTQ's loss against rtn's, the
// output error tr(dW H dW^T) of both relative to tr(W H W^T), the dampening, dampening raises and
// dead columns. "" when GPTQ did not run.
std::string gptqSummary(const TensorReport& report);

// One line on a tensor AWQ quantized: name, format, alpha, output error of rtn and AWQ (relative
// to tr(W H W^T) when known). "" when AWQ did not run.
std::string awqSummary(const TensorReport& report);

// The calibration probe feeding a tensor ("blk.3.attn_qkv"), or "" for tensors without one.
std::string inputProbeName(const TensorInfo& tensor);

// InvalidArgument for gptq / awq options parseGptqOptions / parseAwqOptions refuse (naming the
// rule).
Status checkMethodsAvailable(const Layout& layout, const LayoutPlan& plan);

// Whether a plan entry will run GPTQ: method gptq, a quantized format, a tensor some probe feeds.
bool runsGptq(const Model& model, const TensorPlan& plan);
// InvalidArgument, before any work, when a tensor that runs GPTQ has no Hessian in
// `calibration` (null: no calibration at all), naming the tensor, the probe and what to do.
Status checkGptqCalibration(const Model& model, const LayoutPlan& plan,
                            const CalibrationResult* calibration);

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
