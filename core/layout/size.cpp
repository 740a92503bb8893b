// Size accounting (see size.h): the GGUF writer's header and data layout, recomputed without
// quantizing anything.
#include "layout/size.h"

#include <filesystem>
#include <map>

#include "export/gguf_writer.h"
#include "io/gguf.h"

namespace ql {
namespace {

std::uint64_t strBytes(const std::string& s)
{
    return 8 + s.size();
}

std::uint64_t scalarBytes(MetaType type)
{
    switch (type) {
        case MetaType::U8:
        case MetaType::I8:
        case MetaType::Bool: return 1;
        case MetaType::U16:
        case MetaType::I16: return 2;
        case MetaType::U32:
        case MetaType::I32:
        case MetaType::F32: return 4;
        case MetaType::U64:
        case MetaType::I64:
        case MetaType::F64: return 8;
        default: return 0;
    }
}

std::uint64_t valueBytes(MetaType type, const MetaValue& v)
{
    if (type == MetaType::String) {
        const std::string* s = v.asString();
        return strBytes(s ? *s : std::string());
    }
    if (type == MetaType::Array) {
        const MetaArray* a = v.asArray();
        if (!a) return 12;
        std::uint64_t n = 12;
        for (const MetaValue& e : a->values) n += valueBytes(a->elementType, e);
        return n;
    }
    return scalarBytes(type);
}

std::uint64_t roundUp(std::uint64_t n, std::uint64_t a)
{
    return (n + a - 1) / a * a;
}

}  // namespace

std::uint64_t ggufValueBytes(const MetaValue& value)
{
    return valueBytes(value.type, value);
}

const TensorSize* SizeReport::find(const std::string& name) const
{
    for (const auto& t : tensors)
        if (t.name == name) return &t;
    return nullptr;
}

Result<SizeReport> estimateSize(const Model& model, const LayoutPlan& plan,
                                const std::string& layoutText, const SizeOptions& options)
{
    SizeReport r;
    if (const MetaValue* a = model.metadata.find("general.alignment")) {
        const auto v = a->asInt();
        r.alignment = v && *v >= 8 && *v % 8 == 0 && *v <= (1 << 30) ? std::uint64_t(*v)
                                                                     : kGgufDefaultAlignment;
    } else {
        r.alignment = kGgufDefaultAlignment;
    }
    bool anyQuantized = false;
    std::vector<std::string> dequantNotes;
    std::map<int, BlockSize> blocks;
    std::uint64_t infoBytes = 0;
    for (const TensorPlan& p : plan.tensors) {
        TensorSize t;
        t.name = p.name;
        if (const TensorInfo* info = model.find(p.name)) {
            t.block = info->block;
            t.role = info->role;
        }
        t.format = p.format;
        bool dequantized = false;
        t.storedType = ggufStorageType(p.format, options.dequantType, p.cols, &dequantized);
        t.weights = p.elementCount();
        auto bytes = tensorBytes(t.storedType, std::uint64_t(t.weights));
        if (!bytes)
            return makeError(ErrorCode::InvalidArgument,
                             p.name + ": not a whole number of " +
                                 std::string(tensorTypeName(t.storedType)) + " blocks");
        t.bytes = *bytes;
        t.paddedBytes = roundUp(t.bytes, r.alignment);
        t.bpw = t.weights > 0 ? 8.0 * double(t.bytes) / double(t.weights) : 0;
        if (t.storedType != TensorType::F32 && t.storedType != TensorType::F16 &&
            t.storedType != TensorType::BF16)
            anyQuantized = true;
        if (dequantized) dequantNotes.push_back(p.name + "=" + formatToString(p.format));
        const std::size_t dims = p.shape.empty() ? 1 : p.shape.size();
        infoBytes += strBytes(p.name) + 4 + 8 * dims + 4 + 8;
        r.tensorBytes += t.bytes;
        r.paddingBytes += t.paddedBytes - t.bytes;
        r.weights += t.weights;
        BlockSize& b = blocks[t.block];
        b.block = t.block;
        b.weights += t.weights;
        b.bytes += t.bytes;
        r.tensors.push_back(std::move(t));
    }
    for (auto& [k, b] : blocks) r.blocks.push_back(b);

    // Metadata as the writer emits it (gguf_writer.cpp, writeFile).
    std::uint64_t kvBytes = 0, kvCount = 0;
    auto addKey = [&](const std::string& key, std::uint64_t value) {
        kvBytes += strBytes(key) + 4 + value;
        ++kvCount;
    };
    bool haveFileType = false, haveQuantVersion = false;
    for (const std::string& key : model.metadata.keys()) {
        if (key.rfind("quantlens.", 0) == 0) continue;
        if (key == "general.file_type") {
            addKey(key, 4);
            haveFileType = true;
            continue;
        }
        if (key == "general.quantization_version" && anyQuantized) {
            addKey(key, 4);
            haveQuantVersion = true;
            continue;
        }
        addKey(key, ggufValueBytes(*model.metadata.find(key)));
    }
    std::vector<std::string> warnings;
    for (const auto& [key, value] : tokenizerMetadata(model, warnings))
        addKey(key, ggufValueBytes(value));
    if (!haveFileType) addKey("general.file_type", 4);
    if (anyQuantized && !haveQuantVersion) addKey("general.quantization_version", 4);
    addKey("quantlens.producer", strBytes(options.producer));
    addKey("quantlens.layout", strBytes(layoutText));
    addKey("quantlens.source", strBytes(std::filesystem::path(model.path).filename().string()));
    addKey("quantlens.source_format", strBytes(modelFormatName(model.format)));
    if (!options.calibrationPath.empty())
        addKey("quantlens.calibration", strBytes(options.calibrationPath));
    auto arrayBytes = [](const std::vector<std::string>& items) {
        std::uint64_t n = 12;
        for (const auto& s : items) n += strBytes(s);
        return n;
    };
    if (!plan.fallbacks.empty()) {
        std::vector<std::string> notes;
        for (const auto& f : plan.fallbacks)
            notes.push_back(f.tensor + ": " + formatToString(f.wanted) + " -> " +
                            formatToString(f.got));
        addKey("quantlens.fallbacks", arrayBytes(notes));
    }
    if (!dequantNotes.empty()) addKey("quantlens.dequantized", arrayBytes(dequantNotes));
    (void)kvCount;

    r.headerBytes = roundUp(4 + 4 + 8 + 8 + kvBytes + infoBytes, r.alignment);
    r.fileBytes = r.headerBytes + r.tensorBytes + r.paddingBytes;
    r.bpw = r.weights > 0 ? 8.0 * double(r.tensorBytes) / double(r.weights) : 0;
    r.fileBpw = r.weights > 0 ? 8.0 * double(r.fileBytes) / double(r.weights) : 0;
    return r;
}

Result<SizeReport> estimateSize(const Model& model, const Layout& layout,
                                const SizeOptions& options)
{
    auto plan = layout.resolve(model);
    if (!plan) return plan.error();
    return estimateSize(model, *plan, layout.toString(), options);
}

MemoryEstimate estimateMemory(const Model& model, const SizeReport& size,
                              const MemoryOptions& options)
{
    const HyperParams& h = model.hparams;
    MemoryEstimate m;
    m.weights = size.tensorBytes;
    const std::uint64_t ctx = std::uint64_t(std::max<std::int64_t>(options.context, 1));
    const std::uint64_t batch = std::uint64_t(std::max<std::int64_t>(options.batch, 1));
    const std::uint64_t headDim = std::uint64_t(
        h.headDim > 0 ? h.headDim : (h.headCount > 0 ? h.embeddingDim / h.headCount : 0));
    const std::uint64_t kvHeads = std::uint64_t(h.headCountKv > 0 ? h.headCountKv : h.headCount);
    m.kvCache = 2 * std::uint64_t(h.blockCount) * ctx * kvHeads * headDim *
                std::uint64_t(options.kvBytesPerValue) * batch;
    const std::uint64_t perToken = 4 * std::uint64_t(h.embeddingDim) + 3 * std::uint64_t(h.ffnDim);
    m.activations = batch * (4 * ctx * perToken + 4 * std::uint64_t(h.headCount) * ctx * ctx +
                             4 * ctx * std::uint64_t(h.vocabSize));
    m.reserve = options.reserveBytes;
    m.total = m.weights + m.kvCache + m.activations + m.reserve;
    return m;
}

}  // namespace ql
