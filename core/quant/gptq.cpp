// GPTQ on the CPU. The column loop works in double on a permuted copy of W (Eigen, column-major,
// so a column is contiguous); the format enters only through "units" and level tables:
//  * a unit is the run of columns whose parameters the codec fits together (the scale group, or
//    a llama.cpp block). When the loop first reaches one of its columns, the unit's current
//    weights (the block in progress already holds its in-block updates; columns beyond it get the
//    block's pending update computed for the occasion) go through the codec as a rows x len
//    sub-tensor, and its parameters are copied into the output tensor;
//  * a level group is the run of columns sharing one set of levels (a unit, or a k-quant
//    sub-block). Its table lists every code with the value the decoder gives it, sorted and
//    de-duplicated, built with the decoder's own float expressions, so rounding picks a value the
//    stored code reproduces exactly. Tables of a unit are freed once its last column is done.
// Codes are written into the output after the loop (llama.cpp levels into the block bytes whose
// headers were copied at fit time), and the whole tensor is decoded once to check it.
#include "quant/gptq.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "quant/fp_formats.h"
#include "quant/ggml_quantize.h"
#include "quant/nf4.h"
#include "quant/rtn.h"
#include "quant/uniform.h"
#include "util/pause_gate.h"
#include "util/serial_threads.h"

