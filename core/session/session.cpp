// HDF5 session I/O through the C API (available everywhere HDF5 is, the GPU machine included).
// Every handle is owned by a small RAII wrapper; every HDF5 failure becomes an ql::Error naming the
// object. Debian's HDF5 is not built thread-safe, so all calls are serialised by one mutex.
#include "session/session.h"

#include <hdf5.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <sstream>

#include "io/file_hash.h"

namespace ql {
namespace {

std::mutex g_hdf5Mutex;

class Handle {
public:
    using Closer = herr_t (*)(hid_t);
    Handle() = default;
    Handle(hid_t id, Closer closer) : m_id(id), m_closer(closer) {}
    Handle(Handle&& o) noexcept : m_id(o.m_id), m_closer(o.m_closer) { o.m_id = H5I_INVALID_HID; }
    Handle& operator=(Handle&& o) noexcept
    {
        std::swap(m_id, o.m_id);
        std::swap(m_closer, o.m_closer);
        return *this;
    }
    ~Handle()
    {
        if (m_id >= 0 && m_closer) m_closer(m_id);
    }
    hid_t get() const { return m_id; }
    bool valid() const { return m_id >= 0; }

private:
    hid_t m_id = H5I_INVALID_HID;
    Closer m_closer = nullptr;
};

Error h5Error(const std::string& what)
{
    return makeError(ErrorCode::Format, "session: " + what);
}

Handle scalarSpace()
{
    return Handle(H5Screate(H5S_SCALAR), H5Sclose);
}
Handle vectorSpace(hsize_t n)
{
    return Handle(H5Screate_simple(1, &n, nullptr), H5Sclose);
}

Status writeAttr(hid_t obj, const char* name, hid_t type, const void* value)
{
    Handle space = scalarSpace();
    Handle attr(H5Acreate2(obj, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!attr.valid() || H5Awrite(attr.get(), type, value) < 0)
        return h5Error(std::string("cannot write attribute ") + name);
    return {};
}
Status writeAttr(hid_t obj, const char* name, const std::string& value)
{
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), H5T_VARIABLE);
    H5Tset_cset(type.get(), H5T_CSET_UTF8);
    const char* p = value.c_str();
    return writeAttr(obj, name, type.get(), &p);
}
Status writeAttr(hid_t obj, const char* name, std::int32_t v)
{
    return writeAttr(obj, name, H5T_NATIVE_INT32, &v);
}
Status writeAttr(hid_t obj, const char* name, std::int64_t v)
{
    return writeAttr(obj, name, H5T_NATIVE_INT64, &v);
}
Status writeAttr(hid_t obj, const char* name, std::uint64_t v)
{
    return writeAttr(obj, name, H5T_NATIVE_UINT64, &v);
}
Status writeAttr(hid_t obj, const char* name, double v)
{
    return writeAttr(obj, name, H5T_NATIVE_DOUBLE, &v);
}

template <class T>
Result<T> readNumberAttr(hid_t obj, const char* name, hid_t memType)
{
    if (H5Aexists(obj, name) <= 0) return h5Error(std::string("missing attribute ") + name);
    Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    T v{};
    if (!attr.valid() || H5Aread(attr.get(), memType, &v) < 0)
        return h5Error(std::string("cannot read attribute ") + name);
    return v;
}

Result<std::string> readStringAttr(hid_t obj, const char* name)
{
    if (H5Aexists(obj, name) <= 0) return h5Error(std::string("missing attribute ") + name);
    Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    Handle fileType(H5Aget_type(attr.get()), H5Tclose);
    if (!attr.valid() || H5Tget_class(fileType.get()) != H5T_STRING)
        return h5Error(std::string("attribute ") + name + " is not a string");
    if (H5Tis_variable_str(fileType.get()) > 0) {
        Handle memType(H5Tcopy(H5T_C_S1), H5Tclose);
        H5Tset_size(memType.get(), H5T_VARIABLE);
        H5Tset_cset(memType.get(), H5Tget_cset(fileType.get()));
        char* p = nullptr;
        if (H5Aread(attr.get(), memType.get(), &p) < 0)
            return h5Error(std::string("cannot read ") + name);
        std::string s = p ? p : "";
        Handle space(H5Aget_space(attr.get()), H5Sclose);
        H5Dvlen_reclaim(memType.get(), space.get(), H5P_DEFAULT, &p);
        return s;
    }
    std::size_t n = H5Tget_size(fileType.get());
    std::string s(n, '\0');
    Handle memType(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memType.get(), n);
    H5Tset_cset(memType.get(), H5Tget_cset(fileType.get()));
    if (H5Aread(attr.get(), memType.get(), s.data()) < 0)
        return h5Error(std::string("cannot read ") + name);
    s.resize(std::strlen(s.c_str()));
    return s;
}

template <class T>
Status writeDataset(hid_t parent, const char* name, hid_t memType, const std::vector<T>& data,
                    std::vector<hsize_t> dims = {})
{
    if (dims.empty()) dims = {static_cast<hsize_t>(data.size())};
    Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    Handle ds(H5Dcreate2(parent, name, memType, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
    if (!ds.valid() || (!data.empty() && H5Dwrite(ds.get(), memType, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                                  data.data()) < 0))
        return h5Error(std::string("cannot write dataset ") + name);
    return {};
}

Status writeStrings(hid_t parent, const char* name, const std::vector<std::string>& strings)
{
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), H5T_VARIABLE);
    H5Tset_cset(type.get(), H5T_CSET_UTF8);
    std::vector<const char*> ptrs;
    for (const auto& s : strings) ptrs.push_back(s.c_str());
    return writeDataset(parent, name, type.get(), ptrs);
}

// Reads a dataset of exactly `expected` elements (0 = any) into a vector.
template <class T>
Result<std::vector<T>> readDataset(hid_t parent, const char* name, hid_t memType, hsize_t expected)
{
    if (H5Lexists(parent, name, H5P_DEFAULT) <= 0)
        return h5Error(std::string("missing dataset ") + name);
    Handle ds(H5Dopen2(parent, name, H5P_DEFAULT), H5Dclose);
    Handle space(H5Dget_space(ds.get()), H5Sclose);
    if (!ds.valid() || !space.valid()) return h5Error(std::string("cannot open dataset ") + name);
    hssize_t n = H5Sget_simple_extent_npoints(space.get());
    if (n < 0 || (expected && static_cast<hsize_t>(n) != expected))
        return h5Error(std::string("dataset ") + name + " has " + std::to_string(n) +
                       " elements, expected " + std::to_string(expected));
    std::vector<T> out(static_cast<std::size_t>(n));
    if (n > 0 && H5Dread(ds.get(), memType, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
        return h5Error(std::string("cannot read dataset ") + name);
    return out;
}

Result<std::vector<std::string>> readStrings(hid_t parent, const char* name, hsize_t expected)
{
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), H5T_VARIABLE);
    H5Tset_cset(type.get(), H5T_CSET_UTF8);
    auto raw = readDataset<char*>(parent, name, type.get(), expected);
    if (!raw) return raw.error();
    std::vector<std::string> out;
    for (char* p : *raw) out.emplace_back(p ? p : "");
    Handle ds(H5Dopen2(parent, name, H5P_DEFAULT), H5Dclose);
    Handle space(H5Dget_space(ds.get()), H5Sclose);
    if (!raw->empty()) H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, raw->data());
    return out;
}

