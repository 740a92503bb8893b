// Generated inputs for `bench gptq` (see gptq.cuh): a splitmix64 hash of (seed, index) gives two
// uniforms, Box-Muller a normal z and a second normal for the log-normal scale exp(0.5 z2), so
// the values are heavy tailed (kurtosis well above a normal's) without any state.
#include <cmath>

#include "gptq.cuh"

namespace ql::cuda {
namespace {

__device__ __forceinline__ unsigned long long splitmix(unsigned long long x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Two independent standard normals from one hashed index.
__device__ __forceinline__ void normals(unsigned long long seed, unsigned long long i, float& a,
                                        float& b)
{
    const unsigned long long h1 = splitmix(seed ^ splitmix(i));
    const unsigned long long h2 = splitmix(h1);
    const float u1 = (float(h1 >> 40) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
    const float u2 = float(h2 >> 40) * (1.0f / 16777216.0f);
    const float radius = sqrtf(-2.0f * logf(u1));
    float sn, cs;
    sincospif(2.0f * u2, &sn, &cs);
    a = radius * cs;
    b = radius * sn;
}

__global__ void activationsKernel(float* x, std::int64_t tokens, std::int64_t cols,
                                  unsigned long long seed)
{
    const std::int64_t n = tokens * cols;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        float z, z2;
        normals(seed, (unsigned long long)i, z, z2);
        const std::int64_t c = i % cols;
        x[i] = z * expf(0.5f * z2) * (c % 97 == 13 ? 20.0f : 1.0f);
    }
}

__global__ void weightsKernel(float* w, std::int64_t rows, std::int64_t cols,
                              unsigned long long seed)
{
    const std::int64_t n = rows * cols;
    for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        float z, z2;
        normals(seed, (unsigned long long)i, z, z2);
        const std::int64_t c = i % cols;
        w[i] = 0.02f * z * expf(0.3f * z2) * (c % 61 == 7 ? 4.0f : 1.0f);
    }
}

}  // namespace

void launchGptqBenchActivations(float* x, std::int64_t tokens, std::int64_t cols,
                                unsigned long long seed, cudaStream_t stream)
{
    activationsKernel<<<4096, 256, 0, stream>>>(x, tokens, cols, seed);
}

void launchGptqBenchWeights(float* w, std::int64_t rows, std::int64_t cols, unsigned long long seed,
                            cudaStream_t stream)
{
    weightsKernel<<<4096, 256, 0, stream>>>(w, rows, cols, seed);
}

}  // namespace ql::cuda
