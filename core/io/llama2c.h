// llama2.c checkpoints (Karpathy's llama2.c, export.py), float32 only.
//
// Legacy ("version 0"): a 28-byte header of 7 little-endian int32
//   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
// where a negative vocab_size means the classifier is NOT shared with the embedding. Then F32:
//   token_embedding[vocab][dim], rms_att[L][dim], wq[L][dim][dim], wk[L][kv_dim][dim],
//   wv[L][kv_dim][dim], wo[L][dim][dim], rms_ffn[L][dim], w1[L][hidden][dim],
//   w2[L][dim][hidden], w3[L][hidden][dim], rms_final[dim],
//   freq_cis_real[seq_len][head_size/2], freq_cis_imag[seq_len][head_size/2] (skipped: RoPE is
//   recomputed), wcls[vocab][dim] only when unshared.
// Version 1: u32 magic 0x616b3432 ("ak42"), i32 version = 1, the same 7 int32 (vocab_size
//   positive), u8 shared_classifier, zero padding to byte 256. Then F32:
//   rms_att[L][dim], rms_ffn[L][dim], rms_final[dim], token_embedding[vocab][dim], wq[L], wk[L],
//   wv[L], wo[L], w1[L], w2[L], w3[L], then wcls[vocab][dim] only when unshared.
// Version 2 (int8 Q8_0 groups) is refused. kv_dim = dim * n_kv_heads / n_heads; w1 is the SwiGLU
// gate (GGUF ffn_gate), w3 the up projection (ffn_up), w2 the down projection (ffn_down).
// Matrices are PyTorch [out][in], already QuantLens's row-major order, and byte-identical to
// llama.cpp's GGUF conversion of the same model (no q/k permutation: llama2.c's RoPE pairs
// adjacent elements as GGUF llama does).
//
// The file has no self-description besides sizes, so a legacy header is accepted only when the
// sizes it implies add up to the file size exactly. Tensors point into the memory map.
// A tokenizer beside the checkpoint (tokenizer.bin, else tok*.bin, preferring tok<vocab>.bin) is
// recorded as TokenizerSource::Llama2cBin. Opening: openLlama2c in model_loader.h.
#pragma once

#include <cstdint>
#include <span>

namespace ql {

inline constexpr std::uint32_t kLlama2cMagic = 0x616b3432;  // "ak42"

// True when `head` (the first bytes of a file of `fileSize` bytes) is a version-1 header, or a
// legacy header whose implied size equals `fileSize`.
bool looksLikeLlama2c(std::span<const std::uint8_t> head, std::uint64_t fileSize);

}  // namespace ql
