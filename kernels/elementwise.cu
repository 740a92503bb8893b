// Element-wise kernels: grid-stride loops, float arithmetic, storage type by template.
#include <algorithm>

#include "device_math.cuh"
#include "elementwise.cuh"

namespace ql::cuda {
namespace {

unsigned gridFor(std::int64_t n, int threads)
{
    return unsigned(std::clamp<std::int64_t>((n + threads - 1) / threads, 1, 65535 * 8));
}

#define QL_GRID_STRIDE(i, n)                                                            \
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < (n); \
         i += std::int64_t(gridDim.x) * blockDim.x)

template <class T>
__global__ void embeddingKernel(const T* __restrict__ table, const std::int32_t* __restrict__ ids,
                                std::int64_t rows, std::int64_t dim, float* __restrict__ out)
{
    QL_GRID_STRIDE(i, rows * dim)
    {
        const std::int64_t r = i / dim, c = i % dim;
        out[i] = device::toFloat(table[std::int64_t(ids[r]) * dim + c]);
    }
}

template <class In, class Out>
__global__ void swigluKernel(const In* __restrict__ in, std::int64_t rows, std::int64_t cols,
                             std::int64_t ldIn, std::int64_t upOffset, Out* __restrict__ out)
{
    QL_GRID_STRIDE(i, rows * cols)
    {
        const std::int64_t r = i / cols, c = i % cols;
        const float g = device::toFloat(in[r * ldIn + c]);
        const float u = device::toFloat(in[r * ldIn + upOffset + c]);
        out[i] = device::fromFloat<Out>(g / (1.0f + expf(-g)) * u);
    }
}

template <class T>
__global__ void addBiasKernel(T* __restrict__ x, std::int64_t rows, std::int64_t cols,
                              std::int64_t ld, const float* __restrict__ bias)
{
    QL_GRID_STRIDE(i, rows * cols)
    {
        const std::int64_t r = i / cols, c = i % cols;
        T* p = x + r * ld + c;
        *p = device::fromFloat<T>(device::toFloat(*p) + bias[c]);
    }
}

template <class In, class Out>
__global__ void convertKernel(const In* __restrict__ in, std::int64_t n, Out* __restrict__ out)
{
    QL_GRID_STRIDE(i, n)
    {
        out[i] = device::fromFloat<Out>(device::toFloat(in[i]));
    }
}

}  // namespace

void launchEmbedding(const void* table, DType tableType, const std::int32_t* ids, std::int64_t rows,
                     std::int64_t dim, float* out, cudaStream_t stream)
{
    if (rows * dim <= 0) return;
    const unsigned grid = gridFor(rows * dim, 256);
    if (tableType == DType::F32)
        embeddingKernel<<<grid, 256, 0, stream>>>(static_cast<const float*>(table), ids, rows, dim,
                                                  out);
    else
        embeddingKernel<<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(table), ids,
                                                  rows, dim, out);
}

void launchSwiglu(const void* in, DType inType, std::int64_t rows, std::int64_t cols,
                  std::int64_t ldIn, std::int64_t upOffset, void* out, DType outType,
                  cudaStream_t stream)
{
    if (rows * cols <= 0) return;
    const unsigned grid = gridFor(rows * cols, 256);
    if (inType == DType::F32 && outType == DType::F32)
        swigluKernel<<<grid, 256, 0, stream>>>(static_cast<const float*>(in), rows, cols, ldIn,
                                               upOffset, static_cast<float*>(out));
    else if (inType == DType::BF16 && outType == DType::BF16)
        swigluKernel<<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(in), rows, cols,
                                               ldIn, upOffset, static_cast<__nv_bfloat16*>(out));
    else if (inType == DType::F32)
        swigluKernel<<<grid, 256, 0, stream>>>(static_cast<const float*>(in), rows, cols, ldIn,
                                               upOffset, static_cast<__nv_bfloat16*>(out));
    else
        swigluKernel<<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(in), rows, cols,
                                               ldIn, upOffset, static_cast<float*>(out));
}

void launchAddBias(void* x, DType type, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                   const float* bias, cudaStream_t stream)
{
    if (rows * cols <= 0) return;
    const unsigned grid = gridFor(rows * cols, 256);
    if (type == DType::F32)
        addBiasKernel<<<grid, 256, 0, stream>>>(static_cast<float*>(x), rows, cols, ld, bias);
    else
        addBiasKernel<<<grid, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(x), rows, cols, ld,
                                                bias);
}

void launchFromF32(const float* in, std::size_t count, void* out, DType outType,
                   cudaStream_t stream)
{
    if (count == 0) return;
    const auto n = std::int64_t(count);
    if (outType == DType::F32)
        convertKernel<<<gridFor(n, 256), 256, 0, stream>>>(in, n, static_cast<float*>(out));
    else
        convertKernel<<<gridFor(n, 256), 256, 0, stream>>>(in, n, static_cast<__nv_bfloat16*>(out));
}

void launchToF32(const void* in, DType inType, std::size_t count, float* out, cudaStream_t stream)
{
    if (count == 0) return;
    const auto n = std::int64_t(count);
    if (inType == DType::F32)
        convertKernel<<<gridFor(n, 256), 256, 0, stream>>>(static_cast<const float*>(in), n, out);
    else
        convertKernel<<<gridFor(n, 256), 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(in), n,
                                                           out);
}

}  // namespace ql::cuda
