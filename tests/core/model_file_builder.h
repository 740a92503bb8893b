// Test helpers that make model files byte by byte (GGUF, safetensors) and walk a well-formed
// GGUF's structure. Written independently of core/io so the loaders are checked against a second
// reading of the formats, not against themselves.
#pragma once

#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace qltest {

inline std::vector<std::uint8_t> readBytes(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline void writeBytes(const std::string& path, const std::vector<std::uint8_t>& bytes)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
}

inline void writeText(const std::string& path, const std::string& text)
{
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

// Little-endian byte appender.
struct ByteWriter {
    std::vector<std::uint8_t> b;

    template <class T>
    ByteWriter& put(T v)
    {
        std::uint8_t raw[sizeof(T)];
        std::memcpy(raw, &v, sizeof(T));  // the tests run on little-endian hosts
        b.insert(b.end(), raw, raw + sizeof(T));
        return *this;
    }
    ByteWriter& u8(std::uint8_t v) { return put(v); }
    ByteWriter& u16(std::uint16_t v) { return put(v); }
    ByteWriter& u32(std::uint32_t v) { return put(v); }
    ByteWriter& u64(std::uint64_t v) { return put(v); }
    ByteWriter& i32(std::int32_t v) { return put(v); }
    ByteWriter& f32(float v) { return put(v); }
    ByteWriter& f64(double v) { return put(v); }
    ByteWriter& str(const std::string& s)
    {
        u64(s.size());
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    ByteWriter& raw(const std::vector<std::uint8_t>& bytes)
    {
        b.insert(b.end(), bytes.begin(), bytes.end());
        return *this;
    }
    ByteWriter& padTo(std::size_t alignment)
    {
        while (b.size() % alignment) b.push_back(0);
        return *this;
    }
};

// GGUF value type ids (the spec's).
enum GgufType : std::uint32_t {
    kU8 = 0,
    kI8,
    kU16,
    kI16,
    kU32,
    kI32,
    kF32,
    kBool,
    kString,
    kArray,
    kU64,
    kI64,
    kF64
};

// Builds a GGUF file: call kv() and then write the value into the returned writer.
class GgufBuilder {
public:
    explicit GgufBuilder(std::uint32_t version = 3, std::uint32_t alignment = 32)
        : m_version(version), m_alignment(alignment)
    {
    }

    ByteWriter& kv(const std::string& key, std::uint32_t type)
    {
        ++m_kvCount;
        m_kv.str(key).u32(type);
        return m_kv;
    }

    void tensor(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type,
                std::vector<std::uint8_t> data)
    {
        m_tensors.push_back({name, std::move(ne), type, std::move(data)});
    }

    std::vector<std::uint8_t> build() const
    {
        ByteWriter w;
        w.u32(0x46554747).u32(m_version).u64(m_tensors.size()).u64(m_kvCount);
        w.raw(m_kv.b);
        std::uint64_t offset = 0;
        for (const auto& t : m_tensors) {
            w.str(t.name).u32(static_cast<std::uint32_t>(t.ne.size()));
            for (auto d : t.ne) w.u64(d);
            w.u32(t.type).u64(offset);
            offset += (t.data.size() + m_alignment - 1) / m_alignment * m_alignment;
        }
        w.padTo(m_alignment);
        for (const auto& t : m_tensors) {
            w.raw(t.data);
            w.padTo(m_alignment);
        }
        return w.b;
    }

private:
    struct Tensor {
        std::string name;
        std::vector<std::uint64_t> ne;
        std::uint32_t type;
        std::vector<std::uint8_t> data;
    };
    std::uint32_t m_version;
    std::uint32_t m_alignment;
    std::uint64_t m_kvCount = 0;
    ByteWriter m_kv;
    std::vector<Tensor> m_tensors;
};

// Where every field of a well-formed GGUF ends, for truncation tests.
struct GgufLayout {
    std::vector<std::uint64_t> fieldEnds;  // offsets just past each header field
    std::uint64_t dataStart = 0;
    std::uint64_t dataEnd = 0;  // end of the last tensor's data
};

class GgufWalker {
public:
    explicit GgufWalker(const std::vector<std::uint8_t>& b) : m_b(b) {}

    GgufLayout walk()
    {
        const std::uint32_t magic = take<std::uint32_t>();
        if (magic != 0x46554747) throw std::runtime_error("not GGUF");
        take<std::uint32_t>();
        const auto nTensors = take<std::uint64_t>();
        const auto nKv = take<std::uint64_t>();
        std::uint64_t alignment = 32;
        for (std::uint64_t i = 0; i < nKv; ++i) {
            const std::string key = takeString();
            const auto type = take<std::uint32_t>();
            if (key == "general.alignment") {
                alignment = take<std::uint32_t>();
                continue;
            }
            value(type);
        }
        // Tensor sizes need the block layout: F32 4, F16/BF16 2 bytes per element; block types
        // as ggml defines them (weights per block, bytes per block).
        struct Info {
            std::uint64_t elements, type, offset;
        };
        std::vector<Info> infos;
        for (std::uint64_t i = 0; i < nTensors; ++i) {
            takeString();
            const auto nDims = take<std::uint32_t>();
            std::uint64_t n = 1;
            for (std::uint32_t d = 0; d < nDims; ++d) n *= take<std::uint64_t>();
            const auto type = take<std::uint32_t>();
            const auto offset = take<std::uint64_t>();
            infos.push_back({n, type, offset});
        }
        m_layout.dataStart = (m_pos + alignment - 1) / alignment * alignment;
        for (const auto& t : infos) {
            const std::uint64_t end = m_layout.dataStart + t.offset + bytesOf(t.type, t.elements);
            m_layout.dataEnd = std::max(m_layout.dataEnd, end);
        }
        return m_layout;
    }

    static std::uint64_t bytesOf(std::uint64_t type, std::uint64_t n)
    {
        switch (type) {
            case 0: return 4 * n;
            case 1:
            case 30: return 2 * n;
            case 2: return n / 32 * 18;
            case 3: return n / 32 * 20;
            case 6: return n / 32 * 22;
            case 7: return n / 32 * 24;
            case 8: return n / 32 * 34;
            case 10: return n / 256 * 84;
            case 11: return n / 256 * 110;
            case 12: return n / 256 * 144;
            case 13: return n / 256 * 176;
            case 14: return n / 256 * 210;
        }
        throw std::runtime_error("unknown tensor type");
    }

private:
    template <class T>
    T take()
    {
        if (m_pos + sizeof(T) > m_b.size()) throw std::runtime_error("short");
        T v;
        std::memcpy(&v, m_b.data() + m_pos, sizeof(T));
        m_pos += sizeof(T);
        m_layout.fieldEnds.push_back(m_pos);
        return v;
    }
    std::string takeString()
    {
        const auto n = take<std::uint64_t>();
        if (m_pos + n > m_b.size()) throw std::runtime_error("short");
        std::string s(reinterpret_cast<const char*>(m_b.data() + m_pos), n);
        m_pos += n;
        m_layout.fieldEnds.push_back(m_pos);
        return s;
    }
    void value(std::uint32_t type)
    {
        switch (type) {
            case kU8:
            case kI8:
            case kBool: take<std::uint8_t>(); return;
            case kU16:
            case kI16: take<std::uint16_t>(); return;
            case kU32:
            case kI32:
            case kF32: take<std::uint32_t>(); return;
            case kU64:
            case kI64:
            case kF64: take<std::uint64_t>(); return;
            case kString: takeString(); return;
            case kArray: {
                const auto et = take<std::uint32_t>();
                const auto n = take<std::uint64_t>();
                for (std::uint64_t i = 0; i < n; ++i) value(et);
                return;
            }
        }
        throw std::runtime_error("bad type");
    }

    const std::vector<std::uint8_t>& m_b;
    std::uint64_t m_pos = 0;
    GgufLayout m_layout;
};

// A safetensors file from a header object and the data section.
inline std::vector<std::uint8_t> safetensorsFile(const std::string& headerJson,
                                                 const std::vector<std::uint8_t>& data)
{
    std::string header = headerJson;
    while ((8 + header.size()) % 8) header.push_back(' ');
    ByteWriter w;
    w.u64(header.size());
    w.b.insert(w.b.end(), header.begin(), header.end());
    w.raw(data);
    return w.b;
}

struct StTensor {
    std::string name;
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> bytes;
};

inline std::vector<std::uint8_t> safetensorsFile(const std::vector<StTensor>& tensors)
{
    QJsonObject header;
    std::vector<std::uint8_t> data;
    for (const auto& t : tensors) {
        QJsonArray shape;
        for (auto d : t.shape) shape.append(static_cast<qint64>(d));
        QJsonObject info;
        info["dtype"] = QString::fromStdString(t.dtype);
        info["shape"] = shape;
        info["data_offsets"] = QJsonArray{static_cast<qint64>(data.size()),
                                          static_cast<qint64>(data.size() + t.bytes.size())};
        header[QString::fromStdString(t.name)] = info;
        data.insert(data.end(), t.bytes.begin(), t.bytes.end());
    }
    header["__metadata__"] = QJsonObject{{"format", "pt"}};
    return safetensorsFile(QJsonDocument(header).toJson(QJsonDocument::Compact).toStdString(),
                           data);
}

}  // namespace qltest
