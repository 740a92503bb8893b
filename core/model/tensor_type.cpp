#include "model/tensor_type.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <limits>

namespace ql {
namespace {

constexpr std::array<TensorTypeTraits, 13> kTraits = {{
    {TensorType::F32, "F32", 1, 4},
    {TensorType::F16, "F16", 1, 2},
    {TensorType::Q4_0, "Q4_0", 32, 18},
    {TensorType::Q4_1, "Q4_1", 32, 20},
    {TensorType::Q5_0, "Q5_0", 32, 22},
    {TensorType::Q5_1, "Q5_1", 32, 24},
    {TensorType::Q8_0, "Q8_0", 32, 34},
    {TensorType::Q2_K, "Q2_K", 256, 84},
    {TensorType::Q3_K, "Q3_K", 256, 110},
    {TensorType::Q4_K, "Q4_K", 256, 144},
    {TensorType::Q5_K, "Q5_K", 256, 176},
    {TensorType::Q6_K, "Q6_K", 256, 210},
    {TensorType::BF16, "BF16", 1, 2},
}};

// Every ggml type id we know by name, so an unsupported type is refused by name.
constexpr std::array<std::string_view, 40> kGgmlNames = {
    "F32",   "F16",        "Q4_0",       "Q4_1",       "Q4_2",     "Q4_3",     "Q5_0",
    "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
    "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
    "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
    "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
    "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
};

}  // namespace

std::optional<TensorTypeTraits> tensorTypeTraits(std::uint32_t ggmlId)
{
    for (const auto& t : kTraits)
        if (static_cast<std::uint32_t>(t.type) == ggmlId) return t;
    return std::nullopt;
}

const TensorTypeTraits& traits(TensorType type)
{
    for (const auto& t : kTraits)
        if (t.type == type) return t;
    return kTraits[0];  // unreachable for valid enum values
}

std::string_view tensorTypeName(TensorType type)
{
    return traits(type).name;
}

std::string_view ggmlTypeName(std::uint32_t ggmlId)
{
    if (ggmlId < kGgmlNames.size()) return kGgmlNames[ggmlId];
    return "unknown type";
}

std::optional<TensorType> tensorTypeFromName(std::string_view name)
{
    for (const auto& t : kTraits) {
        if (t.name.size() != name.size()) continue;
        bool same = std::equal(name.begin(), name.end(), t.name.begin(), [](char a, char b) {
            return std::toupper(static_cast<unsigned char>(a)) == b;
        });
        if (same) return t.type;
    }
    return std::nullopt;
}

std::optional<std::uint64_t> tensorBytes(TensorType type, std::uint64_t count)
{
    const auto& t = traits(type);
    if (count % t.blockSize != 0) return std::nullopt;
    std::uint64_t blocks = count / t.blockSize;
    if (blocks > std::numeric_limits<std::uint64_t>::max() / t.blockBytes) return std::nullopt;
    return blocks * t.blockBytes;
}

double bitsPerWeight(TensorType type)
{
    const auto& t = traits(type);
    return 8.0 * t.blockBytes / t.blockSize;
}

}  // namespace ql