namespace ql {
namespace {

using Eigen::Index;
using Eigen::MatrixXd;

std::string lowered(std::string s)
{
    for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

bool parseBool(const std::string& text, bool& out)
{
    const std::string v = lowered(text);
    if (v == "true" || v == "1" || v == "yes" || v == "on") {
        out = true;
        return true;
    }
    if (v == "false" || v == "0" || v == "no" || v == "off") {
        out = false;
        return true;
    }
    return false;
}

std::string sci(double v)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// ------------------------------------------------------------------ format-specific pieces

bool ggmlHasOffset(TensorType t)
{
    return t == TensorType::Q4_1 || t == TensorType::Q5_1 || t == TensorType::Q2_K ||
           t == TensorType::Q4_K || t == TensorType::Q5_K;
}

// Weights sharing one set of levels.
std::int64_t levelGroupSize(const QuantFormat& f, std::int64_t cols)
{
    if (f.kind == QuantKind::Ggml) {
        switch (f.type) {
            case TensorType::Q2_K:
            case TensorType::Q3_K:
            case TensorType::Q6_K: return 16;
            default: return 32;
        }
    }
    return scaleGroupSize(f, cols);
}

// Codes per level group (before de-duplication).
int codeCount(const QuantFormat& f)
{
    switch (f.kind) {
        case QuantKind::Uniform: return 1 << f.bits;
        case QuantKind::NF4:
        case QuantKind::FP4: return 16;
        case QuantKind::FP8: return 256;
        case QuantKind::Ggml:
            switch (f.type) {
                case TensorType::Q8_0: return 256;
                case TensorType::Q2_K: return 4;
                case TensorType::Q3_K: return 8;
                case TensorType::Q5_0:
                case TensorType::Q5_1:
                case TensorType::Q5_K: return 32;
                case TensorType::Q6_K: return 64;
                default: return 16;
            }
        case QuantKind::Float: break;
    }
    return 0;
}

std::size_t ggmlRowBytes(const QuantizedTensor& q)
{
    const auto& t = traits(q.format.type);
    return std::size_t(q.cols / t.blockSize) * t.blockBytes;
}

// Every code of the level group holding (row, col) of q with the value the decoder gives it, in
// the decoder's float arithmetic. Returns how many were written (non-finite values are skipped).
int listLevels(const QuantizedTensor& q, std::int64_t row, std::int64_t col, float* values,
               std::int16_t* codes)
{
    int n = 0;
    auto put = [&](float v, int code) {
        if (!std::isfinite(v)) return;
        values[n] = v;
        codes[n] = std::int16_t(code);
        ++n;
    };
    const QuantFormat& f = q.format;
    switch (f.kind) {
        case QuantKind::Uniform: {
            const std::int64_t gi = q.scaleIndex(row, col);
            UniformGrid g;
            g.scale = q.scales[gi];
            g.zero = f.symmetric ? 0 : q.zeroPoints[gi];
            g.qmin = f.symmetric ? -(1 << (f.bits - 1)) : 0;
            g.qmax = f.symmetric ? (1 << (f.bits - 1)) - 1 : (1 << f.bits) - 1;
            const int offset = f.symmetric ? 1 << (f.bits - 1) : 0;
            for (int c = g.qmin; c <= g.qmax; ++c) put(g.dequantize(c), c + offset);
            break;
        }
        case QuantKind::NF4: {
            const float s = q.scales[q.scaleIndex(row, col)];
            const auto& levels = nf4Levels();
            for (int c = 0; c < 16; ++c) put(levels[c] * s, c);
            break;
        }
        case QuantKind::FP4: {
            const float s = q.scales[q.scaleIndex(row, col)];
            for (int c = 0; c < 16; ++c) put(e2m1ToFloat(std::uint8_t(c)) * s, c);
            break;
        }
        case QuantKind::FP8: {
            const float s = q.scales[q.scaleIndex(row, col)];
            for (int c = 0; c < 256; ++c) {
                const float v = f.fp8 == Fp8Variant::E4M3 ? fp8E4M3ToFloat(std::uint8_t(c))
                                                          : fp8E5M2ToFloat(std::uint8_t(c));
                if (std::isfinite(v)) put(v * s, c);
            }
            break;
        }
        case QuantKind::Ggml: {
            const auto& t = traits(f.type);
            const std::uint8_t* block = q.blocks.data() + std::size_t(row) * ggmlRowBytes(q) +
                                        (col / t.blockSize) * t.blockBytes;
            const GgmlWeightCode wc = ggmlWeightCode(
                f.type, std::span<const std::uint8_t>(block, t.blockBytes), int(col % t.blockSize));
            const bool offset = ggmlHasOffset(f.type);
            for (int l = wc.levelMin; l <= wc.levelMax; ++l)
                put(offset ? wc.scale * float(l) + wc.offset : wc.scale * float(l), l);
            break;
        }
        case QuantKind::Float: break;
    }
    return n;
}

// Writes llama.cpp level `level` of element e into a block: the inverse of ggmlWeightCode.
void setGgmlLevel(TensorType type, std::uint8_t* y, int e, int level)
{
    auto setBits = [](std::uint8_t& byte, int shift, int width, int v) {
        const int mask = ((1 << width) - 1) << shift;
        byte = std::uint8_t((byte & ~mask) | ((v << shift) & mask));
    };
    switch (type) {
        case TensorType::Q8_0: y[2 + e] = std::uint8_t(std::int8_t(level)); return;
        case TensorType::Q4_0: setBits(y[2 + e % 16], 4 * (e / 16), 4, level + 8); return;
        case TensorType::Q4_1: setBits(y[4 + e % 16], 4 * (e / 16), 4, level); return;
        case TensorType::Q5_0:
        case TensorType::Q5_1: {
            const bool q51 = type == TensorType::Q5_1;
            const int u = q51 ? level : level + 16;
            setBits(y[(q51 ? 8 : 6) + e % 16], 4 * (e / 16), 4, u & 0xF);
            setBits(y[(q51 ? 4 : 2) + e / 8], e % 8, 1, (u >> 4) & 1);
            return;
        }
        case TensorType::Q2_K:
            setBits(y[16 + (e / 128) * 32 + e % 32], 2 * ((e % 128) / 32), 2, level);
            return;
        case TensorType::Q3_K: {
            const int u = level + 4;
            setBits(y[32 + (e / 128) * 32 + e % 32], 2 * ((e % 128) / 32), 2, u & 3);
            setBits(y[e % 32], e / 32, 1, (u >> 2) & 1);
            return;
        }
        case TensorType::Q4_K:
            setBits(y[16 + (e / 64) * 32 + e % 32], 4 * ((e % 64) / 32), 4, level);
            return;
        case TensorType::Q5_K:
            setBits(y[48 + (e / 64) * 32 + e % 32], 4 * ((e % 64) / 32), 4, level & 0xF);
            setBits(y[16 + e % 32], e / 32, 1, (level >> 4) & 1);
            return;
        case TensorType::Q6_K: {
            const int u = level + 32;
            const int n = e / 128, g = (e % 128) / 32, l = e % 32;
            setBits(y[n * 64 + l + 32 * (g & 1)], 4 * (g >> 1), 4, u & 0xF);
            setBits(y[128 + n * 32 + l], 2 * g, 2, u >> 4);
            return;
        }
        default: return;
    }
}

void writeCode(QuantizedTensor& q, std::int64_t row, std::int64_t col, int code)
{
    if (q.format.kind == QuantKind::Ggml) {
        const auto& t = traits(q.format.type);
        std::uint8_t* block = q.blocks.data() + std::size_t(row) * ggmlRowBytes(q) +
                              (col / t.blockSize) * t.blockBytes;
        setGgmlLevel(q.format.type, block, int(col % t.blockSize), code);
    } else {
        q.codes[std::size_t(row * q.cols + col)] = std::uint8_t(code);
    }
}

// Fits the parameters of columns [c0, c0 + len) from x (rows x len, row-major) with the format's
// codec, keeping the tensor-wide constants of `whole` (prepared on the original weights).
Result<QuantizedTensor> fitUnit(const float* x, std::int64_t rows, std::int64_t c0,
                                std::int64_t len, const QuantizedTensor& whole,
                                const float* importance, int threads)
{
    QuantizedTensor sub;
    sub.format = whole.format;
    sub.rows = rows;
    sub.cols = len;
    const FormatCodec& codec = codecFor(sub.format.kind);
    const float* imp = importance ? importance + c0 : nullptr;
    QL_TRY_STATUS(codec.prepare(x, imp, sub));
    if (sub.format.kind == QuantKind::FP4) sub.globalScale = whole.globalScale;
    const std::int64_t chunk = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, len));
    QL_TRY_STATUS(parallelForRows(
        rows, chunk,
        [&](std::int64_t r0, std::int64_t r1) { codec.encodeRows(x, imp, r0, r1, sub); }, {}, {},
        threads));
    if (sub.format.kind == QuantKind::NF4 && sub.format.doubleQuant) {
        // The absmax codes use the tensor's mean and second-level scales (nf4.cpp's prepare()).
        const auto& map = dynamicMap8();
        const std::int64_t gs = sub.groupSize(), gprSub = sub.groupsPerRow();
        const std::int64_t gprWhole = whole.groupsPerRow();
        for (std::int64_t r = 0; r < rows; ++r) {
            for (std::int64_t g = 0; g < gprSub; ++g) {
                float absmax = 0;
                for (std::int64_t i = g * gs; i < std::min(len, (g + 1) * gs); ++i)
                    absmax = std::max(absmax, std::fabs(x[r * len + i]));
                const std::int64_t b = r * gprWhole + c0 / gs + g;
                const float a2 = whole.scales2[std::size_t(b / kNf4DoubleQuantBlock)];
                const float inv = a2 > 0 ? 1.0f / a2 : 0.0f;
                const int code = dynamicMap8Index((absmax - whole.scaleOffset) * inv);
                sub.scaleCodes[std::size_t(r * gprSub + g)] = std::uint8_t(code);
                sub.scales[std::size_t(r * gprSub + g)] = map[code] * a2 + whole.scaleOffset;
            }
        }
    }
    return sub;
}

// Copies the fitted parameters of a unit starting at column c0 into the output tensor.
void copyUnit(const QuantizedTensor& sub, std::int64_t c0, QuantizedTensor& q)
{
    if (q.format.kind == QuantKind::Ggml) {
        const auto& t = traits(q.format.type);
        const std::size_t subBytes = ggmlRowBytes(sub), rowBytes = ggmlRowBytes(q);
        const std::size_t at = std::size_t(c0 / t.blockSize) * t.blockBytes;
        for (std::int64_t r = 0; r < q.rows; ++r)
            std::memcpy(q.blocks.data() + std::size_t(r) * rowBytes + at,
                        sub.blocks.data() + std::size_t(r) * subBytes, subBytes);
        return;
    }
    const std::int64_t gs = sub.groupSize();
    for (std::int64_t r = 0; r < q.rows; ++r) {
        for (std::int64_t j = 0; j < sub.cols; j += gs) {
            const auto si = std::size_t(sub.scaleIndex(r, j));
            const auto di = std::size_t(q.scaleIndex(r, c0 + j));
            q.scales[di] = sub.scales[si];
            if (!q.zeroPoints.empty()) q.zeroPoints[di] = sub.zeroPoints[si];
            if (!q.scaleCodes.empty() && !sub.scaleCodes.empty())
                q.scaleCodes[di] = sub.scaleCodes[si];
        }
    }
}

// A unit's level tables: for each row and level group, `count` (value, code) pairs ascending.
struct Unit {
    std::int64_t c0 = 0, len = 0;
    std::int64_t remaining = 0;  // columns not yet quantized
    bool fitted = false;
    std::int64_t groups = 0;  // level groups in the unit
    std::vector<float> values;
    std::vector<std::int16_t> codes;
    std::vector<std::int32_t> counts;
};

void buildTables(const QuantizedTensor& sub, std::int64_t lgSize, int slot, Unit& u)
{
    u.groups = (u.len + lgSize - 1) / lgSize;
    const std::size_t tables = std::size_t(sub.rows * u.groups);
    u.values.assign(tables * slot, 0.0f);
    u.codes.assign(tables * slot, 0);
    u.counts.assign(tables, 0);
    std::vector<float> v(slot);
    std::vector<std::int16_t> c(slot);
    std::vector<int> idx(slot);
    for (std::int64_t r = 0; r < sub.rows; ++r) {
        for (std::int64_t g = 0; g < u.groups; ++g) {
            const int n = listLevels(sub, r, g * lgSize, v.data(), c.data());
            std::iota(idx.begin(), idx.begin() + n, 0);
            std::sort(idx.begin(), idx.begin() + n,
                      [&](int a, int b) { return v[a] < v[b] || (v[a] == v[b] && c[a] < c[b]); });
            const std::size_t t = std::size_t(r * u.groups + g);
            float* tv = u.values.data() + t * slot;
            std::int16_t* tc = u.codes.data() + t * slot;
            int m = 0;
            for (int k = 0; k < n; ++k) {
                if (m > 0 && tv[m - 1] == v[idx[k]]) continue;
                tv[m] = v[idx[k]];
                tc[m] = c[idx[k]];
                ++m;
            }
            u.counts[t] = m;
        }
    }
}

// Index of the value nearest to x in ascending values[0..n) (ties to the lower value).
int nearest(const float* values, int n, double x)
{
    const float* it = std::lower_bound(values, values + n, x,
                                       [](float v, double target) { return double(v) < target; });
    const int hi = int(it - values);
    if (hi == 0) return 0;
    if (hi == n) return n - 1;
    return x - double(values[hi - 1]) <= double(values[hi]) - x ? hi - 1 : hi;
}

// tr(dW A dW^T) for dW rows x cols (column-major) and symmetric A.
double quadraticForm(const MatrixXd& dW, const MatrixXd& A)
{
    return (dW * A).cwiseProduct(dW).sum();
}

}  // namespace

