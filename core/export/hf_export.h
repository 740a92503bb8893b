// Hugging Face exports of a quantized model, and the compatibility check every export target
// (GGUF included) runs before writing.
//
// GPTQ safetensors (writeGptqFolder): a folder transformers / AutoGPTQ / GPTQModel load with
// quant_method "gptq":
//   config.json        the model's Hugging Face config (io/safetensors.h) + quantization_config
//                      {quant_method "gptq", bits, group_size (-1 per channel), sym, desc_act
//                      false, static_groups false, checkpoint_format "gptq", true_sequential,
//                      damp_percent, meta {quantizer}, and where some block layers stay
//                      unquantized: modules_in_block_to_quantize (the same layers in every block)
//                      or GPTQModel's "dynamic" {"-:<regex>": {}} entries (otherwise)}
//   model.safetensors  quantized layers as <module>.qweight / qzeros / scales / g_idx
//                      (io/gptq_layout.h: packing, the zero-minus-one convention, mirrored
//                      zero-0 groups); every other tensor (embeddings, norms, lm_head, layers
//                      left unquantized) as the float values the quantized model decodes to, in
//                      HfExportOptions::floatType (F16 by default, as GPTQ checkpoints are)
//   tokenizer files    copied from a Hugging Face source folder; a GGUF or llama2.c source has
//                      none to copy: generation_config.json gets its BOS/EOS ids and a warning
//                      says the tokenizer is missing
//   quantlens.json     provenance: layout, source, per-layer formats, fallbacks
// The layout has one quantization config, so the quantized layers share one format: the uniform
// INT format (2, 3, 4 or 8 bits; sym/asym; per channel or groups) that holds the most weights of
// the block layers. act-order: QuantLens's GPTQ keeps groups contiguous in the original column
// order (quant/gptq.h), so g_idx[i] = i / group_size and desc_act is written false (loaders
// then need no reordering; the processing order lives in the session). Llama models from GGUF
// or llama2.c get q_proj/k_proj rows back in Hugging Face's rotate-half order (io/safetensors.h),
// rows moving with their scales and zero points, which is exact.
//
// What GPTQ cannot hold is listed by checkExportCompatibility with the fallback taken: a layer in
// another format (llama.cpp blocks, NF4, FP4, FP8, another INT format) keeps its decoded values
// as a float layer (GptqFallback::KeepFloat, the default: the numbers stay those evaluated) or is
// re-quantized from the source weights to the GPTQ format with RTN (GptqFallback::Requantize);
// a layer whose in/out features do not pack (4 bits: multiples of 8; 3 bits: of 32) stays
// float; embeddings and lm_head stay float. When no block layer is in a GPTQ format at all,
// Requantize uses int4, group 128, symmetric; KeepFloat refuses (nothing would be quantized).
//
// Fake-quant safetensors (writeFakeQuantFolder): the same folder shape without quantization:
// every tensor as the values the quantized model decodes to, in F16, BF16 or F32; config.json
// without quantization_config. For research code that wants the quantized numbers in a plain
// model.
//
// Every file is written to "<name>.partial-<pid>" in the target folder (created when missing)
// and all are renamed into place only after the last one is complete; on an error or a cancel
// the partial files are removed and files already in the folder stay as they were.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "layout/layout.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

enum class ExportTarget { Gguf, GptqSafetensors, FakeQuantSafetensors };
const char* exportTargetName(ExportTarget target);  // "GGUF", "GPTQ safetensors", ...

enum class GptqFallback { KeepFloat, Requantize };

struct HfExportOptions {
    // GPTQ: tensors written unquantized; fake-quant: every tensor. F16, BF16 or F32.
    TensorType floatType = TensorType::F16;
    GptqFallback fallback = GptqFallback::KeepFloat;
    // GGUF: how formats llama.cpp has no type for are written (F16 or F32); for the check only.
    TensorType ggufDequantType = TensorType::F16;
    std::string producer = "QuantLens";
};

// One tensor the target cannot store as planned.
struct ExportIssue {
    std::string tensor;
    std::string wanted;    // the planned format
    std::string problem;   // what the target cannot represent
    std::string fallback;  // what is written instead
};

struct ExportCompatibility {
    ExportTarget target = ExportTarget::Gguf;
    std::vector<ExportIssue> issues;
    std::vector<std::string> notes;         // e.g. the GPTQ configuration chosen
    std::vector<std::string> warnings;      // loaders that may not read the result
    std::optional<QuantFormat> gptqFormat;  // GPTQ: the one format of the quantized layers
    int gptqLayers = 0;                     // GPTQ: layers written packed
};

// What `target` makes of `plan` (before any quantization). InvalidArgument when the target can
// store nothing useful (GPTQ with no layer in a GPTQ format and KeepFloat), naming what to do.
Result<ExportCompatibility> checkExportCompatibility(ExportTarget target, const Model& model,
                                                     const LayoutPlan& plan,
                                                     const HfExportOptions& options = {});
// One line per issue: "tensor: wanted -> fallback (problem)".
std::vector<std::string> compatibilityLines(const ExportCompatibility& c);

struct HfExportReport {
    std::string dir;
    std::vector<std::pair<std::string, std::uint64_t>> files;  // name, bytes
    std::uint64_t totalBytes = 0;
    ExportCompatibility compatibility;
    std::vector<std::string> warnings;
    std::vector<std::string> notes;
    std::int64_t mirroredGroups = 0;  // GPTQ: asymmetric groups with zero point 0 (gptq_layout.h)
    double seconds = 0;
};

// `quantized` must be `model` quantized (its plan covers the model's tensors).
Result<HfExportReport> writeGptqFolder(const Model& model, const QuantizedModel& quantized,
                                       const std::string& dir, const HfExportOptions& options = {},
                                       const ProgressFn& progress = {});
Result<HfExportReport> writeFakeQuantFolder(const Model& model, const QuantizedModel& quantized,
                                            const std::string& dir,
                                            const HfExportOptions& options = {},
                                            const ProgressFn& progress = {});

}  // namespace ql
