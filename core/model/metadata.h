// Key/value metadata of a model, modelled on GGUF's typed values (every GGUF value type,
// arrays included). Safetensors and llama2.c models fill it with the equivalent GGUF keys
// (general.architecture, llama.block_count, ...) so later code reads one vocabulary.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace ql {

// GGUF value type ids.
enum class MetaType : std::uint32_t {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
};
const char* metaTypeName(MetaType type);

struct MetaValue;
struct MetaArray {
    MetaType elementType = MetaType::U8;
    std::vector<MetaValue> values;
};

struct MetaValue {
    MetaType type = MetaType::U8;
    // Integers are widened to int64/uint64, floats to double; the original type is kept in `type`
    // so a writer can reproduce it exactly.
    std::variant<std::uint64_t, std::int64_t, double, bool, std::string, MetaArray> value;

    std::optional<std::int64_t> asInt() const;
    std::optional<double> asDouble() const;
    const std::string* asString() const;
    const MetaArray* asArray() const;
    std::string toDisplayString(std::size_t maxArrayItems = 8) const;
};

class Metadata {
public:
    void set(std::string key, MetaValue value);
    const MetaValue* find(const std::string& key) const;
    std::optional<std::int64_t> getInt(const std::string& key) const;
    std::optional<double> getDouble(const std::string& key) const;
    std::optional<std::string> getString(const std::string& key) const;
    // Keys in file order.
    const std::vector<std::string>& keys() const { return m_order; }
    std::size_t size() const { return m_order.size(); }

    static MetaValue makeString(std::string s);
    static MetaValue makeU32(std::uint32_t v);
    static MetaValue makeI32(std::int32_t v);
    static MetaValue makeF32(float v);
    static MetaValue makeBool(bool v);

private:
    std::map<std::string, MetaValue> m_values;
    std::vector<std::string> m_order;
};

}  // namespace ql
