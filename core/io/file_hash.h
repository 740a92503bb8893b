// A fast 64-bit content fingerprint of model files (four independent multiply-rotate lanes over
// 8-byte words, ~several GB/s), used by sessions to notice a changed model file. Not cryptographic.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "util/progress.h"
#include "util/result.h"

namespace ql {

std::uint64_t hashBytes(std::span<const std::uint8_t> bytes, std::uint64_t seed = 0);
// Hash of a file or of every regular file in a folder (sorted by name), cancellable.
Result<std::uint64_t> hashPath(const std::string& path, const ProgressFn& progress = {});
std::string hashToHex(std::uint64_t hash);

}  // namespace ql
