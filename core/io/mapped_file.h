// Read-only memory mapping of a model file. Opening maps the file and touches nothing:
// pages are read lazily by the OS when a tensor is first dequantized, so listing a
// multi-GB model costs only its headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "util/result.h"

namespace ql {

class MappedFile {
public:
    static Result<std::shared_ptr<MappedFile>> open(const std::string& path);
    // Memory that is not a file (e.g. weights decoded from a packed format on opening), under
    // `label` for messages; data() points into `bytes`, which the object owns.
    static std::shared_ptr<MappedFile> fromBytes(std::string label,
                                                 std::vector<std::uint8_t> bytes);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const std::uint8_t* data() const { return m_data; }
    std::uint64_t size() const { return m_size; }
    const std::string& path() const { return m_path; }

    // Bounds-checked view; an empty span with ok()==false when [offset, offset+length) is outside.
    bool contains(std::uint64_t offset, std::uint64_t length) const
    {
        return offset <= m_size && length <= m_size - offset;
    }
    std::span<const std::uint8_t> bytes(std::uint64_t offset, std::uint64_t length) const
    {
        return contains(offset, length) ? std::span<const std::uint8_t>(m_data + offset, length)
                                        : std::span<const std::uint8_t>();
    }

private:
    MappedFile() = default;
    std::string m_path;
    const std::uint8_t* m_data = nullptr;
    std::uint64_t m_size = 0;
    std::vector<std::uint8_t> m_owned;  // fromBytes(): the data; empty for a mapping
};

}  // namespace ql
