// Storage types of model tensors. The numeric ids are ggml's (GGUF's tensor type field), so a
// GGUF file's type maps directly; safetensors dtypes map to F32/F16/BF16.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace ql {

enum class TensorType : std::uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
};

struct TensorTypeTraits {
    TensorType type;
    std::string_view name;     // "Q4_K"
    std::uint32_t blockSize;   // weights per block (1 for float types)
    std::uint32_t blockBytes;  // bytes per block
};

// Traits of a supported type, or nullopt for an id QuantLens does not decode.
std::optional<TensorTypeTraits> tensorTypeTraits(std::uint32_t ggmlId);
const TensorTypeTraits& traits(TensorType type);
std::string_view tensorTypeName(TensorType type);
// Name of any ggml type id, supported or not ("IQ2_XXS", "type 99"), for error messages.
std::string_view ggmlTypeName(std::uint32_t ggmlId);
std::optional<TensorType> tensorTypeFromName(std::string_view name);  // case-insensitive

// Bytes of `count` elements; nullopt when count is not a multiple of the block size or overflows.
std::optional<std::uint64_t> tensorBytes(TensorType type, std::uint64_t count);
double bitsPerWeight(TensorType type);

}  // namespace ql
