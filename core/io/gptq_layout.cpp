// GPTQ packing as one little-endian bit stream per packed column or row (which is what AutoGPTQ's
// per-width loops amount to, 3 bits included); see the header for the layout.
#include "io/gptq_layout.h"

#include <bit>
#include <cstring>
#include <string>

#include "quant/ggml_dequant.h"

namespace ql {

bool gptqBitsSupported(int bits)
{
    return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

std::int64_t gptqPackMultiple(int bits)
{
    return bits == 3 ? 32 : 32 / bits;
}

void gptqPackSequence(const std::uint32_t* values, std::int64_t count, int bits,
                      std::uint32_t* words)
{
    const std::int64_t nWords = count * bits / 32;
    std::memset(words, 0, std::size_t(nWords) * 4);
    const std::uint32_t mask = (1u << bits) - 1;
    for (std::int64_t k = 0; k < count; ++k) {
        const std::uint64_t bit = std::uint64_t(k) * std::uint64_t(bits);
        const std::uint64_t w = bit / 32, off = bit % 32;
        const std::uint64_t v = std::uint64_t(values[k] & mask) << off;  // up to 39 bits
        words[w] |= std::uint32_t(v);
        if (off + bits > 32) words[w + 1] |= std::uint32_t(v >> 32);
    }
}

std::uint32_t gptqUnpackValue(const std::uint32_t* words, std::int64_t k, int bits)
{
    const std::uint64_t bit = std::uint64_t(k) * std::uint64_t(bits);
    const std::uint64_t w = bit / 32, off = bit % 32;
    std::uint64_t v = words[w] >> off;
    if (off + bits > 32) v |= std::uint64_t(words[w + 1]) << (32 - off);
    return std::uint32_t(v) & ((1u << bits) - 1);
}

Result<GptqLayer> gptqPack(int bits, std::int64_t out, std::int64_t in, std::int64_t groups,
                           std::span<const std::uint8_t> codes, std::span<const std::uint8_t> zeros,
                           std::span<const std::uint16_t> scales,
                           std::span<const std::int32_t> gIdx, std::int64_t* mirroredGroups)
{
    if (!gptqBitsSupported(bits))
        return makeError(ErrorCode::InvalidArgument,
                         "the GPTQ layout has no " + std::to_string(bits) + "-bit packing");
    const std::int64_t m = gptqPackMultiple(bits);
    if (in <= 0 || out <= 0 || in % m != 0 || out % m != 0)
        return makeError(ErrorCode::InvalidArgument,
                         std::to_string(bits) +
                             "-bit GPTQ packing needs in and out features that "
                             "are multiples of " +
                             std::to_string(m) + "; the layer is " + std::to_string(out) + " x " +
                             std::to_string(in));
    if (groups <= 0 || std::int64_t(codes.size()) != out * in ||
        std::int64_t(zeros.size()) != out * groups || std::int64_t(scales.size()) != out * groups ||
        std::int64_t(gIdx.size()) != in)
        return makeError(ErrorCode::InvalidArgument, "GPTQ packing: array sizes do not match");
    for (std::int32_t g : gIdx)
        if (g < 0 || g >= groups)
            return makeError(ErrorCode::InvalidArgument, "GPTQ packing: g_idx out of range");
    const std::uint32_t top = (1u << bits) - 1;
    GptqLayer L;
    L.bits = bits;
    L.in = in;
    L.out = out;
    L.groups = groups;
    // Mirror groups whose zero point is 0 (v1 cannot store -1): per (out row, group).
    std::vector<std::uint8_t> mirrored(std::size_t(out * groups), 0);
    std::int64_t nMirrored = 0;
    for (std::int64_t i = 0; i < out * groups; ++i)
        if (zeros[std::size_t(i)] == 0) {
            mirrored[std::size_t(i)] = 1;
            ++nMirrored;
        }
    if (mirroredGroups) *mirroredGroups = nMirrored;

    const std::int64_t wordsIn = in * bits / 32, wordsOut = out * bits / 32;
    L.qweight.assign(std::size_t(wordsIn * out), 0);
    std::vector<std::uint32_t> seq(static_cast<std::size_t>(std::max(in, out)));
    std::vector<std::uint32_t> packed(static_cast<std::size_t>(std::max(wordsIn, wordsOut)));
    for (std::int64_t o = 0; o < out; ++o) {
        for (std::int64_t i = 0; i < in; ++i) {
            const std::uint32_t q = codes[std::size_t(o * in + i)] & top;
            seq[std::size_t(i)] =
                mirrored[std::size_t(o * groups + gIdx[std::size_t(i)])] ? top - q : q;
        }
        gptqPackSequence(seq.data(), in, bits, packed.data());
        for (std::int64_t w = 0; w < wordsIn; ++w)
            L.qweight[std::size_t(w * out + o)] =
                std::bit_cast<std::int32_t>(packed[std::size_t(w)]);
    }
    L.qzeros.assign(std::size_t(groups * wordsOut), 0);
    L.scales.assign(std::size_t(groups * out), 0);
    for (std::int64_t g = 0; g < groups; ++g) {
        for (std::int64_t o = 0; o < out; ++o) {
            const std::size_t src = std::size_t(o * groups + g);
            const std::uint32_t z = mirrored[src] ? top : zeros[src];
            seq[std::size_t(o)] = z - 1;  // the v1 convention; z >= 1 here
            std::uint16_t s = scales[src];
            if (mirrored[src]) s ^= 0x8000;  // exact negation
            L.scales[std::size_t(g * out + o)] = s;
        }
        gptqPackSequence(seq.data(), out, bits, packed.data());
        for (std::int64_t w = 0; w < wordsOut; ++w)
            L.qzeros[std::size_t(g * wordsOut + w)] =
                std::bit_cast<std::int32_t>(packed[std::size_t(w)]);
    }
    L.gIdx.assign(gIdx.begin(), gIdx.end());
    return L;
}

Result<std::vector<float>> gptqDequantize(const GptqLayer& L)
{
    if (!gptqBitsSupported(L.bits))
        return makeError(ErrorCode::Unsupported,
                         "GPTQ bits = " + std::to_string(L.bits) + " (2, 3, 4 or 8 are defined)");
    const std::int64_t m = gptqPackMultiple(L.bits);
    if (L.in <= 0 || L.out <= 0 || L.in % m || L.out % m || L.groups <= 0)
        return makeError(ErrorCode::Format, "GPTQ layer " + std::to_string(L.out) + " x " +
                                                std::to_string(L.in) + " does not pack in " +
                                                std::to_string(L.bits) + " bits");
    const std::int64_t wordsIn = L.in * L.bits / 32, wordsOut = L.out * L.bits / 32;
    if (std::int64_t(L.qweight.size()) != wordsIn * L.out ||
        std::int64_t(L.qzeros.size()) != L.groups * wordsOut ||
        std::int64_t(L.scales.size()) != L.groups * L.out || std::int64_t(L.gIdx.size()) != L.in)
        return makeError(ErrorCode::Format, "GPTQ layer arrays do not match its shape");
    for (std::int32_t g : L.gIdx)
        if (g < 0 || g >= L.groups)
            return makeError(ErrorCode::Format, "g_idx value " + std::to_string(g) +
                                                    " outside the " + std::to_string(L.groups) +
                                                    " groups");
    std::vector<float> w(static_cast<std::size_t>(L.out * L.in));
    std::vector<std::uint32_t> col(static_cast<std::size_t>(wordsIn));
    std::vector<float> zero(static_cast<std::size_t>(L.groups)), scale(std::size_t(L.groups));
    for (std::int64_t o = 0; o < L.out; ++o) {
        for (std::int64_t g = 0; g < L.groups; ++g) {
            const auto* zw = reinterpret_cast<const std::uint32_t*>(L.qzeros.data() + g * wordsOut);
            zero[std::size_t(g)] =
                float(std::int32_t(gptqUnpackValue(zw, o, L.bits)) + L.zeroOffset);
            scale[std::size_t(g)] = fp16ToFp32(L.scales[std::size_t(g * L.out + o)]);
        }
        for (std::int64_t k = 0; k < wordsIn; ++k)
            col[std::size_t(k)] =
                std::bit_cast<std::uint32_t>(L.qweight[std::size_t(k * L.out + o)]);
        for (std::int64_t i = 0; i < L.in; ++i) {
            const std::size_t g = std::size_t(L.gIdx[std::size_t(i)]);
            const std::int32_t q = std::int32_t(gptqUnpackValue(col.data(), i, L.bits));
            // float(q - z) as an integer difference first, like our uniform decoder.
            w[std::size_t(o * L.in + i)] = scale[g] * float(q - std::int32_t(zero[g]));
        }
    }
    return w;
}

}  // namespace ql
