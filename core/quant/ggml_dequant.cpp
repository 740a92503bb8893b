// Decoding of ggml's storage types to float32.
//
// Each block format has one small decoder that walks a block's bytes in ggml's layout and does
// its float arithmetic in the order of llama.cpp's reference dequantize_row_* (e.g. Q4_K computes
// d1 = d*sc and m1 = dmin*m once per sub-block, then y = d1*q - m1), so results match llama.cpp
// bit for bit. core/CMakeLists.txt compiles this file with -ffp-contract=off: a fused
// multiply-add would round once where the reference rounds twice. Multi-byte fields are read
// little-endian byte by byte, so the code is independent of host byte order and alignment.
//
// dequantizeTensor splits a tensor into chunks of whole blocks, decodes them on a few threads that
// take chunks from an atomic counter, and reports progress from the calling thread only (a
// progress callback may touch UI state); a callback returning false stops every worker.
#include "quant/ggml_dequant.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <new>
#include <string>
#include <thread>

namespace ql {

// --- fp16 / bf16 ----------------------------------------------------------------------------

float fp16ToFp32(std::uint16_t h)
{
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1fu;
    std::uint32_t mantissa = h & 0x3ffu;
    std::uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);  // Inf, or NaN keeping its payload
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;  // signed zero
    } else {
        // Subnormal half: normalise. Value = mantissa * 2^-24.
        int e = 113;  // biased fp32 exponent of 2^-14
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            --e;
        }
        bits = sign | (std::uint32_t(e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
    return std::bit_cast<float>(bits);
}

std::uint16_t fp32ToFp16(float f)
{
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = std::uint16_t((x >> 16) & 0x8000u);
    const std::uint32_t absBits = x & 0x7fffffffu;
    if (absBits > 0x7f800000u) {
        // NaN: keep the top payload bits, force quiet so it cannot become Inf.
        return std::uint16_t(sign | 0x7e00u | ((absBits >> 13) & 0x3ffu));
    }
    if (absBits >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to >= 65520: Inf
    const int exponent = int(absBits >> 23) - 127;
    if (exponent >= -14) {
        // Normal half: drop 13 mantissa bits with round to nearest, ties to even. A carry out of
        // the mantissa correctly bumps the exponent.
        const std::uint32_t rebiased = absBits - (112u << 23);
        const std::uint32_t lsb = (rebiased >> 13) & 1u;
        return std::uint16_t(sign | ((rebiased + 0xfffu + lsb) >> 13));
    }
    if (exponent < -25) return sign;  // below half the smallest subnormal: rounds to zero
    // Subnormal half: value / 2^-24, rounded to nearest even, with the implicit bit made explicit.
    const std::uint32_t mantissa = (absBits & 0x7fffffu) | 0x800000u;
    const int shift = -exponent - 1;  // 14..24: bits to drop so that the unit is 2^-24
    const std::uint32_t kept = mantissa >> shift;
    const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1);
    const std::uint32_t rounded = kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
    return std::uint16_t(sign | rounded);  // 0x400 after rounding is the smallest normal: correct
}

float bf16ToFp32(std::uint16_t h)
{
    return std::bit_cast<float>(std::uint32_t(h) << 16);
}

std::uint16_t fp32ToBf16(float f)
{
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((x >> 16) | 0x40u);  // quiet NaN
    return std::uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

namespace {

// --- block decoders -------------------------------------------------------------------------

constexpr int kQK = 32;    // weights per block of the legacy formats
constexpr int kQKK = 256;  // weights per k-quant super-block

inline float halfAt(const std::uint8_t* p)
{
    return fp16ToFp32(std::uint16_t(p[0] | (std::uint16_t(p[1]) << 8)));
}

// Q8_0: d (f16), qs[32] (int8). y = q*d.
void decodeQ8_0(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const std::uint8_t* qs = b + 2;
    for (int j = 0; j < kQK; ++j) y[j] = float(std::int8_t(qs[j])) * d;
}

// Q4_0: d, qs[16]; element j in the low nibble of qs[j], element j+16 in the high one; offset 8.
void decodeQ4_0(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const std::uint8_t* qs = b + 2;
    for (int j = 0; j < kQK / 2; ++j) {
        const int x0 = (qs[j] & 0x0f) - 8;
        const int x1 = (qs[j] >> 4) - 8;
        y[j] = float(x0) * d;
        y[j + kQK / 2] = float(x1) * d;
    }
}

// Q4_1: d, m, qs[16]. y = q*d + m.
void decodeQ4_1(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const float m = halfAt(b + 2);
    const std::uint8_t* qs = b + 4;
    for (int j = 0; j < kQK / 2; ++j) {
        const int x0 = qs[j] & 0x0f;
        const int x1 = qs[j] >> 4;
        y[j] = float(x0) * d + m;
        y[j + kQK / 2] = float(x1) * d + m;
    }
}

inline std::uint32_t u32At(const std::uint8_t* p)
{
    return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
           (std::uint32_t(p[3]) << 24);
}

// Q5_0: d, qh (32 fifth bits, bit j for element j), qs[16]; offset 16.
void decodeQ5_0(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const std::uint32_t qh = u32At(b + 2);
    const std::uint8_t* qs = b + 6;
    for (int j = 0; j < kQK / 2; ++j) {
        const int h0 = int((qh >> j) << 4) & 0x10;
        const int h1 = int(qh >> (j + 12)) & 0x10;
        const int x0 = ((qs[j] & 0x0f) | h0) - 16;
        const int x1 = ((qs[j] >> 4) | h1) - 16;
        y[j] = float(x0) * d;
        y[j + kQK / 2] = float(x1) * d;
    }
}

// Q5_1: d, m, qh, qs[16]. y = q*d + m.
void decodeQ5_1(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const float m = halfAt(b + 2);
    const std::uint32_t qh = u32At(b + 4);
    const std::uint8_t* qs = b + 8;
    for (int j = 0; j < kQK / 2; ++j) {
        const int h0 = int((qh >> j) << 4) & 0x10;
        const int h1 = int(qh >> (j + 12)) & 0x10;
        const int x0 = (qs[j] & 0x0f) | h0;
        const int x1 = (qs[j] >> 4) | h1;
        y[j] = float(x0) * d + m;
        y[j + kQK / 2] = float(x1) * d + m;
    }
}

// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), d, dmin.
// Each 128-weight half uses 32 bytes of qs; 2-bit plane `shift` of those bytes gives 32 weights,
// 16 per scale. y = (d*sc)*q - (dmin*m).
void decodeQ2_K(const std::uint8_t* b, float* y)
{
    const std::uint8_t* scales = b;
    const std::uint8_t* q = b + 16;
    const float d = halfAt(b + 80);
    const float dmin = halfAt(b + 82);
    int is = 0;
    for (int n = 0; n < kQKK; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; ++half) {
                const std::uint8_t sc = scales[is++];
                const float dl = d * float(sc & 0x0f);
                const float ml = dmin * float(sc >> 4);
                const std::uint8_t* qq = q + 16 * half;
                for (int l = 0; l < 16; ++l) *y++ = dl * float((qq[l] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}

// Q3_K: hmask[32] (third bit, cleared means subtract 4), qs[64] (low 2 bits), scales[12]
// (sixteen 6-bit scales: low 4 bits packed in bytes 0-7, high 2 bits in bytes 8-11), d.
// y = (d*(s-32)) * (q - 4*!h).
void decodeQ3_K(const std::uint8_t* b, float* y)
{
    const std::uint8_t* hm = b;
    const std::uint8_t* q = b + 32;
    const std::uint8_t* packed = b + 96;
    const float dAll = halfAt(b + 108);
    int scales[16];
    for (int j = 0; j < 16; ++j) {
        const int low = j < 8 ? (packed[j] & 0x0f) : (packed[j - 8] >> 4);
        const int high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        scales[j] = (low | (high << 4)) - 32;
    }
    int is = 0;
    std::uint8_t m = 1;
    for (int n = 0; n < kQKK; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; ++half) {
                const float dl = dAll * float(scales[is++]);
                const std::uint8_t* qq = q + 16 * half;
                const std::uint8_t* hh = hm + 16 * half;
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * float(((qq[l] >> shift) & 3) - ((hh[l] & m) ? 0 : 4));
            }
            m = std::uint8_t(m << 1);
        }
        q += 32;
    }
}

// The 6-bit scale and min of sub-block j (0..7) of Q4_K / Q5_K: j < 4 in the low 6 bits of bytes
// j and j+4; j >= 4 split into the nibbles of byte j+4 and the top 2 bits of bytes j-4 and j.
inline void scaleMinK4(int j, const std::uint8_t* s, int& sc, int& m)
{
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K: d, dmin, scales[12], qs[128]. Each 64 weights: 32 bytes, low nibbles then high nibbles.
void decodeQ4_K(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const float dmin = halfAt(b + 2);
    const std::uint8_t* s = b + 4;
    const std::uint8_t* q = b + 16;
    for (int is = 0; is < 8; is += 2) {
        int sc, m;
        scaleMinK4(is, s, sc, m);
        const float d1 = d * float(sc);
        const float m1 = dmin * float(m);
        scaleMinK4(is + 1, s, sc, m);
        const float d2 = d * float(sc);
        const float m2 = dmin * float(m);
        for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0x0f) - m1;
        for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
        q += 32;
    }
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128]; fifth bit of weight l of the k-th 32-group in bit k
// of qh[l].
void decodeQ5_K(const std::uint8_t* b, float* y)
{
    const float d = halfAt(b);
    const float dmin = halfAt(b + 2);
    const std::uint8_t* s = b + 4;
    const std::uint8_t* qh = b + 16;
    const std::uint8_t* ql = b + 48;
    std::uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < 8; is += 2) {
        int sc, m;
        scaleMinK4(is, s, sc, m);
        const float d1 = d * float(sc);
        const float m1 = dmin * float(m);
        scaleMinK4(is + 1, s, sc, m);
        const float d2 = d * float(sc);
        const float m2 = dmin * float(m);
        for (int l = 0; l < 32; ++l)
            *y++ = d1 * float((ql[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; ++l) *y++ = d2 * float((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        ql += 32;
        u1 = std::uint8_t(u1 << 2);
        u2 = std::uint8_t(u2 << 2);
    }
}

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d. y = d*s*(q-32).
void decodeQ6_K(const std::uint8_t* b, float* y)
{
    const std::uint8_t* ql = b;
    const std::uint8_t* qh = b + 128;
    const std::uint8_t* sc = b + 192;
    const float d = halfAt(b + 208);
    for (int n = 0; n < kQKK; n += 128) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * float(std::int8_t(sc[is])) * float(q1);
            y[l + 32] = d * float(std::int8_t(sc[is + 2])) * float(q2);
            y[l + 64] = d * float(std::int8_t(sc[is + 4])) * float(q3);
            y[l + 96] = d * float(std::int8_t(sc[is + 6])) * float(q4);
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

using BlockDecoder = void (*)(const std::uint8_t*, float*);

BlockDecoder blockDecoder(TensorType type)
{
    switch (type) {
        case TensorType::Q8_0: return decodeQ8_0;
        case TensorType::Q4_0: return decodeQ4_0;
        case TensorType::Q4_1: return decodeQ4_1;
        case TensorType::Q5_0: return decodeQ5_0;
        case TensorType::Q5_1: return decodeQ5_1;
        case TensorType::Q2_K: return decodeQ2_K;
        case TensorType::Q3_K: return decodeQ3_K;
        case TensorType::Q4_K: return decodeQ4_K;
        case TensorType::Q5_K: return decodeQ5_K;
        case TensorType::Q6_K: return decodeQ6_K;
        default: return nullptr;
    }
}

// Decodes without checks: src holds exactly the bytes of dst.size() elements.
void decodeUnchecked(TensorType type, const std::uint8_t* src, float* dst, std::size_t count)
{
    switch (type) {
        case TensorType::F32:
            if constexpr (std::endian::native == std::endian::little) {
                std::memcpy(dst, src, count * sizeof(float));
            } else {
                for (std::size_t i = 0; i < count; ++i, src += 4)
                    dst[i] = std::bit_cast<float>(u32At(src));
            }
            return;
        case TensorType::F16:
            for (std::size_t i = 0; i < count; ++i, src += 2)
                dst[i] = fp16ToFp32(std::uint16_t(src[0] | (std::uint16_t(src[1]) << 8)));
            return;
        case TensorType::BF16:
            for (std::size_t i = 0; i < count; ++i, src += 2)
                dst[i] = bf16ToFp32(std::uint16_t(src[0] | (std::uint16_t(src[1]) << 8)));
            return;
        default: break;
    }
    const TensorTypeTraits& t = traits(type);
    const BlockDecoder decode = blockDecoder(type);
    for (std::size_t done = 0; done < count; done += t.blockSize, src += t.blockBytes)
        decode(src, dst + done);
}

bool isKnownType(TensorType type)
{
    switch (type) {
        case TensorType::F32:
        case TensorType::F16:
        case TensorType::BF16: return true;
        default: return blockDecoder(type) != nullptr;
    }
}

}  // namespace

Status dequantizeRow(TensorType type, std::span<const std::uint8_t> src, std::span<float> dst)
{
    if (!isKnownType(type))
        return makeError(ErrorCode::Unsupported,
                         "cannot decode tensor type id " + std::to_string(std::uint32_t(type)));
    const auto bytes = tensorBytes(type, dst.size());
    if (!bytes)
        return makeError(ErrorCode::InvalidArgument,
                         std::to_string(dst.size()) + " elements is not a whole number of " +
                             std::string(tensorTypeName(type)) + " blocks of " +
                             std::to_string(traits(type).blockSize));
    if (*bytes != src.size())
        return makeError(ErrorCode::InvalidArgument,
                         std::string(tensorTypeName(type)) + ": " + std::to_string(dst.size()) +
                             " elements need " + std::to_string(*bytes) + " bytes, got " +
                             std::to_string(src.size()));
    decodeUnchecked(type, src.data(), dst.data(), dst.size());
    return {};
}

Result<std::vector<float>> dequantizeTensor(const Model& model, const TensorInfo& tensor,
                                            const ProgressFn& progress)
{
    const std::int64_t count = tensor.elementCount();
    if (count < 0)
        return makeError(ErrorCode::Format, "tensor " + tensor.name + " has an invalid shape");
    std::vector<float> out;
    try {
        out.resize(std::size_t(count));
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory,
                         "out of memory decoding " + tensor.name + " (" +
                             std::to_string(std::uint64_t(count) * 4 / (1024 * 1024)) + " MiB)");
    } catch (const std::length_error&) {
        return makeError(ErrorCode::OutOfMemory, "tensor " + tensor.name + " is too large");
    }
    QL_TRY_STATUS(dequantizeTensorInto(model, tensor, out, progress));
    return out;
}

Status dequantizeTensorInto(const Model& model, const TensorInfo& tensor, std::span<float> out,
                            const ProgressFn& progress)
{
    const std::int64_t count = tensor.elementCount();
    if (count < 0)
        return makeError(ErrorCode::Format, "tensor " + tensor.name + " has an invalid shape");
    if (!isKnownType(tensor.type))
        return makeError(ErrorCode::Unsupported, "tensor " + tensor.name + ": cannot decode type " +
                                                     std::string(tensorTypeName(tensor.type)));
    const auto bytes = tensorBytes(tensor.type, std::uint64_t(count));
    if (!bytes)
        return makeError(ErrorCode::Format, "tensor " + tensor.name + ": " + std::to_string(count) +
                                                " elements is not a whole "
                                                "number of " +
                                                std::string(tensorTypeName(tensor.type)) +
                                                " blocks");
    if (tensor.fileIndex < 0 || std::size_t(tensor.fileIndex) >= model.files.size() ||
        !model.files[std::size_t(tensor.fileIndex)])
        return makeError(ErrorCode::InvalidArgument,
                         "tensor " + tensor.name + " refers to a file the model does not hold");
    const MappedFile& file = *model.files[std::size_t(tensor.fileIndex)];
    if (!file.contains(tensor.offset, *bytes))
        return makeError(ErrorCode::Format, "tensor " + tensor.name + ": its " +
                                                std::to_string(*bytes) + " bytes lie outside " +
                                                file.path());
    const std::uint8_t* src = file.data() + tensor.offset;
    if (out.size() != std::size_t(count))
        return makeError(ErrorCode::InvalidArgument,
                         "decoding " + tensor.name + ": " + std::to_string(count) +
                             " values into room for " + std::to_string(out.size()));

    // Chunks of whole blocks, about 64 Ki elements: small enough to balance and to report
    // progress often, large enough that the shared counter costs nothing.
    const TensorTypeTraits& t = traits(tensor.type);
    const std::uint64_t blocks = std::uint64_t(count) / t.blockSize;
    const std::uint64_t blocksPerChunk = std::max<std::uint64_t>(1, (1u << 16) / t.blockSize);
    const std::uint64_t chunks = (blocks + blocksPerChunk - 1) / blocksPerChunk;
    const std::string what = "Decoding " + tensor.name;

    std::atomic<std::uint64_t> next{0}, done{0};
    std::atomic<bool> cancelled{false};
    auto runChunk = [&](std::uint64_t c) {
        const std::uint64_t b0 = c * blocksPerChunk;
        const std::uint64_t b1 = std::min(blocks, b0 + blocksPerChunk);
        decodeUnchecked(tensor.type, src + b0 * t.blockBytes, out.data() + b0 * t.blockSize,
                        std::size_t((b1 - b0) * t.blockSize));
        done.fetch_add(1, std::memory_order_relaxed);
    };
    auto worker = [&] {
        for (std::uint64_t c; !cancelled.load(std::memory_order_relaxed) &&
                              (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;)
            runChunk(c);
    };

    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    const unsigned threadCount = unsigned(std::min<std::uint64_t>(hw, chunks));
    std::vector<std::thread> threads;
    for (unsigned i = 1; i < threadCount; ++i) {
        try {
            threads.emplace_back(worker);
        } catch (const std::system_error&) {
            break;  // fewer threads; the calling thread still does the work
        }
    }
    // The calling thread works too and is the only one that calls `progress`.
    if (!reportProgress(progress, 0.0, what)) cancelled = true;
    for (std::uint64_t c; !cancelled.load(std::memory_order_relaxed) &&
                          (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
        runChunk(c);
        if (!reportProgress(progress, double(done.load()) / double(chunks), what)) cancelled = true;
    }
    for (std::thread& th : threads) th.join();
    if (cancelled)
        return makeError(ErrorCode::Cancelled, "decoding " + tensor.name + " was cancelled");
    reportProgress(progress, 1.0, what);
    return {};
}

}  // namespace ql
