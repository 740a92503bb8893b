// Size accounting of a layout: what the exported GGUF file will weigh, per tensor, per block and in
// total, before anything is quantized, and whether the model fits a GPU with a given context.
//
// The estimate follows core/export/gguf_writer.h byte for byte: every tensor's GGUF storage type
// (ggufStorageType: a llama.cpp or float format as itself, any other format as the F16/F32 values
// it decodes to, since GGUF has no type for it), its data padded to `general.alignment`, and a
// header made of the same metadata the writer emits (the source's keys, the tokenizer keys it
// converts, general.file_type, general.quantization_version, the quantlens.* provenance keys
// including the layout text and the fallback list) plus the tensor infos. For a model the writer
// exports unchanged this is the exact file size; the only unknowns are provenance strings the
// caller does not pass (calibrationPath), so the stated tolerance is their length.
//
// Bits per weight: `bpw` counts tensor data over all weights (llama.cpp's convention), `fileBpw`
// the whole file.
//
// GPU memory (estimateMemory): weights as stored, a KV cache of 2 x blocks x ctx x kvHeads x
// headDim values (F16 by default, llama.cpp's default cache type) per sequence, and activations of
// one forward pass: hidden states and FFN intermediates of `ctx` tokens in float32 (4 x dim + 3 x
// ffnDim per token), attention scores of one head-batch (heads x ctx x ctx float32) and the logits
// (ctx x vocab float32); plus a fixed runtime reserve (CUDA context, workspace) of 300 MiB by
// default.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "layout/layout.h"
#include "model/model.h"
#include "util/result.h"

namespace ql {

struct SizeOptions {
    TensorType dequantType = TensorType::F16;  // as GgufExportOptions::dequantType
    std::string producer = "QuantLens";
    std::string calibrationPath;  // quantlens.calibration, when the export will name a session
};

struct TensorSize {
    std::string name;
    int block = -1;
    TensorRole role = TensorRole::Other;
    QuantFormat format;  // after fallback
    TensorType storedType = TensorType::F32;
    std::int64_t weights = 0;
    std::uint64_t bytes = 0;        // tensor data as written (no padding)
    std::uint64_t paddedBytes = 0;  // with the alignment padding after it
    double bpw = 0;                 // bytes * 8 / weights
};

struct BlockSize {
    int block = -1;  // -1: tensors outside the blocks (embedding, head, final norm)
    std::int64_t weights = 0;
    std::uint64_t bytes = 0;
};

struct SizeReport {
    std::vector<TensorSize> tensors;  // the model's order
    std::vector<BlockSize> blocks;    // -1 first, then 0..n-1
    std::uint64_t headerBytes = 0;    // header + metadata + tensor infos + padding to the data
    std::uint64_t tensorBytes = 0;    // sum of TensorSize::bytes
    std::uint64_t paddingBytes = 0;   // alignment padding between tensors
    std::uint64_t fileBytes = 0;      // the whole file
    std::int64_t weights = 0;         // every element of every tensor
    double bpw = 0;                   // tensorBytes * 8 / weights
    double fileBpw = 0;               // fileBytes * 8 / weights
    std::uint64_t alignment = 32;

    const TensorSize* find(const std::string& name) const;
};

// Size of the GGUF file exportGguf(model, layout) writes; `layoutText` is what goes into
// quantlens.layout (the layout's canonical text).
Result<SizeReport> estimateSize(const Model& model, const LayoutPlan& plan,
                                const std::string& layoutText, const SizeOptions& options = {});
Result<SizeReport> estimateSize(const Model& model, const Layout& layout,
                                const SizeOptions& options = {});

// Serialized size of one GGUF metadata value (without key and type).
std::uint64_t ggufValueBytes(const MetaValue& value);

struct MemoryOptions {
    std::int64_t context = 4096;
    std::int64_t batch = 1;
    int kvBytesPerValue = 2;                    // F16 cache
    std::uint64_t reserveBytes = 300ull << 20;  // CUDA context, cuBLAS workspace
};

struct MemoryEstimate {
    std::uint64_t weights = 0;
    std::uint64_t kvCache = 0;
    std::uint64_t activations = 0;
    std::uint64_t reserve = 0;
    std::uint64_t total = 0;
    bool fits(std::uint64_t deviceBytes) const { return total <= deviceBytes; }
};

MemoryEstimate estimateMemory(const Model& model, const SizeReport& size,
                              const MemoryOptions& options = {});

}  // namespace ql
