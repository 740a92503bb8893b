// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers") for one weight matrix, on the CPU, into any QuantFormat.
//
// W is rows x cols (rows = output channels, cols = input channels), H = sum_t x_t x_t^T the
// cols x cols Hessian of the layer's inputs (ActivationStats::hessian). Columns are quantized one
// at a time; the rounding error of each is spread over the columns not yet quantized through the
// upper Cholesky factor U of (H + damp I)^-1, which keeps tr(dW H dW^T) (the summed squared
// output error over the calibration tokens) small instead of |dW|^2. As in the paper's code:
//  * columns whose H_ii = 0 ("dead": the input is always zero) get H_ii = 1 and W_:i = 0;
//  * damp = `damp` x mean(diag H) is added to the diagonal; when a Cholesky factorization fails
//    the fraction is raised x10 and the raise reported (GptqResult::dampRaises);
//  * updates are lazy: columns are processed in blocks of `blockSize`, later columns receive a
//    block's updates as one matrix product;
//  * act-order processes columns by descending H_ii; groups stay the format's groups, contiguous
//    in the original column order (groupIndex is simply col / group size), so the result is
//    stored by the format itself, with no g_idx permutation.
//
// Any format: a group's parameters (scale, zero point, a llama.cpp block header, ...) are fitted
// by the format's own codec (format.h: prepare + encodeRows, with `importance` for the llama.cpp
// formats' scale search) on the group's current, error-compensated weights when the loop first
// reaches one of its columns; with `staticGroups` every group is fitted before the loop from the
// original weights. Each weight is then rounded to the nearest representable value of its group
// (gridLevels semantics; ties to the lower value). The "group" fitted at once is the format's
// scale group: an INT-n group, a row (per channel) or the whole tensor (per tensor), an NF4 /
// FP4 block, a llama.cpp block (256 weights for the k-quants, whose sub-block scales are fitted
// with the block). Tensor-wide constants (a per-tensor scale, NVFP4's FP32 tensor scale, NF4's
// double-quantization offset and second-level scales) come from the original weights.
//
// The returned QuantizedTensor holds exactly those group parameters and the codes of the final
// values (for llama.cpp formats the block bytes as llama.cpp reads them); decoding it reproduces
// GptqResult::weights bit for bit, which quantizeGptq verifies before returning.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "quant/error_metrics.h"
#include "quant/format.h"
#include "quant/gptq_observer.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct GptqOptions {
    double damp = 0.01;            // damp=F: fraction of mean(diag H) added to the diagonal
    std::int64_t blockSize = 128;  // block=N: columns per lazy batch
    bool actOrder = false;         // actorder: columns by descending H_ii
    bool staticGroups = false;     // static: group parameters from the original weights
    int threads = 0;               // for the codec's fitting; 0 = all cores
};

// A layout rule's method options: damp=F (0 <= F < 1e6), block=N (>= 1), actorder[=BOOL],
// static[=BOOL] (BOOL: true/false, 1/0, yes/no, on/off; layout.h stores a bare flag as "true").
Result<GptqOptions> parseGptqOptions(
    std::span<const std::pair<std::string, std::string>> methodOptions);
// Canonical text, e.g. "damp=0.01 block=128 actorder".
std::string gptqOptionsText(const GptqOptions& options);

struct GptqResult {
    QuantizedTensor quantized;
    std::vector<float> weights;  // the final weights, rows x cols row-major (= decoded quantized)

    // GPTQ's own loss, sum over weights of (w - q)^2 / d^2 (d = U_ii), which equals
    // tr(dW H' dW^T) with H' the damped Hessian (dead columns: H'_ii = 1 + damp, W_:i = 0).
    // rtnLoss is the same quadratic form for round-to-nearest in the same format (dead columns
    // left out), so loss / rtnLoss is GPTQ's gain on its own objective.
    double loss = 0;
    double rtnLoss = 0;
    // tr(dW H dW^T) with the undamped H, against the weights as given, for GPTQ and RTN.
    OutputError error;
    OutputError rtnError;

    double damp = 0;                      // the fraction finally used
    double dampAbsolute = 0;              // damp x mean(diag H)
    std::vector<std::string> dampRaises;  // one line per automatic raise
    std::int64_t deadColumns = 0;
    std::vector<std::int32_t> order;       // processing order (original column indices)
    std::vector<std::int32_t> groupIndex;  // scale group of each column (original order)
    double seconds = 0;
    std::string note;  // where it ran when a backend chose (e.g. "cuda", or why the CPU did)
};

// w: rows x cols row-major; hessian: cols x cols row-major (symmetric, finite, diag >= 0);
// importance: optional cols values for the llama.cpp formats' scale search (as quantizeRtn).
// Errors: InvalidArgument (shapes, non-finite input, a float format, a format that does not fit),
// Numerical (no dampening up to 1e6 x mean diag makes H factorizable), Cancelled, OutOfMemory.
// `monitor` sees the layer's events (gptq_observer.h) and holds the loop at its pause gate
// between lazy blocks; cancellation (progress returning false, or the gate cancelled) is checked
// after every block.
Result<GptqResult> quantizeGptq(const float* w, std::int64_t rows, std::int64_t cols,
                                std::span<const double> hessian, const QuantFormat& format,
                                const GptqOptions& options = {}, const float* importance = nullptr,
                                const ProgressFn& progress = {}, const GptqMonitor& monitor = {});

// The layerFinished event of a finished layer (every GPTQ implementation reports the same).
GptqLayerDone gptqLayerDone(const std::string& tensor, const GptqResult& result);

}  // namespace ql
