// True-sequential quantization of a Llama-family model (GPTQ's "true sequential" mode): the
// Hessian each sublayer is quantized with is gathered from inputs that the already-quantized
// layers produce, not from the unquantized model.
//
// The passes run on a ModelRunner (compute/runner.h: beginBlocks, probeBlock, advanceBlock): the
// CPU runner over the LlamaModel, or a GPU runner, which keeps the windows' hidden states on the
// device. Calibration windows (all of one length) are embedded once (after token_embd is
// quantized) and their hidden states carried from block to block. In block b the sublayer groups
// are done in execution order:
//   q/k/v (input blk.b.attn_qkv) -> attn_output -> gate/up (blk.b.ffn_gate_up) -> ffn_down
// For each group, every window runs through block b as far as the group's input
// (probeBlock), which gives the input's statistics and Hessian (float64 on the CPU, float32
// accumulated on a GPU); the group's tensors are then quantized with them (quantizeTensor: gptq
// where QuantizeOptions::backend says, or rtn with importance weights) and their decoded values
// replace the weights in the LlamaModel and the runner, so the next group's inputs see them.
// After the last group the windows run through the quantized block to give the next block's
// inputs (advanceBlock).
// Tensors outside the blocks (token_embd, output_norm, output) are done first: they have no
// probe, so a gptq rule quantizes them with rtn (with a note). Norms a rule names exactly are
// done before their block's groups.
//
// Cost: up to five passes of every window through each block (a GPU runner stops a probe's pass
// at its site), plus the GPTQ work itself; memory: the hidden states of all windows (windows x
// tokens x dim floats, on the runner's device) and one Hessian at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "calib/calibration.h"
#include "calib/dataset.h"
#include "compute/runner.h"
#include "layout/layout.h"
#include "model/llama.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct SequentialQuantization {
    QuantizedModel model;
    // The statistics each sublayer group was quantized with (Hessians in float64 on the CPU,
    // float32 on a GPU), one probe per group that needed them, in execution order.
    CalibrationResult calibration;
    // Where the time went, seconds: the runner's passes (embedding, probes, block advances) and
    // the tensors' quantization (GPTQ, encoding, metrics); the runner's device memory at its peak.
    double passSeconds = 0;
    double quantizeSeconds = 0;
    std::uint64_t peakDeviceBytes = 0;
};

// `llama` must hold `model`'s unquantized weights (LlamaModel::create(model)). On success it
// holds the quantized model's decoded weights, ready to evaluate; after an error (Cancelled
// included) it holds a mix and should be discarded. Windows: e.g. makeCalibrationWindows.
// With options.partialOnCancel a cancelled run succeeds with a partial model (model.partial),
// and `llama` then holds exactly that model's weights: the finished tensors decoded, the rest
// unquantized. options.gptqObserver sees every GPTQ layer (runStarted lists them in this
// function's order); options.pauseGate is passed between calibration windows too.
// Runs on the CPU (a CpuLlamaRunner over `llama`).
Result<SequentialQuantization> quantizeModelSequential(const Model& model, LlamaModel& llama,
                                                       const std::vector<TokenWindow>& windows,
                                                       const Layout& layout,
                                                       const ProgressFn& progress = {},
                                                       const QuantizeOptions& options = {});
// Runs the passes on `runner`, made from `llama` (createLlamaRunner); both receive the quantized
// weights. GPTQ runs where options.backend says (null: the CPU).
Result<SequentialQuantization> quantizeModelSequential(const Model& model, LlamaModel& llama,
                                                       ModelRunner& runner,
                                                       const std::vector<TokenWindow>& windows,
                                                       const Layout& layout,
                                                       const ProgressFn& progress = {},
                                                       const QuantizeOptions& options = {});

}  // namespace ql
