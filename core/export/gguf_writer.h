// GGUF v3 writer for quantized models (the layout read by core/io/gguf.h; see its header comment):
//
//   u32 magic "GGUF", u32 version 3, u64 tensor_count, u64 metadata_kv_count
//   metadata: { string key; u32 type; value }   (every MetaType, arrays nested, types kept)
//   tensor infos: { string name; u32 n_dims; u64 ne[n_dims] (innermost first: our shape
//                   reversed); u32 ggml_type; u64 offset (from the data start, aligned) }
//   zero padding to `general.alignment` (the source's value, else 32)
//   tensor data, each tensor zero-padded to the alignment
//
// Metadata: every key of the source model in its order and with its original value types
// (safetensors and llama2.c models carry the GGUF keys their loaders filled in; their tokenizer,
// llama2.c tokenizer.bin or a byte-level BPE tokenizer.json, is converted to tokenizer.ggml.*),
// then general.file_type (the llama_ftype of the type holding most weights),
// general.quantization_version = 2 when a tensor is block-quantized, and provenance keys:
//   quantlens.producer, quantlens.layout (canonical layout), quantlens.source (file name),
//   quantlens.source_format, quantlens.calibration (session, when used), quantlens.fallbacks
//   ("tensor: wanted -> got"), quantlens.dequantized ("tensor=format": tensors below).
// Older quantlens.* keys of the source are dropped.
//
// Tensors: F32/F16/BF16 and llama.cpp block formats are stored natively (their raw bytes).
// A Hugging Face llama/mistral model keeps attn_q/attn_k rows in its "rotate half" RoPE order
// (io/safetensors.h); they are written in llama.cpp's order (adjacent pairs), as its converter
// does: GGUF row h*hd + 2i + s takes source row h*hd + s*hd/2 + i. Rows quantize independently,
// so reordering the encoded rows is exact.
// Formats llama.cpp has no type for (NF4, MXFP4, NVFP4, FP8, INT-n) are written as the values they
// decode to, in F16 (default) or F32: a file for research, with the real format named in
// quantlens.dequantized and in the report. Such a tensor whose rows llama.cpp cannot run as F16
// (length not a multiple of 16, llamaCppRowMultiple in quant/format.h) is written as F32 instead,
// with a note; an F16 matrix of that kind that the layout asks for explicitly is written as asked,
// with a warning that llama.cpp on AMX CPUs computes it wrongly.
//
// The file is written to "<path>.tmp-<pid>" in the same folder and renamed over <path> at the
// end; a cancelled or failed write removes it and leaves any existing <path> alone. exportGguf()
// quantizes and writes one tensor at a time (sizes are known from the plan before any data
// exists), so peak memory is about one tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "calib/calibration.h"
#include "layout/layout.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

struct GgufExportOptions {
    TensorType dequantType = TensorType::F16;  // F16 or F32, for formats GGUF cannot store
    QuantizeOptions quantize;
    std::string producer = "QuantLens";  // quantlens.producer
    std::string calibrationPath;         // quantlens.calibration (provenance only)
};

struct GgufTensorRecord {
    TensorReport report;
    TensorType storedType = TensorType::F32;  // the GGUF tensor type written
    bool dequantized = false;  // the format has no GGUF type: decoded values were written
    std::uint64_t bytes = 0;   // data bytes in the file (without padding)
    // For dequantized tensors written as F16: the largest |F16(v) - v| over the decoded values
    // (0 when F16 holds them exactly, or for F32).
    double storageError = 0;
};

struct GgufWriteReport {
    std::string path;
    std::vector<GgufTensorRecord> tensors;  // the model's order
    std::vector<LayoutFallback> fallbacks;
    std::vector<std::string> warnings;  // layout warnings, tokenizer conversion
    std::vector<std::string> notes;     // conversions made on the way (RoPE row order)
    std::uint64_t fileBytes = 0;
    std::uint64_t tensorBytes = 0;  // tensor data in the file, without padding
    std::int64_t weights = 0;
    std::uint64_t formatBits = 0;  // sum of the formats' stored sizes (format.h's accounting)
    double seconds = 0;
};

// Quantize `model` with `layout` and write it, one tensor at a time. `calibration` may be null.
Result<GgufWriteReport> exportGguf(const Model& model, const Layout& layout,
                                   const std::string& path,
                                   const CalibrationResult* calibration = nullptr,
                                   const GgufExportOptions& options = {},
                                   const ProgressFn& progress = {});

// Write a model already quantized in memory (its tensors must be `model`'s).
Result<GgufWriteReport> writeGguf(const Model& model, const QuantizedModel& quantized,
                                  const std::string& path, const GgufExportOptions& options = {},
                                  const ProgressFn& progress = {});

// llama.cpp's general.file_type for a file whose largest share of weights is stored as `type`
// (Q3_K, Q4_K, Q5_K map to the _S mixes, which hold only that type).
std::uint32_t ggufFileType(TensorType type);

// The GGUF type a format is written as, for rows of `cols` values: its own for floats and
// llama.cpp formats, else `dequantType`, or F32 where llama.cpp cannot run F16 rows of `cols`;
// `dequantized` tells whether the decoded values are written.
TensorType ggufStorageType(const QuantFormat& format, TensorType dequantType, std::int64_t cols,
                           bool* dequantized);

// tokenizer.ggml.* keys for a model whose tokenizer is not in its metadata (llama2.c
// tokenizer.bin, byte-level BPE tokenizer.json). Empty with nothing added when the metadata
// already has tokenizer.ggml.tokens; problems go to `warnings`.
std::vector<std::pair<std::string, MetaValue>> tokenizerMetadata(
    const Model& model, std::vector<std::string>& warnings);

}  // namespace ql
