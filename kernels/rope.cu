// RoPE: one thread per rotated pair.
#include <algorithm>

#include "device_math.cuh"
#include "rope.cuh"

namespace ql::cuda {
namespace {

template <class T>
__global__ void ropeKernel(T* __restrict__ x, std::int64_t rows, std::int64_t ld, int heads,
                           int headDim, const float* __restrict__ cosTable,
                           const float* __restrict__ sinTable, std::int64_t seqLen, bool halfSplit)
{
    const int half = headDim / 2;
    const std::int64_t pairs = rows * heads * half;
    for (std::int64_t idx = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; idx < pairs;
         idx += std::int64_t(gridDim.x) * blockDim.x) {
        const int i = int(idx % half);
        const std::int64_t rh = idx / half;
        const int h = int(rh % heads);
        const std::int64_t r = rh / heads;
        T* head = x + r * ld + std::int64_t(h) * headDim;
        T* pa = halfSplit ? head + i : head + 2 * i;
        T* pb = halfSplit ? head + i + half : head + 2 * i + 1;
        const std::int64_t t = (r % seqLen) * half + i;
        const float c = cosTable[t], s = sinTable[t];
        const float a0 = device::toFloat(*pa), b0 = device::toFloat(*pb);
        // No fused multiply-adds: the CPU reference rounds each product.
        *pa = device::fromFloat<T>(__fsub_rn(__fmul_rn(a0, c), __fmul_rn(b0, s)));
        *pb = device::fromFloat<T>(__fadd_rn(__fmul_rn(a0, s), __fmul_rn(b0, c)));
    }
}

}  // namespace

void launchRope(void* x, DType type, std::int64_t rows, std::int64_t ld, int heads, int headDim,
                const float* cosTable, const float* sinTable, std::int64_t seqLen, bool halfSplit,
                cudaStream_t stream)
{
    const std::int64_t pairs = rows * heads * (headDim / 2);
    if (pairs <= 0) return;
    const int threads = 256;
    const unsigned blocks =
        unsigned(std::min<std::int64_t>((pairs + threads - 1) / threads, 65535));
    if (type == DType::F32)
        ropeKernel<<<blocks, threads, 0, stream>>>(static_cast<float*>(x), rows, ld, heads, headDim,
                                                   cosTable, sinTable, seqLen, halfSplit);
    else
        ropeKernel<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(x), rows, ld, heads,
                                                   headDim, cosTable, sinTable, seqLen, halfSplit);
}

}  // namespace ql::cuda
