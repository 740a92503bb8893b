#include "io/file_hash.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "io/mapped_file.h"

namespace ql {
namespace {

constexpr std::uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr std::uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr std::uint64_t kP3 = 0x165667B19E3779F9ull;

inline std::uint64_t rotl(std::uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}
inline std::uint64_t round(std::uint64_t acc, std::uint64_t input)
{
    return rotl(acc + input * kP2, 31) * kP1;
}
inline std::uint64_t mix(std::uint64_t h)
{
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
}

}  // namespace

std::uint64_t hashBytes(std::span<const std::uint8_t> bytes, std::uint64_t seed)
{
    std::uint64_t lanes[4] = {seed + kP1 + kP2, seed + kP2, seed, seed - kP1};
    const std::uint8_t* p = bytes.data();
    std::size_t n = bytes.size();
    std::size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; ++l) {
            std::uint64_t w;
            std::memcpy(&w, p + i + 8 * l, 8);
            lanes[l] = round(lanes[l], w);
        }
    std::uint64_t h =
        rotl(lanes[0], 1) + rotl(lanes[1], 7) + rotl(lanes[2], 12) + rotl(lanes[3], 18);
    for (; i < n; ++i) h = rotl(h ^ (p[i] * kP3), 11) * kP1;
    return mix(h ^ n);
}

Result<std::uint64_t> hashPath(const std::string& path, const ProgressFn& progress)
{
    namespace fs = std::filesystem;
    std::error_code ec;
    std::vector<std::string> files;
    if (fs::is_directory(path, ec)) {
        for (const auto& e : fs::directory_iterator(path, ec))
            if (e.is_regular_file()) files.push_back(e.path().string());
        std::sort(files.begin(), files.end());
    } else {
        files.push_back(path);
    }
    std::uint64_t total = 0, done = 0;
    for (const auto& f : files) total += fs::file_size(f, ec);
    std::uint64_t h = 0;
    constexpr std::uint64_t kChunk = 64ull << 20;
    for (const auto& f : files) {
        auto mapped = MappedFile::open(f);
        if (!mapped) return mapped.error();
        const auto& m = *mapped.value();
        const std::string name = fs::path(f).filename().string();
        h = hashBytes({reinterpret_cast<const std::uint8_t*>(name.data()), name.size()}, h);
        for (std::uint64_t off = 0; off < m.size(); off += kChunk) {
            std::uint64_t len = std::min(kChunk, m.size() - off);
            h = hashBytes(m.bytes(off, len), h);
            done += len;
            if (!reportProgress(progress, total ? double(done) / total : 1.0, "hashing model"))
                return makeError(ErrorCode::Cancelled, "hashing cancelled");
        }
    }
    return h;
}

std::string hashToHex(std::uint64_t hash)
{
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash));
    return buf;
}

}  // namespace ql
