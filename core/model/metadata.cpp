#include "model/metadata.h"

#include <cstdio>

namespace ql {

const char* metaTypeName(MetaType type)
{
    switch (type) {
        case MetaType::U8: return "u8";
        case MetaType::I8: return "i8";
        case MetaType::U16: return "u16";
        case MetaType::I16: return "i16";
        case MetaType::U32: return "u32";
        case MetaType::I32: return "i32";
        case MetaType::F32: return "f32";
        case MetaType::Bool: return "bool";
        case MetaType::String: return "string";
        case MetaType::Array: return "array";
        case MetaType::U64: return "u64";
        case MetaType::I64: return "i64";
        case MetaType::F64: return "f64";
    }
    return "?";
}

std::optional<std::int64_t> MetaValue::asInt() const
{
    if (auto* u = std::get_if<std::uint64_t>(&value)) return static_cast<std::int64_t>(*u);
    if (auto* i = std::get_if<std::int64_t>(&value)) return *i;
    if (auto* b = std::get_if<bool>(&value)) return *b ? 1 : 0;
    return std::nullopt;
}

std::optional<double> MetaValue::asDouble() const
{
    if (auto* d = std::get_if<double>(&value)) return *d;
    if (auto i = asInt()) return static_cast<double>(*i);
    return std::nullopt;
}

const std::string* MetaValue::asString() const
{
    return std::get_if<std::string>(&value);
}
const MetaArray* MetaValue::asArray() const
{
    return std::get_if<MetaArray>(&value);
}

std::string MetaValue::toDisplayString(std::size_t maxArrayItems) const
{
    if (auto* s = asString()) return *s;
    if (auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
    if (auto* d = std::get_if<double>(&value)) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.9g", *d);
        return buf;
    }
    if (auto* a = asArray()) {
        std::string out = "[";
        for (std::size_t i = 0; i < a->values.size() && i < maxArrayItems; ++i) {
            if (i) out += ", ";
            out += a->values[i].toDisplayString(maxArrayItems);
        }
        if (a->values.size() > maxArrayItems)
            out += ", ... (" + std::to_string(a->values.size()) + " items)";
        return out + "]";
    }
    if (auto i = asInt()) {
        if (auto* u = std::get_if<std::uint64_t>(&value)) return std::to_string(*u);
        return std::to_string(*i);
    }
    return {};
}

void Metadata::set(std::string key, MetaValue value)
{
    auto [it, inserted] = m_values.insert_or_assign(key, std::move(value));
    if (inserted) m_order.push_back(std::move(key));
}

const MetaValue* Metadata::find(const std::string& key) const
{
    auto it = m_values.find(key);
    return it == m_values.end() ? nullptr : &it->second;
}

std::optional<std::int64_t> Metadata::getInt(const std::string& key) const
{
    const MetaValue* v = find(key);
    return v ? v->asInt() : std::nullopt;
}

std::optional<double> Metadata::getDouble(const std::string& key) const
{
    const MetaValue* v = find(key);
    return v ? v->asDouble() : std::nullopt;
}

std::optional<std::string> Metadata::getString(const std::string& key) const
{
    const MetaValue* v = find(key);
    if (!v || !v->asString()) return std::nullopt;
    return *v->asString();
}

MetaValue Metadata::makeString(std::string s)
{
    return MetaValue{MetaType::String, std::move(s)};
}
MetaValue Metadata::makeU32(std::uint32_t v)
{
    return MetaValue{MetaType::U32, std::uint64_t{v}};
}
MetaValue Metadata::makeI32(std::int32_t v)
{
    return MetaValue{MetaType::I32, std::int64_t{v}};
}
MetaValue Metadata::makeF32(float v)
{
    return MetaValue{MetaType::F32, double{v}};
}
MetaValue Metadata::makeBool(bool v)
{
    return MetaValue{MetaType::Bool, v};
}

}  // namespace ql
