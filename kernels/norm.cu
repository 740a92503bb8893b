// RMSNorm: one block per row; the sum of squares in double (H100's FP64 units make that free at
// these sizes) so that the result matches the CPU reference to float rounding.
#include "device_math.cuh"
#include "norm.cuh"

namespace ql::cuda {
namespace {

template <class Out>
__global__ void rmsNormKernel(const float* __restrict__ x, std::int64_t cols,
                              const float* __restrict__ weight, float eps, Out* __restrict__ out)
{
    const float* row = x + blockIdx.x * cols;
    Out* dst = out + blockIdx.x * cols;
    double sumSq = 0;
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const double v = row[c];
        sumSq += v * v;
    }
    sumSq = device::blockSum(sumSq);
    const float scale = static_cast<float>(1.0 / sqrt(sumSq / double(cols) + double(eps)));
    for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dst[c] = device::fromFloat<Out>(weight[c] * (scale * row[c]));
}

}  // namespace

void launchRmsNorm(const float* x, std::int64_t rows, std::int64_t cols, const float* weight,
                   float eps, void* out, DType outType, cudaStream_t stream)
{
    if (rows <= 0) return;
    const int threads = cols >= 2048 ? 512 : cols >= 512 ? 256 : 64;
    if (outType == DType::F32)
        rmsNormKernel<float><<<unsigned(rows), threads, 0, stream>>>(x, cols, weight, eps,
                                                                     static_cast<float*>(out));
    else
        rmsNormKernel<__nv_bfloat16><<<unsigned(rows), threads, 0, stream>>>(
            x, cols, weight, eps, static_cast<__nv_bfloat16*>(out));
}

}  // namespace ql::cuda
