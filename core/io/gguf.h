// GGUF, llama.cpp's model file, versions 2 and 3 (version 1 is refused). Little-endian throughout;
// a big-endian file (its version reads byte-swapped) is refused as such.
//
//   u32  magic          "GGUF" (bytes 47 47 55 46)
//   u32  version        2 or 3 (v3 only added big-endian files; the layout is that of v2)
//   u64  tensor_count
//   u64  metadata_kv_count
//   metadata_kv_count x { string key; u32 value_type; value }
//   tensor_count      x { string name; u32 n_dims (1..4); u64 ne[n_dims];
//                         u32 ggml_type; u64 offset }
//   padding to `general.alignment` (u32 metadata, default 32)
//   tensor data: tensor i at data_start + offset_i, offset_i a multiple of the alignment
//
// string = u64 length + that many UTF-8 bytes, no terminator.
// value types (MetaType): u8 i8 u16 i16 u32 i32 f32 bool(1 byte, 0 or 1) string, array
// (= u32 element type + u64 count + elements; arrays may nest), u64 i64 f64.
// ne[0] is the innermost (contiguous) dimension: QuantLens shapes are the reverse, outermost
// first. A block type (Q4_K...) stores ne[0] / block_size blocks per row.
//
// Model hyper-parameters are keys prefixed with the architecture (`general.architecture`):
// <arch>.block_count, .embedding_length, .feed_forward_length, .context_length,
// .attention.head_count, .attention.head_count_kv, .attention.key_length,
// .attention.layer_norm_rms_epsilon, .rope.freq_base, .rope.dimension_count,
// .rope.scaling.{type,factor,original_context_length}, .vocab_size.
//
// Besides the reader (openGguf in model_loader.h), this header holds the GGUF vocabulary every
// loader shares: canonical tensor names and the hyper-parameter <-> metadata mapping.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/metadata.h"
#include "model/model.h"

namespace ql {

inline constexpr std::uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
inline constexpr std::uint32_t kGgufDefaultAlignment = 32;

struct TensorNameInfo {
    TensorRole role = TensorRole::Other;
    int block = -1;
};

// Role and block of a canonical GGUF tensor name ("blk.3.attn_q.weight" -> AttnQ, 3).
// Unknown names give Other, with the block index when the name starts with "blk.N.".
TensorNameInfo classifyTensorName(std::string_view canonicalName);

// Canonical name of a role ("token_embd.weight", "blk.3.attn_q.bias"); empty for Other.
std::string canonicalTensorName(TensorRole role, int block);

// Architectures whose tensor layout QuantLens knows and validates (llama, mistral, qwen2).
bool isLlamaFamily(std::string_view architecture);

// Hyper-parameters from GGUF-vocabulary metadata, completed from tensor shapes where a key is
// absent (vocabulary from token_embd, FFN width from ffn_up). Findings go to `warnings`.
HyperParams hyperParamsFromMetadata(const Metadata& metadata,
                                    const std::vector<TensorInfo>& tensors,
                                    std::vector<std::string>& warnings);

// The reverse: writes general.architecture and the <arch>.* keys for `hparams` (used by the
// safetensors and llama2.c loaders so later code reads one vocabulary).
void writeHyperParamsMetadata(const HyperParams& hparams, Metadata& metadata);

}  // namespace ql