Handle createGroup(hid_t parent, const char* name)
{
    return Handle(H5Gcreate2(parent, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
}

Status writeSensitivity(hid_t root, const SensitivityTable& t)
{
    Handle g = createGroup(root, "sensitivity");
    if (!g.valid()) return h5Error("cannot create /sensitivity");
    QL_TRY_STATUS(writeAttr(g.get(), "text", t.text));
    QL_TRY_STATUS(writeAttr(g.get(), "ctx", std::int32_t(t.ctx)));
    QL_TRY_STATUS(writeAttr(g.get(), "windows", std::int32_t(t.windows)));
    QL_TRY_STATUS(writeAttr(g.get(), "positions", std::int64_t(t.positions)));
    QL_TRY_STATUS(writeAttr(g.get(), "device", t.device));
    QL_TRY_STATUS(writeAttr(g.get(), "seconds", t.seconds));
    const hsize_t nt = t.tensors.size(), nf = t.formats.size();
    std::vector<std::string> names, roles, stored;
    std::vector<std::int32_t> blocks;
    std::vector<std::int64_t> shape;
    std::vector<double> energy, kurt, outl, dkl, same, herr, awm;
    std::vector<std::uint64_t> bytes;
    for (const auto& x : t.tensors) {
        if (x.cells.size() != nf)
            return h5Error("sensitivity: " + x.name + " has wrong cell count");
        names.push_back(x.name);
        roles.push_back(x.role);
        blocks.push_back(x.block);
        shape.push_back(x.rows);
        shape.push_back(x.cols);
        energy.push_back(x.activationEnergy);
        kurt.push_back(x.kurtosis);
        outl.push_back(x.outlierShare);
        for (const auto& c : x.cells) {
            stored.push_back(c.stored);
            bytes.push_back(c.bytes);
            dkl.push_back(c.deltaKl);
            same.push_back(c.sameTop);
            herr.push_back(c.hessianError);
            awm.push_back(c.actWeightedMse);
        }
    }
    QL_TRY_STATUS(writeStrings(g.get(), "formats", t.formats));
    QL_TRY_STATUS(writeStrings(g.get(), "tensors", names));
    QL_TRY_STATUS(writeStrings(g.get(), "role", roles));
    QL_TRY_STATUS(writeDataset(g.get(), "block", H5T_NATIVE_INT32, blocks));
    QL_TRY_STATUS(writeDataset(g.get(), "shape", H5T_NATIVE_INT64, shape, {nt, 2}));
    QL_TRY_STATUS(writeDataset(g.get(), "activation_energy", H5T_NATIVE_DOUBLE, energy));
    QL_TRY_STATUS(writeDataset(g.get(), "kurtosis", H5T_NATIVE_DOUBLE, kurt));
    QL_TRY_STATUS(writeDataset(g.get(), "outlier_share", H5T_NATIVE_DOUBLE, outl));
    QL_TRY_STATUS(writeStrings(g.get(), "stored", stored));
    QL_TRY_STATUS(writeDataset(g.get(), "bytes", H5T_NATIVE_UINT64, bytes, {nt, nf}));
    QL_TRY_STATUS(writeDataset(g.get(), "delta_kl", H5T_NATIVE_DOUBLE, dkl, {nt, nf}));
    QL_TRY_STATUS(writeDataset(g.get(), "same_top", H5T_NATIVE_DOUBLE, same, {nt, nf}));
    QL_TRY_STATUS(writeDataset(g.get(), "hessian_error", H5T_NATIVE_DOUBLE, herr, {nt, nf}));
    QL_TRY_STATUS(writeDataset(g.get(), "act_weighted_mse", H5T_NATIVE_DOUBLE, awm, {nt, nf}));
    return {};
}

Result<SensitivityTable> readSensitivity(hid_t root)
{
    Handle g(H5Gopen2(root, "sensitivity", H5P_DEFAULT), H5Gclose);
    if (!g.valid()) return h5Error("cannot open /sensitivity");
    SensitivityTable t;
    auto text = readStringAttr(g.get(), "text");
    auto ctx = readNumberAttr<std::int32_t>(g.get(), "ctx", H5T_NATIVE_INT32);
    auto windows = readNumberAttr<std::int32_t>(g.get(), "windows", H5T_NATIVE_INT32);
    auto positions = readNumberAttr<std::int64_t>(g.get(), "positions", H5T_NATIVE_INT64);
    auto device = readStringAttr(g.get(), "device");
    auto seconds = readNumberAttr<double>(g.get(), "seconds", H5T_NATIVE_DOUBLE);
    if (!text || !ctx || !windows || !positions || !device || !seconds)
        return h5Error("incomplete /sensitivity group");
    t.text = *text;
    t.ctx = *ctx;
    t.windows = *windows;
    t.positions = *positions;
    t.device = *device;
    t.seconds = *seconds;
    auto formats = readStrings(g.get(), "formats", 0);
    auto names = readStrings(g.get(), "tensors", 0);
    if (!formats) return formats.error();
    if (!names) return names.error();
    t.formats = *formats;
    const hsize_t nt = names->size(), nf = formats->size();
    auto roles = readStrings(g.get(), "role", nt);
    auto blocks = readDataset<std::int32_t>(g.get(), "block", H5T_NATIVE_INT32, nt);
    auto shape = readDataset<std::int64_t>(g.get(), "shape", H5T_NATIVE_INT64, nt * 2);
    auto energy = readDataset<double>(g.get(), "activation_energy", H5T_NATIVE_DOUBLE, nt);
    auto kurt = readDataset<double>(g.get(), "kurtosis", H5T_NATIVE_DOUBLE, nt);
    auto outl = readDataset<double>(g.get(), "outlier_share", H5T_NATIVE_DOUBLE, nt);
    auto stored = readStrings(g.get(), "stored", nt * nf);
    auto bytes = readDataset<std::uint64_t>(g.get(), "bytes", H5T_NATIVE_UINT64, nt * nf);
    auto dkl = readDataset<double>(g.get(), "delta_kl", H5T_NATIVE_DOUBLE, nt * nf);
    auto same = readDataset<double>(g.get(), "same_top", H5T_NATIVE_DOUBLE, nt * nf);
    auto herr = readDataset<double>(g.get(), "hessian_error", H5T_NATIVE_DOUBLE, nt * nf);
    auto awm = readDataset<double>(g.get(), "act_weighted_mse", H5T_NATIVE_DOUBLE, nt * nf);
    if (!roles || !blocks || !shape || !energy || !kurt || !outl || !stored || !bytes || !dkl ||
        !same || !herr || !awm)
        return h5Error("incomplete /sensitivity datasets");
    for (hsize_t i = 0; i < nt; ++i) {
        SensitivityTensor x;
        x.name = (*names)[i];
        x.role = (*roles)[i];
        x.block = (*blocks)[i];
        x.rows = (*shape)[2 * i];
        x.cols = (*shape)[2 * i + 1];
        x.activationEnergy = (*energy)[i];
        x.kurtosis = (*kurt)[i];
        x.outlierShare = (*outl)[i];
        for (hsize_t f = 0; f < nf; ++f) {
            const hsize_t k = i * nf + f;
            x.cells.push_back(
                {(*stored)[k], (*bytes)[k], (*dkl)[k], (*same)[k], (*herr)[k], (*awm)[k]});
        }
        t.tensors.push_back(std::move(x));
    }
    return t;
}

const char* hessianName(HessianPrecision p)
{
    return p == HessianPrecision::Float32 ? "f32" : p == HessianPrecision::Float64 ? "f64" : "none";
}

std::string isoNow()
{
    std::time_t t = std::time(nullptr);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return buf;
}

Status writeProbe(hid_t probes, const ProbeStats& p)
{
    Handle g = createGroup(probes, p.name.c_str());
    if (!g.valid()) return h5Error("cannot create group for probe " + p.name);
    const ActivationStats& s = p.stats;
    QL_TRY_STATUS(writeAttr(g.get(), "block", std::int32_t(p.block)));
    QL_TRY_STATUS(writeAttr(g.get(), "site", std::string(probeSiteName(p.site))));
    QL_TRY_STATUS(writeAttr(g.get(), "channels", std::int32_t(s.channels())));
    QL_TRY_STATUS(writeAttr(g.get(), "tokens", std::int64_t(s.tokenCount())));
    QL_TRY_STATUS(writeAttr(g.get(), "hist_range", s.histogram().range));
    QL_TRY_STATUS(writeDataset(g.get(), "abs_max", H5T_NATIVE_FLOAT, s.channelAbsMax()));
    QL_TRY_STATUS(writeDataset(g.get(), "sum_abs", H5T_NATIVE_DOUBLE, s.sumAbs()));
    QL_TRY_STATUS(writeDataset(g.get(), "sum_sq", H5T_NATIVE_DOUBLE, s.sumSquare()));
    std::vector<std::uint64_t> hist(s.histogram().counts.begin(), s.histogram().counts.end());
    QL_TRY_STATUS(writeDataset(g.get(), "hist", H5T_NATIVE_UINT64, hist));
    std::vector<float> value;
    std::vector<std::int32_t> channel, sample, position;
    for (const auto& t : s.top()) {
        value.push_back(t.value);
        channel.push_back(t.channel);
        sample.push_back(t.sample);
        position.push_back(t.position);
    }
    QL_TRY_STATUS(writeDataset(g.get(), "top_value", H5T_NATIVE_FLOAT, value));
    QL_TRY_STATUS(writeDataset(g.get(), "top_channel", H5T_NATIVE_INT32, channel));
    QL_TRY_STATUS(writeDataset(g.get(), "top_sample", H5T_NATIVE_INT32, sample));
    QL_TRY_STATUS(writeDataset(g.get(), "top_position", H5T_NATIVE_INT32, position));
    std::vector<std::string> before, token, after;
    for (std::size_t i = 0; i < s.top().size(); ++i) {
        const TopActivationContext ctx =
            i < p.topContext.size() ? p.topContext[i] : TopActivationContext{};
        before.push_back(ctx.before);
        token.push_back(ctx.token);
        after.push_back(ctx.after);
    }
    QL_TRY_STATUS(writeStrings(g.get(), "top_before", before));
    QL_TRY_STATUS(writeStrings(g.get(), "top_token", token));
    QL_TRY_STATUS(writeStrings(g.get(), "top_after", after));
    const hsize_t c = static_cast<hsize_t>(s.channels());
    if (s.hessianPrecision() == HessianPrecision::Float64) {
        QL_TRY_STATUS(writeDataset(g.get(), "hessian", H5T_NATIVE_DOUBLE, s.hessian(), {c, c}));
    } else if (s.hessianPrecision() == HessianPrecision::Float32) {
        auto h = s.hessian();
        std::vector<float> hf(h.begin(), h.end());
        QL_TRY_STATUS(writeDataset(g.get(), "hessian", H5T_NATIVE_FLOAT, hf, {c, c}));
    }
    return {};
}

Result<ProbeStats> readProbe(hid_t probes, const std::string& name, HessianPrecision precision,
                             int topK)
{
    Handle g(H5Gopen2(probes, name.c_str(), H5P_DEFAULT), H5Gclose);
    if (!g.valid()) return h5Error("cannot open probe " + name);
    ProbeStats p;
    p.name = name;
    auto block = readNumberAttr<std::int32_t>(g.get(), "block", H5T_NATIVE_INT32);
    auto site = readStringAttr(g.get(), "site");
    auto channels = readNumberAttr<std::int32_t>(g.get(), "channels", H5T_NATIVE_INT32);
    auto tokens = readNumberAttr<std::int64_t>(g.get(), "tokens", H5T_NATIVE_INT64);
    auto range = readNumberAttr<double>(g.get(), "hist_range", H5T_NATIVE_DOUBLE);
    if (!block) return block.error();
    if (!site) return site.error();
    if (!channels) return channels.error();
    if (!tokens) return tokens.error();
    if (!range) return range.error();
    if (*channels <= 0 || *channels > (1 << 20))
        return h5Error("probe " + name + ": bad channel count");
    p.block = *block;
    bool known = false;
    for (ProbeSite s :
         {ProbeSite::AttnQkv, ProbeSite::AttnOutput, ProbeSite::FfnGateUp, ProbeSite::FfnDown})
        if (*site == probeSiteName(s)) {
            p.site = s;
            known = true;
        }
    if (!known) return h5Error("probe " + name + ": unknown site " + *site);
    const hsize_t c = static_cast<hsize_t>(*channels);
    auto absMax = readDataset<float>(g.get(), "abs_max", H5T_NATIVE_FLOAT, c);
    auto sumAbs = readDataset<double>(g.get(), "sum_abs", H5T_NATIVE_DOUBLE, c);
    auto sumSq = readDataset<double>(g.get(), "sum_sq", H5T_NATIVE_DOUBLE, c);
    auto hist = readDataset<std::uint64_t>(g.get(), "hist", H5T_NATIVE_UINT64, 0);
    auto topValue = readDataset<float>(g.get(), "top_value", H5T_NATIVE_FLOAT, 0);
    if (!absMax) return absMax.error();
    if (!sumAbs) return sumAbs.error();
    if (!sumSq) return sumSq.error();
    if (!hist) return hist.error();
    if (!topValue) return topValue.error();
    const hsize_t k = topValue->size();
    auto topChannel = readDataset<std::int32_t>(g.get(), "top_channel", H5T_NATIVE_INT32, k);
    auto topSample = readDataset<std::int32_t>(g.get(), "top_sample", H5T_NATIVE_INT32, k);
    auto topPosition = readDataset<std::int32_t>(g.get(), "top_position", H5T_NATIVE_INT32, k);
    if (!topChannel) return topChannel.error();
    if (!topSample) return topSample.error();
    if (!topPosition) return topPosition.error();
    std::vector<TopActivation> top;
    for (hsize_t i = 0; i < k; ++i)
        top.push_back({(*topValue)[i], (*topChannel)[i], (*topSample)[i], (*topPosition)[i]});
    if (k) {
        auto before = readStrings(g.get(), "top_before", k);
        auto token = readStrings(g.get(), "top_token", k);
        auto after = readStrings(g.get(), "top_after", k);
        if (!before) return before.error();
        if (!token) return token.error();
        if (!after) return after.error();
        for (hsize_t i = 0; i < k; ++i)
            p.topContext.push_back({(*before)[i], (*token)[i], (*after)[i]});
    }
    std::vector<double> hessian;
    if (precision != HessianPrecision::None) {
        auto h = readDataset<double>(g.get(), "hessian", H5T_NATIVE_DOUBLE, c * c);
        if (!h) return h.error();
        hessian = std::move(h).value();
    }
    SymmetricHistogram sh;
    sh.range = *range;
    sh.counts = std::move(hist).value();
    p.stats = ActivationStats::fromParts(*channels, *tokens, std::move(absMax).value(),
                                         std::move(sumAbs).value(), std::move(sumSq).value(),
                                         std::move(sh), std::move(top), precision,
                                         std::move(hessian), topK);
    return p;
}

// --- version 2 groups: one writer and one reader per group ---------------------------------------

bool hasLink(hid_t parent, const char* name)
{
    return H5Lexists(parent, name, H5P_DEFAULT) > 0;
}

Status writeLayoutGroup(hid_t root, const SessionData& s)
{
    if (s.layout.empty()) return {};
    Handle g = createGroup(root, "layout");
    if (!g.valid()) return h5Error("cannot create /layout");
    return writeAttr(g.get(), "text", s.layout);
}

Status readLayoutGroup(hid_t root, SessionData& s)
{
    if (!hasLink(root, "layout")) return {};
    Handle g(H5Gopen2(root, "layout", H5P_DEFAULT), H5Gclose);
    auto t = readStringAttr(g.get(), "text");
    if (!t) return t.error();
    s.layout = *t;
    return {};
}

Status writeQuantizationGroup(hid_t root, const SessionData& s)
{
    if (!s.quantization) return {};
    const SessionQuantization& q = *s.quantization;
    Handle g = createGroup(root, "quantization");
    if (!g.valid()) return h5Error("cannot create /quantization");
    QL_TRY_STATUS(writeAttr(g.get(), "layout", q.layout));
    QL_TRY_STATUS(writeAttr(g.get(), "seconds", q.seconds));
    std::vector<std::string> name, format, method;
    std::vector<double> mse, sqnr, rel, loss, rtn, damp;
    std::vector<std::int64_t> dead;
    std::vector<std::int32_t> act;
    for (const auto& t : q.tensors) {
        name.push_back(t.name);
        format.push_back(t.format);
        method.push_back(t.method);
        mse.push_back(t.mse);
        sqnr.push_back(t.sqnrDb);
        rel.push_back(t.outputErrorRelative);
        loss.push_back(t.gptqLoss);
        rtn.push_back(t.rtnLoss);
        damp.push_back(t.damp);
        dead.push_back(t.deadColumns);
        act.push_back(t.actOrder ? 1 : 0);
    }
    QL_TRY_STATUS(writeStrings(g.get(), "name", name));
    QL_TRY_STATUS(writeStrings(g.get(), "format", format));
    QL_TRY_STATUS(writeStrings(g.get(), "method", method));
    QL_TRY_STATUS(writeDataset(g.get(), "mse", H5T_NATIVE_DOUBLE, mse));
    QL_TRY_STATUS(writeDataset(g.get(), "sqnr_db", H5T_NATIVE_DOUBLE, sqnr));
    QL_TRY_STATUS(writeDataset(g.get(), "output_error_rel", H5T_NATIVE_DOUBLE, rel));
    QL_TRY_STATUS(writeDataset(g.get(), "gptq_loss", H5T_NATIVE_DOUBLE, loss));
    QL_TRY_STATUS(writeDataset(g.get(), "rtn_loss", H5T_NATIVE_DOUBLE, rtn));
    QL_TRY_STATUS(writeDataset(g.get(), "damp", H5T_NATIVE_DOUBLE, damp));
    QL_TRY_STATUS(writeDataset(g.get(), "dead_columns", H5T_NATIVE_INT64, dead));
    QL_TRY_STATUS(writeDataset(g.get(), "act_order", H5T_NATIVE_INT32, act));
    Handle order = createGroup(g.get(), "order");
    for (const auto& t : q.tensors)
        if (!t.orderHead.empty())
            QL_TRY_STATUS(writeDataset(order.get(), t.name.c_str(), H5T_NATIVE_INT32, t.orderHead));
    return {};
}

Status readQuantizationGroup(hid_t root, SessionData& s)
{
    if (!hasLink(root, "quantization")) return {};
    Handle g(H5Gopen2(root, "quantization", H5P_DEFAULT), H5Gclose);
    SessionQuantization q;
    auto layout = readStringAttr(g.get(), "layout");
    auto seconds = readNumberAttr<double>(g.get(), "seconds", H5T_NATIVE_DOUBLE);
    auto name = readStrings(g.get(), "name", 0);
    if (!layout || !seconds || !name) return h5Error("incomplete /quantization group");
    q.layout = *layout;
    q.seconds = *seconds;
    const hsize_t n = name->size();
    auto format = readStrings(g.get(), "format", n);
    auto method = readStrings(g.get(), "method", n);
    auto mse = readDataset<double>(g.get(), "mse", H5T_NATIVE_DOUBLE, n);
    auto sqnr = readDataset<double>(g.get(), "sqnr_db", H5T_NATIVE_DOUBLE, n);
    auto rel = readDataset<double>(g.get(), "output_error_rel", H5T_NATIVE_DOUBLE, n);
    auto loss = readDataset<double>(g.get(), "gptq_loss", H5T_NATIVE_DOUBLE, n);
    auto rtn = readDataset<double>(g.get(), "rtn_loss", H5T_NATIVE_DOUBLE, n);
    auto damp = readDataset<double>(g.get(), "damp", H5T_NATIVE_DOUBLE, n);
    auto dead = readDataset<std::int64_t>(g.get(), "dead_columns", H5T_NATIVE_INT64, n);
    auto act = readDataset<std::int32_t>(g.get(), "act_order", H5T_NATIVE_INT32, n);
    if (!format || !method || !mse || !sqnr || !rel || !loss || !rtn || !damp || !dead || !act)
        return h5Error("incomplete /quantization group (a per-tensor column is missing or short)");
    Handle order(H5Gopen2(g.get(), "order", H5P_DEFAULT), H5Gclose);
    for (hsize_t i = 0; i < n; ++i) {
        SessionTensorResult t;
        t.name = (*name)[i];
        t.format = (*format)[i];
        t.method = (*method)[i];
        t.mse = (*mse)[i];
        t.sqnrDb = (*sqnr)[i];
        t.outputErrorRelative = (*rel)[i];
        t.gptqLoss = (*loss)[i];
        t.rtnLoss = (*rtn)[i];
        t.damp = (*damp)[i];
        t.deadColumns = (*dead)[i];
        t.actOrder = (*act)[i] != 0;
        if (order.valid() && hasLink(order.get(), t.name.c_str())) {
            auto o = readDataset<std::int32_t>(order.get(), t.name.c_str(), H5T_NATIVE_INT32, 0);
            if (!o) return o.error();
            t.orderHead = std::move(o).value();
        }
        q.tensors.push_back(std::move(t));
    }
    s.quantization = std::move(q);
    return {};
}

Status writeEvaluationsGroup(hid_t root, const SessionData& s)
{
    if (s.evaluations.empty()) return {};
    Handle g = createGroup(root, "evaluations");
    if (!g.valid()) return h5Error("cannot create /evaluations");
    for (std::size_t i = 0; i < s.evaluations.size(); ++i) {
        const SessionEvaluation& e = s.evaluations[i];
        Handle h = createGroup(g.get(), std::to_string(i).c_str());
        QL_TRY_STATUS(writeAttr(h.get(), "layout", e.layout));
        QL_TRY_STATUS(writeAttr(h.get(), "text", e.text));
        QL_TRY_STATUS(writeAttr(h.get(), "protocol", e.protocol));
        QL_TRY_STATUS(writeAttr(h.get(), "device", e.device));
        QL_TRY_STATUS(writeAttr(h.get(), "created", e.created.empty() ? isoNow() : e.created));
        QL_TRY_STATUS(writeAttr(h.get(), "ctx", std::int64_t(e.ctx)));
        QL_TRY_STATUS(writeAttr(h.get(), "tokens", std::int64_t(e.tokens)));
        QL_TRY_STATUS(writeAttr(h.get(), "windows", std::int64_t(e.windows)));
        QL_TRY_STATUS(writeAttr(h.get(), "ppl", e.ppl));
        QL_TRY_STATUS(writeAttr(h.get(), "ppl_stderr", e.pplStdError));
        if (e.referencePpl) QL_TRY_STATUS(writeAttr(h.get(), "reference_ppl", *e.referencePpl));
        if (e.klMean) QL_TRY_STATUS(writeAttr(h.get(), "kl_mean", *e.klMean));
        if (e.klP99) QL_TRY_STATUS(writeAttr(h.get(), "kl_p99", *e.klP99));
        if (e.sameTop) QL_TRY_STATUS(writeAttr(h.get(), "same_top", *e.sameTop));
    }
    return {};
}

std::optional<double> optionalDouble(hid_t obj, const char* name)
{
    if (H5Aexists(obj, name) <= 0) return std::nullopt;
    auto v = readNumberAttr<double>(obj, name, H5T_NATIVE_DOUBLE);
    return v ? std::optional<double>(*v) : std::nullopt;
}

Status readEvaluationsGroup(hid_t root, SessionData& s)
{
    if (!hasLink(root, "evaluations")) return {};
    Handle g(H5Gopen2(root, "evaluations", H5P_DEFAULT), H5Gclose);
    for (int i = 0;; ++i) {
        const std::string key = std::to_string(i);
        if (!hasLink(g.get(), key.c_str())) break;
        Handle h(H5Gopen2(g.get(), key.c_str(), H5P_DEFAULT), H5Gclose);
        SessionEvaluation e;
        auto layout = readStringAttr(h.get(), "layout");
        auto text = readStringAttr(h.get(), "text");
        auto protocol = readStringAttr(h.get(), "protocol");
        auto device = readStringAttr(h.get(), "device");
        auto created = readStringAttr(h.get(), "created");
        auto ctx = readNumberAttr<std::int64_t>(h.get(), "ctx", H5T_NATIVE_INT64);
        auto tokens = readNumberAttr<std::int64_t>(h.get(), "tokens", H5T_NATIVE_INT64);
        auto windows = readNumberAttr<std::int64_t>(h.get(), "windows", H5T_NATIVE_INT64);
        auto ppl = readNumberAttr<double>(h.get(), "ppl", H5T_NATIVE_DOUBLE);
        auto se = readNumberAttr<double>(h.get(), "ppl_stderr", H5T_NATIVE_DOUBLE);
        if (!layout || !text || !protocol || !device || !created || !ctx || !tokens || !windows ||
            !ppl || !se)
            return h5Error("incomplete evaluation /evaluations/" + key);
        e.layout = *layout;
        e.text = *text;
        e.protocol = *protocol;
        e.device = *device;
        e.created = *created;
        e.ctx = *ctx;
        e.tokens = *tokens;
        e.windows = *windows;
        e.ppl = *ppl;
        e.pplStdError = *se;
        e.referencePpl = optionalDouble(h.get(), "reference_ppl");
        e.klMean = optionalDouble(h.get(), "kl_mean");
        e.klP99 = optionalDouble(h.get(), "kl_p99");
        e.sameTop = optionalDouble(h.get(), "same_top");
        s.evaluations.push_back(std::move(e));
    }
    return {};
}

Status writeViewGroup(hid_t root, const SessionData& s)
{
    if (s.view.empty()) return {};
    Handle g = createGroup(root, "view");
    if (!g.valid()) return h5Error("cannot create /view");
    std::vector<std::string> keys, values;
    for (const auto& [k, v] : s.view) {
        keys.push_back(k);
        values.push_back(v);
    }
    QL_TRY_STATUS(writeStrings(g.get(), "keys", keys));
    return writeStrings(g.get(), "values", values);
}

Status readViewGroup(hid_t root, SessionData& s)
{
    if (!hasLink(root, "view")) return {};
    Handle g(H5Gopen2(root, "view", H5P_DEFAULT), H5Gclose);
    auto keys = readStrings(g.get(), "keys", 0);
    if (!keys) return keys.error();
    auto values = readStrings(g.get(), "values", keys->size());
    if (!values) return values.error();
    for (std::size_t i = 0; i < keys->size(); ++i) s.view.emplace_back((*keys)[i], (*values)[i]);
    return {};
}

}  // namespace

const std::string* SessionData::viewValue(const std::string& key) const
{
    for (const auto& [k, v] : view)
        if (k == key) return &v;
    return nullptr;
}

SessionQuantization summarizeQuantization(const QuantizedModel& model)
{
    SessionQuantization q;
    q.layout = model.layout;
    q.seconds = model.seconds;
    for (const auto& t : model.tensors) {
        SessionTensorResult r;
        const TensorReport& rep = t.report;
        r.name = rep.plan.name;
        r.format = formatToString(rep.plan.format);
        r.method = quantMethodName(rep.plan.method);
        r.mse = rep.metrics.mse;
        r.sqnrDb = rep.metrics.sqnrDb;
        if (rep.outputError) r.outputErrorRelative = rep.outputError->relative;
        if (rep.gptq) {
            r.gptqLoss = rep.gptq->loss;
            r.rtnLoss = rep.gptq->rtnLoss;
            r.damp = rep.gptq->damp;
            r.deadColumns = rep.gptq->deadColumns;
            r.actOrder = rep.gptq->options.actOrder;
            r.orderHead = rep.gptq->orderHead;
        }
        q.tensors.push_back(std::move(r));
    }
    return q;
}

std::vector<std::string> describeSession(const SessionData& s)
{
    std::vector<std::string> out;
    char buf[512];
    out.push_back("version     " + std::to_string(s.fileVersion) +
                  (s.fileVersion < kSessionVersion
                       ? " (upgraded on save to " + std::to_string(kSessionVersion) + ")"
                       : std::string()));
    out.push_back("model       " + s.model.path + " (" + s.model.format + ", " +
                  s.model.architecture + ", " + std::to_string(s.model.parameters) +
                  " parameters, " + std::to_string(s.model.fileSize) + " bytes, hash " +
                  hashToHex(s.model.hash) + ")");
    if (s.calibration) {
        const auto& c = *s.calibration;
        std::snprintf(buf, sizeof buf, "calibration %zu probes, %lld tokens (%d x %d), hessian %s",
                      c.probes.size(), (long long)c.tokens, c.config.samples, c.config.seqLen,
                      hessianName(c.config.hessian));
        out.push_back(buf);
    } else {
        out.push_back("calibration none");
    }
    out.push_back("layout      " + (s.layout.empty() ? std::string("none") : s.layout));
    if (s.quantization) {
        int gptq = 0;
        for (const auto& t : s.quantization->tensors) gptq += std::isnan(t.gptqLoss) ? 0 : 1;
        out.push_back("quantized   " + s.quantization->layout + ": " +
                      std::to_string(s.quantization->tensors.size()) + " tensors, " +
                      std::to_string(gptq) + " by GPTQ");
        for (const auto& t : s.quantization->tensors)
            if (!std::isnan(t.gptqLoss)) {
                std::snprintf(buf, sizeof buf, "  gptq      %s %s loss %.4g (rtn %.4g) damp %.3g%s",
                              t.name.c_str(), t.format.c_str(), t.gptqLoss, t.rtnLoss, t.damp,
                              t.actOrder ? " act-order" : "");
                out.push_back(buf);
            }
    }
    for (const auto& e : s.evaluations) {
        std::snprintf(buf, sizeof buf, "evaluation  %s on %s (%s, ctx %lld): PPL %.4f +/- %.4f",
                      e.layout.empty() ? "unquantized" : e.layout.c_str(), e.text.c_str(),
                      e.protocol.c_str(), (long long)e.ctx, e.ppl, e.pplStdError);
        std::string line = buf;
        if (e.klMean) {
            std::snprintf(buf, sizeof buf, ", KL %.6f", *e.klMean);
            line += buf;
        }
        out.push_back(line);
    }
    out.push_back("view        " + std::to_string(s.view.size()) + " entries");
    for (const auto& [k, v] : s.view)
        out.push_back("  " + k + " = " + (v.size() > 60 ? v.substr(0, 57) + "..." : v));
    return out;
}

Result<ModelIdentity> identifyModel(const Model& model, const ProgressFn& progress)
{
    ModelIdentity id;
    id.path = model.path;
    id.format = modelFormatName(model.format);
    id.architecture = model.hparams.architecture;
    id.parameters = model.totalParameters();
    for (const auto& f : model.files) id.fileSize += f->size();
    auto h = hashPath(model.path, progress);
    if (!h) return h.error();
    id.hash = *h;
    return id;
}

Status checkModelIdentity(const ModelIdentity& stored, const ModelIdentity& current)
{
    if (stored.hash == current.hash && stored.fileSize == current.fileSize) return {};
    std::ostringstream msg;
    msg << "the model has changed since this session was saved: " << stored.path << " had "
        << stored.fileSize << " bytes (hash " << hashToHex(stored.hash) << "), " << current.path
        << " has " << current.fileSize << " bytes (hash " << hashToHex(current.hash)
        << "); calibration statistics may not match it";
    return makeError(ErrorCode::InvalidArgument, msg.str());
}

Status writeSession(const std::string& path, const SessionData& session, const ProgressFn& progress)
{
    std::lock_guard lock(g_hdf5Mutex);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    auto fail = [&](Error e) {
        std::remove(tmp.c_str());
        return e;
    };
    {
        Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
        if (!file.valid()) return makeError(ErrorCode::Io, "cannot create session file " + tmp);
        hid_t root = file.get();
        auto st = [&]() -> Status {
            QL_TRY_STATUS(writeAttr(root, "format", std::string("quantlens-session")));
            QL_TRY_STATUS(writeAttr(root, "version", std::int32_t(kSessionVersion)));
            QL_TRY_STATUS(
                writeAttr(root, "compatible_version", std::int32_t(kSessionCompatibleVersion)));
            QL_TRY_STATUS(writeAttr(root, "quantlens_version", std::string("0.1.0")));
            QL_TRY_STATUS(writeAttr(root, "created", isoNow()));
            Handle m = createGroup(root, "model");
            const ModelIdentity& id = session.model;
            QL_TRY_STATUS(writeAttr(m.get(), "path", id.path));
            QL_TRY_STATUS(writeAttr(m.get(), "format", id.format));
            QL_TRY_STATUS(writeAttr(m.get(), "architecture", id.architecture));
            QL_TRY_STATUS(writeAttr(m.get(), "file_size", std::uint64_t(id.fileSize)));
            QL_TRY_STATUS(writeAttr(m.get(), "hash", hashToHex(id.hash)));
            QL_TRY_STATUS(writeAttr(m.get(), "parameters", std::int64_t(id.parameters)));
            if (session.calibration) {
                const CalibrationResult& c = *session.calibration;
                Handle g = createGroup(root, "calibration");
                std::string files;
                for (const auto& f : c.config.textFiles) files += (files.empty() ? "" : "\n") + f;
                QL_TRY_STATUS(writeAttr(g.get(), "text_files", files));
                QL_TRY_STATUS(writeAttr(g.get(), "samples", std::int32_t(c.config.samples)));
                QL_TRY_STATUS(writeAttr(g.get(), "seq_len", std::int32_t(c.config.seqLen)));
                QL_TRY_STATUS(
                    writeAttr(g.get(), "histogram_bins", std::int32_t(c.config.histogramBins)));
                QL_TRY_STATUS(writeAttr(g.get(), "top_k", std::int32_t(c.config.topK)));
                QL_TRY_STATUS(writeAttr(g.get(), "seed", std::uint64_t(c.config.seed)));
                QL_TRY_STATUS(
                    writeAttr(g.get(), "consecutive", std::int32_t(c.config.consecutive)));
                QL_TRY_STATUS(
                    writeAttr(g.get(), "hessian", std::string(hessianName(c.config.hessian))));
                QL_TRY_STATUS(writeAttr(g.get(), "tokens", std::int64_t(c.tokens)));
                QL_TRY_STATUS(writeAttr(g.get(), "seconds", c.seconds));
                QL_TRY_STATUS(writeAttr(g.get(), "device", c.device));
                Handle probes = createGroup(g.get(), "probes");
                for (std::size_t i = 0; i < c.probes.size(); ++i) {
                    QL_TRY_STATUS(writeProbe(probes.get(), c.probes[i]));
                    if (!reportProgress(progress, double(i + 1) / c.probes.size(),
                                        "writing session"))
                        return makeError(ErrorCode::Cancelled, "writing the session was cancelled");
                }
            }
            QL_TRY_STATUS(writeLayoutGroup(root, session));
            QL_TRY_STATUS(writeQuantizationGroup(root, session));
            QL_TRY_STATUS(writeEvaluationsGroup(root, session));
            QL_TRY_STATUS(writeViewGroup(root, session));
            if (session.sensitivity) QL_TRY_STATUS(writeSensitivity(root, *session.sensitivity));
            return {};
        }();
        if (!st) return fail(st.error());
        if (H5Fflush(root, H5F_SCOPE_GLOBAL) < 0) return fail(h5Error("flush failed"));
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec)
        return fail(
            makeError(ErrorCode::Io, "cannot rename " + tmp + " to " + path + ": " + ec.message()));
    return {};
}

Result<SessionData> readSession(const std::string& path, const ProgressFn& progress)
{
    std::lock_guard lock(g_hdf5Mutex);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    if (!std::filesystem::exists(path)) return makeError(ErrorCode::Io, path + ": no such file");
    if (H5Fis_hdf5(path.c_str()) <= 0)
        return makeError(ErrorCode::Format, path + ": not an HDF5 file");
    Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!file.valid()) return makeError(ErrorCode::Format, path + ": cannot open as HDF5");
    hid_t root = file.get();
    auto format = readStringAttr(root, "format");
    if (!format || *format != "quantlens-session")
        return makeError(ErrorCode::Format, path + ": not a QuantLens session");
    auto version = readNumberAttr<std::int32_t>(root, "version", H5T_NATIVE_INT32);
    if (!version) return version.error();
    std::int32_t compatible = *version;
    if (H5Aexists(root, "compatible_version") > 0) {
        auto c = readNumberAttr<std::int32_t>(root, "compatible_version", H5T_NATIVE_INT32);
        if (!c) return c.error();
        compatible = *c;
    }
    if (compatible > kSessionVersion)
        return makeError(ErrorCode::Unsupported,
                         path + ": session version " + std::to_string(*version) +
                             " needs QuantLens's session reader " + std::to_string(compatible) +
                             " or later; this one is " + std::to_string(kSessionVersion));
    SessionData out;
    out.fileVersion = *version;
    {
        Handle m(H5Gopen2(root, "model", H5P_DEFAULT), H5Gclose);
        if (!m.valid()) return h5Error("missing group /model");
        auto p = readStringAttr(m.get(), "path");
        auto f = readStringAttr(m.get(), "format");
        auto a = readStringAttr(m.get(), "architecture");
        auto size = readNumberAttr<std::uint64_t>(m.get(), "file_size", H5T_NATIVE_UINT64);
        auto hash = readStringAttr(m.get(), "hash");
        auto params = readNumberAttr<std::int64_t>(m.get(), "parameters", H5T_NATIVE_INT64);
        if (!p || !f || !a || !size || !hash || !params) return h5Error("incomplete /model group");
        out.model = {*p, *f, *a, *size, std::strtoull(hash->c_str(), nullptr, 16), *params};
    }
    if (H5Lexists(root, "calibration", H5P_DEFAULT) > 0) {
        Handle g(H5Gopen2(root, "calibration", H5P_DEFAULT), H5Gclose);
        CalibrationResult c;
        auto files = readStringAttr(g.get(), "text_files");
        auto samples = readNumberAttr<std::int32_t>(g.get(), "samples", H5T_NATIVE_INT32);
        auto seqLen = readNumberAttr<std::int32_t>(g.get(), "seq_len", H5T_NATIVE_INT32);
        auto bins = readNumberAttr<std::int32_t>(g.get(), "histogram_bins", H5T_NATIVE_INT32);
        auto topK = readNumberAttr<std::int32_t>(g.get(), "top_k", H5T_NATIVE_INT32);
        auto seed = readNumberAttr<std::uint64_t>(g.get(), "seed", H5T_NATIVE_UINT64);
        auto consecutive = readNumberAttr<std::int32_t>(g.get(), "consecutive", H5T_NATIVE_INT32);
        auto hessian = readStringAttr(g.get(), "hessian");
        auto tokens = readNumberAttr<std::int64_t>(g.get(), "tokens", H5T_NATIVE_INT64);
        auto seconds = readNumberAttr<double>(g.get(), "seconds", H5T_NATIVE_DOUBLE);
        auto device = readStringAttr(g.get(), "device");
        if (!files || !samples || !seqLen || !bins || !topK || !seed || !consecutive || !hessian ||
            !tokens || !seconds || !device)
            return h5Error("incomplete /calibration group");
        std::istringstream lines(*files);
        for (std::string line; std::getline(lines, line);) c.config.textFiles.push_back(line);
        c.config.samples = *samples;
        c.config.seqLen = *seqLen;
        c.config.histogramBins = *bins;
        c.config.topK = *topK;
        c.config.seed = *seed;
        c.config.consecutive = *consecutive != 0;
        c.config.hessian = *hessian == "f64"   ? HessianPrecision::Float64
                           : *hessian == "f32" ? HessianPrecision::Float32
                                               : HessianPrecision::None;
        c.tokens = *tokens;
        c.seconds = *seconds;
        c.device = *device;
        Handle probes(H5Gopen2(g.get(), "probes", H5P_DEFAULT), H5Gclose);
        if (!probes.valid()) return h5Error("missing group /calibration/probes");
        H5G_info_t info{};
        H5Gget_info(probes.get(), &info);
        for (hsize_t i = 0; i < info.nlinks; ++i) {
            char name[256] = {};
            if (H5Lget_name_by_idx(probes.get(), ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, name,
                                   sizeof name, H5P_DEFAULT) < 0 &&
                H5Lget_name_by_idx(probes.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name,
                                   sizeof name, H5P_DEFAULT) < 0)
                return h5Error("cannot list probes");
            auto probe = readProbe(probes.get(), name, c.config.hessian, c.config.topK);
            if (!probe) return probe.error();
            c.probes.push_back(std::move(probe).value());
            if (!reportProgress(progress, double(i + 1) / info.nlinks, "reading session"))
                return makeError(ErrorCode::Cancelled, "reading the session was cancelled");
        }
        // Name order from HDF5 is lexicographic (blk.10 before blk.2): restore model order.
        std::sort(c.probes.begin(), c.probes.end(), [](const ProbeStats& a, const ProbeStats& b) {
            return a.block != b.block ? a.block < b.block : a.site < b.site;
        });
        out.calibration = std::move(c);
    }
    QL_TRY_STATUS(readLayoutGroup(root, out));
    QL_TRY_STATUS(readQuantizationGroup(root, out));
    QL_TRY_STATUS(readEvaluationsGroup(root, out));
    QL_TRY_STATUS(readViewGroup(root, out));
    if (H5Lexists(root, "sensitivity", H5P_DEFAULT) > 0) {
        auto t = readSensitivity(root);
        if (!t) return t.error();
        out.sensitivity = std::move(t).value();
    }
    return out;
}

}  // namespace ql
