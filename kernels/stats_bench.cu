// bench hessian: times DeviceStats on synthetic activations made on the device (Gaussian, every
// 61st channel 20× larger, about one value in a million 100× larger: outlier channels and massive
// activations; "massive" data also scales two channels of every 2048th row 1000×, as a model's
// first token does). Before it is timed, the Hessian is checked against a double-precision dot
// product of sampled column pairs computed on the host, in both triangles.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda_check.cuh"
#include "stats.cuh"
#include "stats_bench.h"

namespace ql::cuda {
namespace {

__device__ __forceinline__ unsigned long long splitMix(unsigned long long z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <class T>
__global__ void fillActivations(T* x, std::int64_t rows, int channels, unsigned long long seed,
                                bool massive)
{
    const std::int64_t n = rows * channels;
    for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
         i += std::int64_t(gridDim.x) * blockDim.x) {
        const unsigned long long h = splitMix(std::uint64_t(i) ^ (seed * 0xd1b54a32d192ed03ull));
        const float u1 = (float((h >> 40) & 0xffffff) + 1.0f) * 0x1p-24f;
        const float u2 = float(h & 0xffffff) * 0x1p-24f;
        float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
        const int c = int(i % channels);
        if (c % 61 == 7) z *= 20.0f;
        if (((h >> 24) & 0xfffff) == 0x5a5a5) z *= 100.0f;
        if (massive && (i / channels) % 2048 == 0 && (c == 7 || c == channels / 2 + 3))
            z *= 1000.0f;
        if constexpr (sizeof(T) == 4)
            x[i] = z;
        else
            x[i] = __float2bfloat16_rn(z);
    }
}

template <class T>
__global__ void gatherColumn(const T* x, std::int64_t rows, int channels, int column, float* out)
{
    for (std::int64_t r = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; r < rows;
         r += std::int64_t(gridDim.x) * blockDim.x) {
        if constexpr (sizeof(T) == 4)
            out[r] = x[r * channels + column];
        else
            out[r] = __bfloat162float(x[r * channels + column]);
    }
}

class Resources {
public:
    ~Resources()
    {
        for (void* p : buffers) cudaFree(p);
        for (cudaEvent_t e : events) cudaEventDestroy(e);
        if (blas) cublasDestroy(blas);
        if (stream) cudaStreamDestroy(stream);
    }
    Status open()
    {
        QL_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS)
            return makeError(ErrorCode::Device, "cublasCreate failed");
        for (int i = 0; i < 2; ++i) {
            cudaEvent_t e = nullptr;
            QL_CUDA_TRY(cudaEventCreate(&e));
            events.push_back(e);
        }
        return {};
    }
    Result<void*> allocate(std::size_t bytes)
    {
        void* p = nullptr;
        QL_CUDA_TRY(cudaMalloc(&p, bytes));
        buffers.push_back(p);
        return p;
    }
    // Seconds between the two events.
    Result<double> elapsed()
    {
        QL_CUDA_TRY(cudaEventSynchronize(events[1]));
        float ms = 0;
        QL_CUDA_TRY(cudaEventElapsedTime(&ms, events[0], events[1]));
        return ms * 1e-3;
    }

    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    std::vector<cudaEvent_t> events;
    std::vector<void*> buffers;
};

std::uint64_t usedBytes()
{
    std::size_t freeBytes = 0, total = 0;
    if (cudaMemGetInfo(&freeBytes, &total) != cudaSuccess) return 0;
    return total - freeBytes;
}

template <class T>
Result<StatsBenchResult> run(const StatsBenchConfig& cfg)
{
    StatsBenchResult out;
    int device = 0;
    QL_CUDA_TRY(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    QL_CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    out.device = prop.name;
    QL_CUDA_TRY(cudaFree(nullptr));  // create the context before the baseline
    Resources res;
    QL_TRY_STATUS(res.open());
    const std::uint64_t baseline = usedBytes();
    std::uint64_t peak = baseline;
    auto sample = [&] { peak = std::max(peak, usedBytes()); };

    const std::int64_t rows = cfg.tokens;
    const int c = cfg.channels;
    out.inputBytes = std::uint64_t(rows) * c * sizeof(T);
    auto xMem = res.allocate(out.inputBytes);
    if (!xMem) return xMem.error();
    T* x = static_cast<T*>(*xMem);
    const int fillBlocks = prop.multiProcessorCount * 8;
    auto fill = [&](unsigned long long seed, bool massive = false) -> Status {
        fillActivations<T><<<fillBlocks, 256, 0, res.stream>>>(x, rows, c, seed, massive);
        QL_CUDA_TRY(cudaGetLastError());
        return {};
    };
    QL_TRY_STATUS(fill(1));
    const double flops = 2.0 * double(c) * double(c) * double(rows);
    out.hessianChunkRows = sizeof(T) == 2 ? 16384 : rows;

    // The Hessian alone: warm-up (cuBLAS picks its kernel), the timed accumulations, then a check
    // of sampled entries (H accumulated the same X 1 + repeats times).
    auto colMem = res.allocate(2 * rows * sizeof(float));
    if (!colMem) return colMem.error();
    float* cols = static_cast<float*>(*colMem);
    auto layoutName = [](HessianTiling tiling, int tile) {
        if (tiling == HessianTiling::Full || tile == 0) return std::string("full");
        return std::string(tiling == HessianTiling::Grouped ? "grouped " : "diagonals ") +
               std::to_string(tile);
    };
    // One layout: warm-up, the timed products, symmetrize() (timed once), then the check.
    auto timeHessian = [&](std::int64_t chunkRows, HessianTiling tiling, int tile,
                           HessianLayoutResult& r) -> Status {
        DeviceStatsConfig hc;
        hc.channels = c;
        hc.hessian = HessianMode::Float32;
        hc.statistics = false;
        hc.hessianChunkRows = chunkRows;
        hc.hessianTiling = tiling;
        hc.hessianTile = tile;
        auto h = DeviceStats::create(hc, res.stream, res.blas);
        if (!h) return h.error();
        r.name = layoutName(h->hessianHalf() ? tiling : HessianTiling::Full, h->hessianTile());
        QL_TRY_STATUS(h->add(x, rows));
        QL_CUDA_TRY(cudaEventRecord(res.events[0], res.stream));
        for (int i = 0; i < cfg.repeats; ++i) QL_TRY_STATUS(h->add(x, rows));
        QL_CUDA_TRY(cudaEventRecord(res.events[1], res.stream));
        auto secs = res.elapsed();
        if (!secs) return secs.error();
        r.seconds = *secs / cfg.repeats;
        r.tflops = flops / r.seconds * 1e-12;
        QL_CUDA_TRY(cudaEventRecord(res.events[0], res.stream));
        QL_TRY_STATUS(h->symmetrize());
        QL_CUDA_TRY(cudaEventRecord(res.events[1], res.stream));
        auto mirror = res.elapsed();
        if (!mirror) return mirror.error();
        r.mirrorSeconds = h->hessianHalf() ? *mirror : 0.0;
        r.computed = 1.0;
        if (h->hessianHalf()) {
            const double e = h->hessianTile();
            const double count = std::ceil(c / e), last = c - (count - 1) * e;
            const double equal = last == e ? count : count - 1;
            const double work = equal * (equal + 1) / 2 * e * e +
                                (last == e ? 0.0 : (count - 1) * last * e + last * last);
            r.computed = work / (double(c) * c);
        }
        sample();
        const int pairs[][2] = {{0, 0},     {7, 7},         {0, 1},     {7, 68},
                                {c - 1, 3}, {c / 2, c / 3}, {5, c - 2}, {c - 1, c - 1},
                                {3, c - 1}, {c / 3, c / 2}, {c - 2, 5}, {68, 7}};
        std::vector<float> a(rows), b(rows);
        r.checkError = 0;
        for (const auto& p : pairs) {
            const int i = std::clamp(p[0], 0, c - 1), j = std::clamp(p[1], 0, c - 1);
            gatherColumn<T><<<fillBlocks, 256, 0, res.stream>>>(x, rows, c, i, cols);
            gatherColumn<T><<<fillBlocks, 256, 0, res.stream>>>(x, rows, c, j, cols + rows);
            QL_CUDA_TRY(cudaGetLastError());
            QL_CUDA_TRY(cudaStreamSynchronize(res.stream));
            QL_CUDA_TRY(cudaMemcpy(a.data(), cols, rows * sizeof(float), cudaMemcpyDeviceToHost));
            QL_CUDA_TRY(
                cudaMemcpy(b.data(), cols + rows, rows * sizeof(float), cudaMemcpyDeviceToHost));
            double ij = 0, ii = 0, jj = 0;
            for (std::int64_t k = 0; k < rows; ++k) {
                ij += double(a[k]) * b[k];
                ii += double(a[k]) * a[k];
                jj += double(b[k]) * b[k];
            }
            const double times = 1 + cfg.repeats;
            float got = 0;
            QL_CUDA_TRY(cudaMemcpy(&got, h->deviceHessian32() + std::size_t(i) * c + j,
                                   sizeof(float), cudaMemcpyDeviceToHost));
            const double scale = times * std::sqrt(ii * jj);
            if (scale > 0)
                r.checkError = std::max(r.checkError, std::fabs(got - times * ij) / scale);
        }
        return {};
    };
    {
        HessianLayoutResult r;
        QL_TRY_STATUS(timeHessian(0, HessianTiling::Auto, 0, r));
        out.hessianSeconds = r.seconds;
        out.hessianCheckError = r.checkError;
        out.hessianTflops = r.tflops;
        out.hessianLayout = r.name;
    }
    if (rows > out.hessianChunkRows && sizeof(T) == 2) {
        HessianLayoutResult r;
        QL_TRY_STATUS(timeHessian(rows, HessianTiling::Full, 0, r));
        out.oneGemmSeconds = r.seconds;
        out.oneGemmCheckError = r.checkError;
        out.oneGemmTflops = r.tflops;
    }
    if (cfg.layouts) {
        std::vector<std::pair<HessianTiling, int>> layouts = {{HessianTiling::Full, 0}};
        for (int tile : {1024, 2048})
            if (tile < c)
                for (HessianTiling t : {HessianTiling::Diagonals, HessianTiling::Grouped})
                    layouts.push_back({t, tile});
        for (const auto& [tiling, tile] : layouts) {
            HessianLayoutResult r;
            QL_TRY_STATUS(timeHessian(0, tiling, tile, r));
            out.layouts.push_back(r);
        }
    }

    {  // Statistics alone: the first add, then fresh data each time (top-k full, range set).
        DeviceStatsConfig sc;
        sc.channels = c;
        sc.hessian = HessianMode::None;
        auto s = DeviceStats::create(sc, res.stream, res.blas);
        if (!s) return s.error();
        QL_CUDA_TRY(cudaEventRecord(res.events[0], res.stream));
        QL_TRY_STATUS(s->add(x, rows));
        QL_CUDA_TRY(cudaEventRecord(res.events[1], res.stream));
        auto first = res.elapsed();
        if (!first) return first.error();
        out.statsFirstSeconds = *first;
        double total = 0;
        for (int r = 0; r < cfg.repeats; ++r) {
            QL_TRY_STATUS(fill(2 + r));
            QL_CUDA_TRY(cudaEventRecord(res.events[0], res.stream));
            QL_TRY_STATUS(s->add(x, rows));
            QL_CUDA_TRY(cudaEventRecord(res.events[1], res.stream));
            auto secs = res.elapsed();
            if (!secs) return secs.error();
            total += *secs;
        }
        out.statsSeconds = total / cfg.repeats;
        out.statsGBps = double(out.inputBytes) / out.statsSeconds * 1e-9;
        sample();
    }

    {  // Both, as calibration runs them.
        DeviceStatsConfig bc;
        bc.channels = c;
        bc.hessian = HessianMode::Float32;
        auto s = DeviceStats::create(bc, res.stream, res.blas);
        if (!s) return s.error();
        QL_TRY_STATUS(s->add(x, rows));
        QL_CUDA_TRY(cudaEventRecord(res.events[0], res.stream));
        for (int r = 0; r < cfg.repeats; ++r) QL_TRY_STATUS(s->add(x, rows));
        QL_CUDA_TRY(cudaEventRecord(res.events[1], res.stream));
        auto secs = res.elapsed();
        if (!secs) return secs.error();
        out.addSeconds = *secs / cfg.repeats;
        out.accumulatorBytes = s->deviceBytes();
        sample();
    }
    if (cfg.breakdown) {
        // A fresh probe (reset() before each add: calibration runs one add per probe and
        // forward pass) and a probe that has seen data of the same scale (later adds).
        for (bool massive : {false, true}) {
            DeviceStatsConfig pc;
            pc.channels = c;
            pc.hessian = HessianMode::Float32;
            auto s = DeviceStats::create(pc, res.stream, res.blas);
            if (!s) return s.error();
            QL_TRY_STATUS(s->setProfiling(true));
            for (bool first : {true, false}) {
                StatsPhaseTimes t;
                t.data = massive ? "massive" : "heavy";
                t.first = first;
                t.hessianLayout =
                    layoutName(s->hessianHalf() ? HessianTiling::Diagonals : HessianTiling::Full,
                               s->hessianTile());
                for (int r = 0; r <= cfg.repeats; ++r) {  // the first round warms up
                    QL_TRY_STATUS(fill(100 + r, massive));
                    if (first) QL_TRY_STATUS(s->reset());
                    QL_TRY_STATUS(s->add(x, rows, rows % 2048 == 0 ? rows / 2048 : 1));
                    auto p = s->lastProfile();
                    if (!p) return p.error();
                    if (r == 0) continue;
                    t.statsMs += p->statsMs / cfg.repeats;
                    t.rebinMs += p->rebinMs / cfg.repeats;
                    t.candidatesMs += p->candidatesMs / cfg.repeats;
                    t.hessianMs += p->hessianMs / cfg.repeats;
                    t.growUs += p->growUs / cfg.repeats;
                    t.thresholdUs += p->thresholdUs / cfg.repeats;
                    t.mergeUs += p->mergeUs / cfg.repeats;
                    t.rebinned = p->rebinned;
                    t.onePass = p->onePass;
                    t.direct = p->direct;
                    t.candidates = p->candidates;
                    t.passing = p->passing;
                    t.tilesScanned = p->tilesScanned;
                    t.tiles = p->tiles;
                    t.threshold = p->threshold;
                    t.blocks = p->blocks;
                }
                out.phases.push_back(t);
            }
        }
        sample();
    }
    out.peakBytes = peak - baseline;
    return out;
}

}  // namespace

Result<StatsBenchResult> benchCalibrationStats(const StatsBenchConfig& config)
{
    if (config.channels <= 0 || config.tokens <= 0 || config.repeats < 1)
        return makeError(ErrorCode::InvalidArgument,
                         "bench: channels, tokens, repeats must be > 0");
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0)
        return makeError(ErrorCode::Device,
                         std::string("no CUDA device: ") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "none present"));
    return config.bf16 ? run<__nv_bfloat16>(config) : run<float>(config);
}

}  // namespace ql::cuda
