// Test wrappers of the device ops (see ops.h). Each call allocates its own buffers, runs the
// runner's kernels on the shared context's stream and synchronises.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>

#include "attention.cuh"
#include "cuda_context.h"
#include "elementwise.cuh"
#include "forward_ops.h"
#include "norm.cuh"
#include "rope.cuh"

namespace ql::cuda::ops {
namespace {

Result<std::shared_ptr<CudaContext>> context()
{
    static std::mutex mutex;
    static std::shared_ptr<CudaContext> ctx;
    std::lock_guard<std::mutex> lock(mutex);
    if (!ctx) {
        int count = 0;
        cudaError_t err = cudaGetDeviceCount(&count);
        if (err != cudaSuccess || count == 0)
            return makeError(ErrorCode::Device,
                             std::string("no CUDA device: ") +
                                 (err != cudaSuccess ? cudaGetErrorString(err) : "none present"));
        auto c = CudaContext::create(0);
        if (!c) return c.error();
        ctx = std::move(c).value();
    }
    QL_TRY_STATUS(ctx->activate());
    return ctx;
}

// Device copy of host floats in `type`.
Result<DeviceTensor> put(const CudaContext& ctx, std::span<const float> x, DType type)
{
    auto staging = DeviceBuffer<float>::allocate(x.size(), nullptr, "test input");
    if (!staging) return staging.error();
    QL_TRY_STATUS(ctx.copyToDevice(staging->data(), x.data(), x.size() * sizeof(float)));
    auto t = DeviceTensor::allocate(type, x.size(), nullptr, "test input");
    if (!t) return t.error();
    launchFromF32(staging->data(), x.size(), t->data(), type, ctx.stream());
    QL_TRY_STATUS(CudaContext::checkLaunch("conversion"));
    QL_TRY_STATUS(ctx.synchronize());
    return t;
}

Result<DeviceBuffer<float>> putF32(const CudaContext& ctx, std::span<const float> x)
{
    auto b = DeviceBuffer<float>::allocate(x.size(), nullptr, "test input");
    if (!b) return b.error();
    QL_TRY_STATUS(ctx.copyToDevice(b->data(), x.data(), x.size() * sizeof(float)));
    return b;
}

Result<std::vector<float>> get(const CudaContext& ctx, const DeviceTensor& t)
{
    auto f = DeviceBuffer<float>::allocate(t.size(), nullptr, "test output");
    if (!f) return f.error();
    launchToF32(t.data(), t.type(), t.size(), f->data(), ctx.stream());
    QL_TRY_STATUS(CudaContext::checkLaunch("conversion"));
    QL_TRY_STATUS(ctx.synchronize());
    std::vector<float> out(t.size());
    QL_TRY_STATUS(ctx.copyToHost(out.data(), f->data(), out.size() * sizeof(float)));
    return out;
}

#define QL_OPS_GET(var, expr)           \
    auto var##_ = (expr);               \
    if (!var##_) return var##_.error(); \
    auto var = std::move(var##_).value();

}  // namespace

Status available()
{
    auto c = context();
    if (!c) return c.error();
    return {};
}

Result<std::vector<float>> rmsNorm(std::span<const float> x, std::int64_t rows,
                                   std::span<const float> weight, float eps, DType outType)
{
    QL_OPS_GET(ctx, context());
    const auto cols = std::int64_t(weight.size());
    if (std::int64_t(x.size()) != rows * cols)
        return makeError(ErrorCode::InvalidArgument, "rmsNorm: shape");
    QL_OPS_GET(dx, putF32(*ctx, x));
    QL_OPS_GET(dw, putF32(*ctx, weight));
    QL_OPS_GET(out, DeviceTensor::allocate(outType, x.size(), nullptr, "test output"));
    launchRmsNorm(dx.data(), rows, cols, dw.data(), eps, out.data(), outType, ctx->stream());
    QL_TRY_STATUS(CudaContext::checkLaunch("rmsnorm"));
    return get(*ctx, out);
}

Result<std::vector<float>> linear(std::span<const float> x, std::int64_t rows,
                                  std::span<const float> w, std::int64_t out,
                                  std::span<const float> bias, DType type)
{
    QL_OPS_GET(ctx, context());
    if (rows <= 0 || out <= 0 || x.size() % std::size_t(rows) != 0)
        return makeError(ErrorCode::InvalidArgument, "linear: shape");
    const std::int64_t in = std::int64_t(x.size()) / rows;
    if (std::int64_t(w.size()) != out * in || (!bias.empty() && std::int64_t(bias.size()) != out))
        return makeError(ErrorCode::InvalidArgument, "linear: shape");
    QL_OPS_GET(dx, put(*ctx, x, type));
    QL_OPS_GET(dw, put(*ctx, w, type));
    QL_OPS_GET(y, DeviceTensor::allocate(DType::F32, std::size_t(rows * out), nullptr, "y"));
    QL_TRY_STATUS(ql::cuda::linear(*ctx, dx.data(), type, in, dw.data(), rows, in, out, y.data(),
                                   DType::F32, out));
    if (!bias.empty()) {
        QL_OPS_GET(db, putF32(*ctx, bias));
        launchAddBias(y.data(), DType::F32, rows, out, out, db.data(), ctx->stream());
        QL_TRY_STATUS(CudaContext::checkLaunch("bias"));
    }
    return get(*ctx, y);
}

Result<std::vector<float>> rope(std::span<const float> x, std::int64_t rows, std::int64_t heads,
                                std::int64_t headDim, std::span<const double> invFreq,
                                double magnitude, bool halfSplit, std::int64_t seqLen, DType type)
{
    QL_OPS_GET(ctx, context());
    const std::size_t half = std::size_t(headDim / 2);
    if (std::int64_t(x.size()) != rows * heads * headDim || invFreq.size() != half || seqLen <= 0)
        return makeError(ErrorCode::InvalidArgument, "rope: shape");
    std::vector<float> c(std::size_t(seqLen) * half), s(c.size());
    for (std::int64_t t = 0; t < seqLen; ++t)
        for (std::size_t i = 0; i < half; ++i) {
            const double angle = double(t) * invFreq[i];
            c[std::size_t(t) * half + i] = float(std::cos(angle) * magnitude);
            s[std::size_t(t) * half + i] = float(std::sin(angle) * magnitude);
        }
    QL_OPS_GET(dc, putF32(*ctx, c));
    QL_OPS_GET(ds, putF32(*ctx, s));
    QL_OPS_GET(dx, put(*ctx, x, type));
    launchRope(dx.data(), type, rows, heads * headDim, int(heads), int(headDim), dc.data(),
               ds.data(), seqLen, halfSplit, ctx->stream());
    QL_TRY_STATUS(CudaContext::checkLaunch("rope"));
    return get(*ctx, dx);
}

Result<std::vector<float>> attention(std::span<const float> q, std::span<const float> k,
                                     std::span<const float> v, std::int64_t batch,
                                     std::int64_t seqLen, std::int64_t heads, std::int64_t kvHeads,
                                     std::int64_t headDim, DType type, Attention kernel)
{
    QL_OPS_GET(ctx, context());
    const std::int64_t rows = batch * seqLen, qDim = heads * headDim, kvDim = kvHeads * headDim;
    if (std::int64_t(q.size()) != rows * qDim || std::int64_t(k.size()) != rows * kvDim ||
        std::int64_t(v.size()) != rows * kvDim)
        return makeError(ErrorCode::InvalidArgument, "attention: shape");
    const std::int64_t ld = qDim + 2 * kvDim;
    std::vector<float> fused(std::size_t(rows * ld));
    for (std::int64_t r = 0; r < rows; ++r) {
        float* dst = fused.data() + r * ld;
        std::copy_n(q.data() + r * qDim, qDim, dst);
        std::copy_n(k.data() + r * kvDim, kvDim, dst + qDim);
        std::copy_n(v.data() + r * kvDim, kvDim, dst + qDim + kvDim);
    }
    QL_OPS_GET(dqkv, put(*ctx, fused, type));
    QL_OPS_GET(out, DeviceTensor::allocate(type, std::size_t(rows * qDim), nullptr, "out"));
    AttentionShape s;
    s.batch = batch;
    s.seqLen = seqLen;
    s.heads = heads;
    s.kvHeads = kvHeads;
    s.headDim = headDim;
    s.ld = ld;
    s.qOffset = 0;
    s.kOffset = qDim;
    s.vOffset = qDim + kvDim;
    s.ldOut = qDim;
    AttentionWorkspace ws(nullptr);
    const AttentionKernel k2 = kernel == Attention::Blas    ? AttentionKernel::Blas
                               : kernel == Attention::Flash ? AttentionKernel::Flash
                                                            : AttentionKernel::Auto;
    QL_TRY_STATUS(causalAttention(*ctx, ws, s, dqkv.data(), type, out.data(), k2));
    return get(*ctx, out);
}

Result<std::vector<float>> swiglu(std::span<const float> gate, std::span<const float> up,
                                  std::int64_t rows, std::int64_t cols, DType type)
{
    QL_OPS_GET(ctx, context());
    if (std::int64_t(gate.size()) != rows * cols || up.size() != gate.size())
        return makeError(ErrorCode::InvalidArgument, "swiglu: shape");
    // gate rows then up rows in one buffer: up of row r sits rows·cols further on.
    std::vector<float> both(gate.begin(), gate.end());
    both.insert(both.end(), up.begin(), up.end());
    QL_OPS_GET(din, put(*ctx, both, type));
    QL_OPS_GET(out, DeviceTensor::allocate(type, gate.size(), nullptr, "out"));
    launchSwiglu(din.data(), type, rows, cols, cols, rows * cols, out.data(), type, ctx->stream());
    QL_TRY_STATUS(CudaContext::checkLaunch("swiglu"));
    return get(*ctx, out);
}

Result<std::vector<float>> embedding(std::span<const float> table, std::int64_t dim,
                                     std::span<const std::int32_t> ids, DType tableType)
{
    QL_OPS_GET(ctx, context());
    const std::int64_t vocab = dim > 0 ? std::int64_t(table.size()) / dim : 0;
    for (std::int32_t id : ids)
        if (id < 0 || id >= vocab)
            return makeError(ErrorCode::InvalidArgument,
                             "token id " + std::to_string(id) + " is outside the vocabulary");
    QL_OPS_GET(dt, put(*ctx, table, tableType));
    QL_OPS_GET(dids, DeviceBuffer<std::int32_t>::allocate(ids.size(), nullptr, "ids"));
    QL_TRY_STATUS(ctx->copyToDevice(dids.data(), ids.data(), ids.size() * sizeof(std::int32_t)));
    QL_OPS_GET(out,
               DeviceTensor::allocate(DType::F32, ids.size() * std::size_t(dim), nullptr, "out"));
    launchEmbedding(dt.data(), tableType, dids.data(), std::int64_t(ids.size()), dim,
                    static_cast<float*>(out.data()), ctx->stream());
    QL_TRY_STATUS(CudaContext::checkLaunch("embedding"));
    return get(*ctx, out);
}

Result<std::vector<float>> roundTrip(std::span<const float> x, DType type)
{
    QL_OPS_GET(ctx, context());
    QL_OPS_GET(t, put(*ctx, x, type));
    return get(*ctx, t);
}

}  // namespace ql::cuda::ops
