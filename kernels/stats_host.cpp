// The C++20 side of DeviceStats (core's ActivationStats and RunnerStatsOptions cannot be included
// by the C++17 .cu files) and the host helpers of stats_host.h.
#include "stats_host.h"

#include <algorithm>

#include "cuda_check.cuh"
#include "stats.cuh"

namespace ql::cuda {
namespace {

HessianMode modeOf(HessianPrecision p)
{
    switch (p) {
        case HessianPrecision::None: return HessianMode::None;
        case HessianPrecision::Float32: return HessianMode::Float32;
        case HessianPrecision::Float64: return HessianMode::Float64;
    }
    return HessianMode::None;
}

HessianPrecision precisionOf(HessianMode m)
{
    switch (m) {
        case HessianMode::None: return HessianPrecision::None;
        case HessianMode::Float32: return HessianPrecision::Float32;
        case HessianMode::Float64: return HessianPrecision::Float64;
    }
    return HessianPrecision::None;
}

// A stream, a cuBLAS handle and device buffers for one helper call.
class Session {
public:
    ~Session()
    {
        for (void* p : m_buffers) cudaFree(p);
        if (m_blas) cublasDestroy(m_blas);
        if (m_stream) cudaStreamDestroy(m_stream);
    }
    Status open()
    {
        QL_CUDA_TRY(cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking));
        if (cublasCreate(&m_blas) != CUBLAS_STATUS_SUCCESS)
            return makeError(ErrorCode::Device, "cublasCreate failed");
        return {};
    }
    // Uploads x as float32 or as bf16; returns the device pointer.
    Result<void*> upload(const std::vector<float>& x, InputType type)
    {
        void* p = nullptr;
        if (type == InputType::Float32) {
            QL_CUDA_TRY(cudaMalloc(&p, x.size() * sizeof(float)));
            m_buffers.push_back(p);
            QL_CUDA_TRY(cudaMemcpy(p, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
        } else {
            std::vector<std::uint16_t> bits(x.size());
            std::transform(x.begin(), x.end(), bits.begin(), bf16Bits);
            QL_CUDA_TRY(cudaMalloc(&p, bits.size() * sizeof(std::uint16_t)));
            m_buffers.push_back(p);
            QL_CUDA_TRY(cudaMemcpy(p, bits.data(), bits.size() * sizeof(std::uint16_t),
                                   cudaMemcpyHostToDevice));
        }
        return p;
    }
    cudaStream_t stream() const { return m_stream; }
    cublasHandle_t blas() const { return m_blas; }

private:
    cudaStream_t m_stream = nullptr;
    cublasHandle_t m_blas = nullptr;
    std::vector<void*> m_buffers;
};

Status addRows(DeviceStats& stats, const void* x, InputType type, std::int64_t firstRow,
               std::int64_t rows, std::int32_t channels, std::int64_t sequences,
               std::int32_t firstSample)
{
    const std::int64_t offset = firstRow * channels;
    if (type == InputType::Float32)
        return stats.add(static_cast<const float*>(x) + offset, rows, sequences, firstSample);
    return stats.add(static_cast<const __nv_bfloat16*>(x) + offset, rows, sequences, firstSample);
}

Result<std::vector<float>> hessianOf(const std::vector<float>& x, std::int64_t rows,
                                     std::int32_t channels, int batches, InputType type)
{
    if (rows < 0 || channels <= 0 || x.size() != std::size_t(rows) * channels || batches < 1)
        return makeError(ErrorCode::InvalidArgument, "gpuHessian: x is not rows × channels");
    Session session;
    QL_TRY_STATUS(session.open());
    auto dx = session.upload(x, type);
    if (!dx) return dx.error();
    DeviceStatsConfig config;
    config.channels = channels;
    config.hessian = HessianMode::Float32;
    config.statistics = false;
    auto stats = DeviceStats::create(config, session.stream(), session.blas());
    if (!stats) return stats.error();
    for (int b = 0; b < batches; ++b) {
        const std::int64_t r0 = rows * b / batches, r1 = rows * (b + 1) / batches;
        QL_TRY_STATUS(addRows(*stats, *dx, type, r0, r1 - r0, channels, 1, 0));
    }
    DeviceStatsParts parts;
    QL_TRY_STATUS(stats->downloadParts(parts));
    if (!parts.hessianValues32.empty()) return std::move(parts.hessianValues32);
    return std::vector<float>(parts.hessianValues.begin(), parts.hessianValues.end());
}

}  // namespace

Result<DeviceStats> DeviceStats::create(std::int32_t channels, const RunnerStatsOptions& options,
                                        cudaStream_t stream, cublasHandle_t blas)
{
    DeviceStatsConfig config;
    config.channels = channels;
    config.hessian = modeOf(options.hessian);
    config.histogramBins = options.histogramBins;
    config.topK = options.topK;
    return create(config, stream, blas);
}

Result<ActivationStats> DeviceStats::download(DownloadLane* lane) const
{
    DeviceStatsParts parts;
    QL_TRY_STATUS(downloadParts(parts, lane));
    SymmetricHistogram hist;
    hist.range = parts.range;
    hist.counts = std::move(parts.counts);
    std::vector<TopActivation> top;
    top.reserve(parts.top.size());
    for (const auto& t : parts.top) top.push_back({t.value, t.channel, t.sample, t.position});
    if (parts.hessian == HessianMode::Float32)
        return ActivationStats::fromParts(parts.channels, parts.tokens, std::move(parts.absMax),
                                          std::move(parts.sumAbs), std::move(parts.sumSquare),
                                          std::move(hist), std::move(top),
                                          std::move(parts.hessianValues32), parts.topK);
    return ActivationStats::fromParts(parts.channels, parts.tokens, std::move(parts.absMax),
                                      std::move(parts.sumAbs), std::move(parts.sumSquare),
                                      std::move(hist), std::move(top), precisionOf(parts.hessian),
                                      std::move(parts.hessianValues), parts.topK);
}

std::string gpuUnavailableReason()
{
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    if (count == 0) return "no CUDA device present";
    return {};
}

Result<ActivationStats> gpuActivationStats(const std::vector<float>& x, std::int64_t rows,
                                           std::int32_t channels, const RunnerStatsOptions& options,
                                           std::int64_t sequences, std::int32_t firstSample,
                                           int batches, InputType input)
{
    if (rows < 0 || channels <= 0 || x.size() != std::size_t(rows) * channels)
        return makeError(ErrorCode::InvalidArgument,
                         "gpuActivationStats: x is not rows × channels");
    if (sequences < 1 || rows % sequences != 0 || batches < 1 || batches > sequences)
        return makeError(ErrorCode::InvalidArgument,
                         "gpuActivationStats: rows, sequences and batches do not divide");
    Session session;
    QL_TRY_STATUS(session.open());
    auto dx = session.upload(x, input);
    if (!dx) return dx.error();
    auto stats = DeviceStats::create(channels, options, session.stream(), session.blas());
    if (!stats) return stats.error();
    const std::int64_t t = rows / sequences;
    for (int b = 0; b < batches; ++b) {
        const std::int64_t s0 = sequences * b / batches, s1 = sequences * (b + 1) / batches;
        QL_TRY_STATUS(addRows(*stats, *dx, input, s0 * t, (s1 - s0) * t, channels, s1 - s0,
                              firstSample + std::int32_t(s0)));
    }
    return stats->download();
}

Result<std::vector<float>> gpuHessian(const std::vector<float>& x, std::int64_t rows,
                                      std::int32_t channels, int batches)
{
    return hessianOf(x, rows, channels, batches, InputType::Float32);
}

Result<std::vector<float>> gpuHessianBf16(const std::vector<float>& x, std::int64_t rows,
                                          std::int32_t channels, int batches)
{
    return hessianOf(x, rows, channels, batches, InputType::BFloat16);
}

}  // namespace ql::cuda