Result<GptqOptions> parseGptqOptions(
    std::span<const std::pair<std::string, std::string>> methodOptions)
{
    GptqOptions o;
    for (const auto& [key, value] : methodOptions) {
        const std::string k = lowered(key);
        if (k == "damp") {
            char* end = nullptr;
            const double d = std::strtod(value.c_str(), &end);
            if (value.empty() || *end || !(d >= 0) || !(d < 1e6))
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq option damp=" + value +
                                     ": needs a number >= 0 (a fraction of the mean Hessian "
                                     "diagonal, e.g. 0.01)");
            o.damp = d;
        } else if (k == "block") {
            char* end = nullptr;
            const long long b = std::strtoll(value.c_str(), &end, 10);
            if (value.empty() || *end || b < 1 || b > (1 << 20))
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq option block=" + value + ": needs a whole number >= 1");
            o.blockSize = b;
        } else if (k == "actorder" || k == "act_order") {
            if (!parseBool(value, o.actOrder))
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq option " + key + "=" + value + ": needs true or false");
        } else if (k == "static" || k == "static_groups") {
            if (!parseBool(value, o.staticGroups))
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq option " + key + "=" + value + ": needs true or false");
        } else {
            return makeError(
                ErrorCode::InvalidArgument,
                "unknown gptq option '" + key + "' (gptq takes damp=F, block=N, actorder, static)");
        }
    }
    return o;
}

