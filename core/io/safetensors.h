// Hugging Face safetensors: reading model folders and writing them.
//
// A .safetensors file is
//   u64 N (little-endian)            length of the header
//   N bytes of JSON (UTF-8, may be padded with spaces)
//     { "__metadata__": {string: string} (optional),
//       "<tensor name>": {"dtype": "F32"|"F16"|"BF16"|..., "shape": [d0, d1, ...],
//                         "data_offsets": [begin, end]}, ... }
//   the data section: tensor bytes at [8 + N + begin, 8 + N + end), row-major, little-endian.
// end - begin must equal the dtype size times the shape product. QuantLens reads F32, F16 and
// BF16 and refuses the other dtypes (F64, I8, U8, F8_E4M3, ...) by name.
//
// A model folder holds config.json (architecture and hyper-parameters) and either one
// model.safetensors or shards listed by model.safetensors.index.json ({"weight_map": {tensor
// name: shard file name}}). tokenizer.json beside them, when present, is the tokenizer.
// Llama, Mistral and Qwen2 configs are understood (LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM, including SmolLM's); Mistral maps to GGUF architecture "llama", as
// llama.cpp's converter does. Tensor names map to GGUF names (model.layers.3.self_attn.q_proj
// .weight -> blk.3.attn_q.weight) and config keys to GGUF metadata keys.
//
// RoPE layout. Hugging Face Llama/Mistral checkpoints rotate element i of a head with element
// i + head_dim/2 ("rotate half", NeoX style); llama.cpp permutes the rows of attn_q and attn_k
// when converting to GGUF architecture llama so that it rotates adjacent pairs (2i, 2i + 1), as
// llama2.c also does. The reader keeps the file's bytes (tensors point into the map), so a
// Safetensors-format llama model has attn_q/attn_k rows in Hugging Face order: a forward pass
// must use the NeoX rotation for it, or permute. Qwen2 uses the NeoX rotation in both formats.
// writeSafetensorsFolder converts a llama model read from GGUF or llama2.c back to Hugging Face
// order, so the folder it writes is a faithful Hugging Face model.
//
// GPTQ checkpoints (config.json quantization_config.quant_method "gptq", checkpoint_format
// "gptq" or "gptq_v2"; layout in io/gptq_layout.h): each layer's qweight/qzeros/scales/g_idx is
// decoded on opening into a float32 "<module>.weight" held in memory (Model::files gets a
// memory block), so the model is an ordinary float model to everything downstream; decoding
// costs 4 bytes per weight of memory. Metadata "quantlens.gptq" records the configuration.
//
// Opening: openSafetensors in model_loader.h. Writing: below.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/model.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

// True when `head` (the first bytes of a file of `fileSize` bytes) starts like a safetensors
// file: a header length that fits the file, then '{'.
bool looksLikeSafetensors(std::span<const std::uint8_t> head, std::uint64_t fileSize);

// config.json text (transformers' Llama / Qwen2 config) for `hp`, torch_dtype from `dtype`.
std::string huggingFaceConfig(const HyperParams& hp, TensorType dtype);

// Hugging Face name of a canonical tensor name ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"); names without an equivalent are returned unchanged.
std::string hfTensorName(std::string_view canonicalName);
// The reverse: canonical GGUF name of a Hugging Face tensor name, or the name unchanged.
std::string canonicalFromHfName(std::string_view hfName);

struct SafetensorsTensorSpec {
    std::string name;                 // canonical GGUF name; stored under its Hugging Face name
    std::vector<std::int64_t> shape;  // row-major, outermost first
};

// Fills `out` with elements [first, first + out.size()) of tensor `index`, row-major, as float.
// Returning an error stops the write (nothing is left behind).
using TensorChunkFn =
    std::function<Status(std::size_t index, std::int64_t first, std::span<float> out)>;

// Writes `dir`/config.json (from `hparams`) and `dir`/model.safetensors holding `tensors` in
// `dtype` (F32, F16 or BF16; F16/BF16 round to nearest even). Tensor data comes from `produce`
// in chunks of at most a few MiB, so a model of any size is written without holding it in
// memory. Values are written as given: for a llama model supply attn_q/attn_k rows in Hugging
// Face order (see above). Each file is written under a temporary name and renamed into place when
// complete; on error or cancellation the temporary files are removed. `dir` is created when
// missing; a folder that already holds a sharded model (model.safetensors.index.json) is refused.
Status writeSafetensorsStream(const std::string& dir, const HyperParams& hparams,
                              const std::vector<SafetensorsTensorSpec>& tensors, TensorType dtype,
                              const TensorChunkFn& produce, const ProgressFn& progress = {});

// Writes a loaded model's tensors (stored as F32, F16 or BF16; a block-quantized tensor is
// refused as Unsupported: write those through writeSafetensorsStream with dequantized data).
Status writeSafetensorsFolder(const Model& model, const std::string& dir,
                              TensorType dtype = TensorType::F32, const ProgressFn& progress = {});

}  // namespace ql