std::string gptqOptionsText(const GptqOptions& o)
{
    std::string s = "damp=" + sci(o.damp) + " block=" + std::to_string(o.blockSize);
    if (o.actOrder) s += " actorder";
    if (o.staticGroups) s += " static";
    return s;
}

Result<GptqResult> quantizeGptq(const float* w, std::int64_t rows, std::int64_t cols,
                                std::span<const double> hessian, const QuantFormat& format,
                                const GptqOptions& options, const float* importance,
                                const ProgressFn& progress, const GptqMonitor& monitor)
{
    const auto start = std::chrono::steady_clock::now();
    if (!w || rows <= 0 || cols <= 0)
        return makeError(ErrorCode::InvalidArgument, "gptq: no weights given");
    if (std::int64_t(hessian.size()) != cols * cols)
        return makeError(ErrorCode::InvalidArgument,
                         "gptq: the Hessian has " + std::to_string(hessian.size()) + " values, a " +
                             std::to_string(cols) + " x " + std::to_string(cols) +
                             " matrix needs " + std::to_string(cols * cols));
    if (format.kind == QuantKind::Float)
        return makeError(
            ErrorCode::InvalidArgument,
            "gptq needs a quantized format; " + formatToString(format) + " is a float format");
    QL_TRY_STATUS(checkFormatFits(format, rows, cols));
    if (!(options.blockSize >= 1) || !(options.damp >= 0))
        return makeError(ErrorCode::InvalidArgument, "gptq: bad options");
    for (std::int64_t i = 0; i < rows * cols; ++i)
        if (!std::isfinite(w[i]))
            return makeError(ErrorCode::InvalidArgument,
                             "gptq: weight (" + std::to_string(i / cols) + ", " +
                                 std::to_string(i % cols) + ") is not finite");
    for (std::int64_t i = 0; i < cols * cols; ++i)
        if (!std::isfinite(hessian[i]))
            return makeError(ErrorCode::InvalidArgument, "gptq: the Hessian is not finite");
    if (!reportProgress(progress, 0.0, "gptq"))
        return makeError(ErrorCode::Cancelled, "gptq cancelled");

    // A small layer (rows x cols^2 below kSerialMacs) is faster on this thread alone.
    const SerialThreads serial(double(rows) * double(cols) * double(cols) < kSerialMacs);
    try {
        GptqResult out;
        const Eigen::Map<
            const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>
            H0(hessian.data(), cols, cols);

        // Dead columns: the input is always zero, so the weight never matters.
        MatrixXd H = H0;
        std::vector<bool> dead(std::size_t(cols), false);
        for (Index i = 0; i < cols; ++i) {
            if (H(i, i) < 0)
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq: Hessian diagonal entry " + std::to_string(i) +
                                     " is negative (not a sum of x x^T)");
            if (H(i, i) == 0) {
                dead[std::size_t(i)] = true;
                H(i, i) = 1;
                ++out.deadColumns;
            }
        }
        std::vector<float> w0(w, w + rows * cols);  // W after zeroing dead columns, row-major
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c)
                if (dead[std::size_t(c)]) w0[std::size_t(r * cols + c)] = 0.0f;

        // Processing order.
        std::vector<std::int32_t> perm(static_cast<std::size_t>(cols));
        std::iota(perm.begin(), perm.end(), 0);
        if (options.actOrder)
            std::stable_sort(perm.begin(), perm.end(),
                             [&](std::int32_t a, std::int32_t b) { return H(a, a) > H(b, b); });
        std::vector<std::int64_t> pos(static_cast<std::size_t>(cols));
        for (std::int64_t p = 0; p < cols; ++p) pos[std::size_t(perm[std::size_t(p)])] = p;
        const std::int64_t blockCount = (cols + options.blockSize - 1) / options.blockSize;
        if (monitor.observer) {
            GptqLayerStart e;
            e.tensor = monitor.tensor;
            e.rows = rows;
            e.cols = cols;
            e.format = formatToString(format);
            e.hessianDiagonal.resize(std::size_t(cols));
            for (Index i = 0; i < cols; ++i) e.hessianDiagonal[std::size_t(i)] = H0(i, i);
            e.order = perm;
            e.actOrder = options.actOrder;
            e.damp = options.damp;
            e.blockSize = options.blockSize;
            e.deadColumns = out.deadColumns;
            monitor.observer->layerStarted(e);
        }

        // U: upper Cholesky factor of (P^T H P + damp I)^-1, raising damp until both
        // factorizations succeed.
        const double meanDiag = H.diagonal().mean();
        double frac = options.damp;
        MatrixXd U;
        for (int attempt = 0;; ++attempt) {
            const double damp = frac * meanDiag;
            MatrixXd M(cols, cols);
            for (Index j = 0; j < cols; ++j)
                for (Index i = 0; i < cols; ++i) M(i, j) = H(perm[i], perm[j]);
            M.diagonal().array() += damp;
            std::string failure;
            Eigen::LLT<Eigen::Ref<MatrixXd>> llt(M);
            if (llt.info() != Eigen::Success) {
                failure = "H + damp I is not positive definite";
            } else {
                MatrixXd inv = MatrixXd::Identity(cols, cols);
                llt.solveInPlace(inv);
                Eigen::LLT<Eigen::Ref<MatrixXd>> llt2(inv);
                if (llt2.info() != Eigen::Success) {
                    failure = "its inverse is not positive definite";
                } else {
                    U = MatrixXd(inv.triangularView<Eigen::Lower>()).transpose();
                    if (!U.allFinite() || !(U.diagonal().minCoeff() > 0))
                        failure = "the factor is not finite";
                }
            }
            if (failure.empty()) {
                out.damp = frac;
                out.dampAbsolute = damp;
                break;
            }
            const double next = frac > 0 ? frac * 10 : 1e-4;
            if (attempt >= 12 || next > 1e6)
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq: the Hessian cannot be factorized even with damp " +
                                     sci(frac) + " x mean diagonal (" + failure + ")");
            out.dampRaises.push_back("Cholesky failed at damp=" + sci(frac) + " (" + failure +
                                     "); raised to damp=" + sci(next));
            if (monitor.observer)
                monitor.observer->dampRaised({monitor.tensor, frac, next, out.dampRaises.back()});
            frac = next;
        }
        if (!reportProgress(progress, 0.05, "gptq"))
            return makeError(ErrorCode::Cancelled, "gptq cancelled");

        // The output tensor, with its tensor-wide constants from the original weights.
        QuantizedTensor q;
        q.format = format;
        q.rows = rows;
        q.cols = cols;
        const FormatCodec& codec = codecFor(format.kind);
        QL_TRY_STATUS(codec.prepare(w0.data(), importance, q));

        const std::int64_t unitLen = scaleGroupSize(format, cols);
        const std::int64_t lgSize = std::min(levelGroupSize(format, cols), unitLen);
        const int slot = codeCount(format);
        const std::int64_t unitCount = (cols + unitLen - 1) / unitLen;
        std::vector<Unit> units(static_cast<std::size_t>(unitCount));
        for (std::int64_t u = 0; u < unitCount; ++u) {
            units[std::size_t(u)].c0 = u * unitLen;
            units[std::size_t(u)].len = std::min(unitLen, cols - u * unitLen);
            units[std::size_t(u)].remaining = units[std::size_t(u)].len;
        }
        out.groupIndex.resize(std::size_t(cols));
        for (std::int64_t c = 0; c < cols; ++c)
            out.groupIndex[std::size_t(c)] = std::int32_t(c / unitLen);

        // W in processing order, double, column-major.
        MatrixXd W(rows, cols);
        for (Index p = 0; p < cols; ++p)
            for (Index r = 0; r < rows; ++r) W(r, p) = w0[std::size_t(r * cols + perm[p])];

        // Fitting a unit on its current weights; `done` columns of the block starting at i1 have
        // been quantized (their pending update to columns beyond i2 is Err(:, 0:done)).
        std::vector<float> buf;
        MatrixXd Err;
        auto fit = [&](Unit& u, Index i1, Index i2, Index done) -> Status {
            buf.resize(std::size_t(rows * u.len));
            Eigen::VectorXd col(rows);
            for (std::int64_t j = 0; j < u.len; ++j) {
                const Index p = pos[std::size_t(u.c0 + j)];
                col = W.col(p);
                if (p >= i2 && done > 0) col -= Err.leftCols(done) * U.block(i1, p, done, 1);
                for (Index r = 0; r < rows; ++r) buf[std::size_t(r * u.len + j)] = float(col(r));
            }
            auto sub = fitUnit(buf.data(), rows, u.c0, u.len, q, importance, options.threads);
            if (!sub) return sub.error();
            copyUnit(*sub, u.c0, q);
            buildTables(*sub, lgSize, slot, u);
            u.fitted = true;
            return {};
        };
        if (options.staticGroups)
            for (Unit& u : units) QL_TRY_STATUS(fit(u, 0, 0, 0));

        std::vector<float> Q(static_cast<std::size_t>(rows * cols));
        std::vector<std::int16_t> codes(static_cast<std::size_t>(rows * cols));
        double loss = 0;
        const Index bs = Index(options.blockSize);
        for (Index i1 = 0; i1 < cols; i1 += bs) {
            const Index i2 = std::min<Index>(i1 + bs, cols);
            const Index count = i2 - i1;
            Err.setZero(rows, count);
            for (Index i = 0; i < count; ++i) {
                const Index p = i1 + i;
                const std::int64_t c = perm[p];
                Unit& u = units[std::size_t(c / unitLen)];
                if (!u.fitted) QL_TRY_STATUS(fit(u, i1, i2, i));
                const std::int64_t g = (c - u.c0) / lgSize;
                const double d = U(p, p);
                for (Index r = 0; r < rows; ++r) {
                    const std::size_t t = std::size_t(r * u.groups + g);
                    const float* tv = u.values.data() + t * slot;
                    const int n = u.counts[t];
                    if (n == 0)
                        return makeError(ErrorCode::InvalidArgument,
                                         "gptq: the " + formatToString(format) + " group of row " +
                                             std::to_string(r) + ", column " + std::to_string(c) +
                                             " has no finite value (weights out of range)");
                    const double x = W(r, p);
                    const int k = nearest(tv, n, x);
                    Q[std::size_t(r * cols + c)] = tv[k];
                    codes[std::size_t(r * cols + c)] = u.codes[t * slot + k];
                    const double e = (x - double(tv[k])) / d;
                    Err(r, i) = e;
                    loss += e * e;
                }
                if (p + 1 < i2)
                    W.middleCols(p + 1, i2 - p - 1).noalias() -=
                        Err.col(i) * U.row(p).segment(p + 1, i2 - p - 1);
                if (--u.remaining == 0) {
                    u.values = {};
                    u.codes = {};
                    u.counts = {};
                }
            }
            if (i2 < cols)
                W.rightCols(cols - i2).noalias() -= Err * U.block(i1, i2, count, cols - i2);
            const double fraction = 0.05 + 0.85 * double(i2) / double(cols);
            if (!reportProgress(progress, fraction, "gptq"))
                return makeError(ErrorCode::Cancelled, "gptq cancelled");
            if (monitor.observer)
                monitor.observer->layerProgress({monitor.tensor, i1 / bs, std::int64_t(blockCount),
                                                 std::int64_t(i2), cols,
                                                 double(i2) / double(cols)});
            if (monitor.gate && i2 < cols &&
                !monitor.gate->pass([&] { return reportProgress(progress, fraction, "paused"); }))
                return makeError(ErrorCode::Cancelled, "gptq cancelled");
        }

        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c)
                writeCode(q, r, c, codes[std::size_t(r * cols + c)]);

        // The stored tensor must decode to exactly the values the loop chose.
        std::vector<float> decoded(static_cast<std::size_t>(rows * cols));
        codec.decodeRows(q, 0, rows, decoded.data());
        for (std::size_t i = 0; i < decoded.size(); ++i)
            if (std::bit_cast<std::uint32_t>(decoded[i]) != std::bit_cast<std::uint32_t>(Q[i]))
                return makeError(ErrorCode::InvalidArgument,
                                 "gptq: internal error: the encoded " + formatToString(format) +
                                     " tensor decodes weight (" + std::to_string(i / cols) + ", " +
                                     std::to_string(i % cols) + ") to " +
                                     std::to_string(decoded[i]) + ", not " + std::to_string(Q[i]));

        // RTN in the same format, measured on the same objective.
        auto rtn = quantizeRtn(w, rows, cols, format, importance, {}, options.threads);
        if (!rtn) return rtn.error();
        auto rtnWeights = rtn->dequantize();
        if (!rtnWeights) return rtnWeights.error();
        MatrixXd dR(rows, cols);
        for (Index c = 0; c < cols; ++c)
            for (Index r = 0; r < rows; ++r) {
                const std::size_t i = std::size_t(r * cols + c);
                dR(r, c) = dead[std::size_t(c)] ? 0.0 : double((*rtnWeights)[i]) - w0[i];
            }
        out.loss = loss;
        out.rtnLoss = quadraticForm(dR, H) + out.dampAbsolute * dR.squaredNorm();
        auto err = hessianWeightedError({w, std::size_t(rows * cols)}, Q, rows, cols, hessian);
        if (!err) return err.error();
        out.error = *err;
        auto rtnErr =
            hessianWeightedError({w, std::size_t(rows * cols)}, *rtnWeights, rows, cols, hessian);
        if (!rtnErr) return rtnErr.error();
        out.rtnError = *rtnErr;

        out.order = std::move(perm);
        out.quantized = std::move(q);
        out.weights = std::move(Q);
        out.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (monitor.observer) monitor.observer->layerFinished(gptqLayerDone(monitor.tensor, out));
        (void)reportProgress(progress, 1.0, "gptq");
        return out;
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "gptq: out of memory for a " +
                                                     std::to_string(rows) + " x " +
                                                     std::to_string(cols) + " tensor");
    }
}

GptqLayerDone gptqLayerDone(const std::string& tensor, const GptqResult& r)
{
    GptqLayerDone e;
    e.tensor = tensor;
    e.loss = r.loss;
    e.rtnLoss = r.rtnLoss;
    e.error = r.error;
    e.rtnError = r.rtnError;
    e.damp = r.damp;
    e.dampRaises = std::int64_t(r.dampRaises.size());
    e.deadColumns = r.deadColumns;
    e.seconds = r.seconds;
    return e;
}

}  // namespace ql
