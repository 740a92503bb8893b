// DeviceStats: one calibration probe's activation statistics accumulated on the GPU — the device
// twin of ql::ActivationStats (core/calib/activation_stats.h), which stays the oracle.
//
// add() takes an activation matrix already on the device (rows = tokens, row-major rows ×
// channels, float32 or bf16) and enqueues everything on the stream; nothing synchronizes until
// download(). Per batch, three kernels and the Hessian GEMMs:
//   1. the fused pass reads X once: per-channel abs-max, Σ|x| and Σx² (double atomics), the batch
//      abs-max, the abs-max of every tile (32 rows × one channel tile), and the histogram binned
//      speculatively at the current range (shared-memory histograms; the two central bins, where
//      nearly everything lands once massive activations set the range, counted in registers).
//      Its last block to finish grows the range exactly as the CPU grows it (first range: the
//      power of two at or above the batch max; then doublings with pair merges). A probe's first
//      batch has no range to bin at: each block bins at a power-of-two range of its own, and the
//      last block re-bins those histograms at the final range, which is exact for power-of-two
//      bin counts (firstBatchOnePass) — calibration adds one batch per probe and forward pass;
//   2. if the range grew (or a first batch could not be merged), the batch is binned again at the
//      new range — the CPU bins each add() at the range reached after it, and so does this. The
//      last block of whichever pass made the batch histogram final adds it to the running one and
//      sets the top-k threshold: the larger of a histogram bound (values below it have k larger
//      ones) and the k-th largest tile abs-max (k tiles hold a value at least that large);
//   3. top-k: whole tiles below the threshold or the current k-th |value| are skipped. When the
//      histogram shows that few values can pass, they go straight to one candidate list;
//      otherwise each block keeps its own top-k in shared memory (bitonic merges). The last block
//      merges the candidates with the running list. Ties are broken as the CPU breaks them
//      (earlier rows and channels first, the running list before the batch) through a 64-bit
//      key: |value| bits above the inverted order;
//   4. the Hessian XᵀX by cuBLAS: bf16 inputs on tensor cores with float32 accumulation, float32
//      inputs with CUBLAS_COMPUTE_32F_PEDANTIC (no TF32), beta = 1 across batches; Float64 sums
//      each batch's float32 product into a double buffer. XᵀX is symmetric, so from 4096 channels
//      only the tiles on and above the diagonal are computed (see HessianTiling); symmetrize()
//      mirrors the rest when someone reads it.
// The result equals ActivationStats::add over the same rows: abs-max, histogram and top-k exactly,
// sums and Hessian to rounding. The histogram differs only where the CPU's own result depends on
// how rows are split into add() calls (a value exactly at a smaller intermediate range).
//
// This header is plain host C++ (C++17 for the .cu files, C++20 for the rest): core's types appear
// only as forward declarations; download() and the RunnerStatsOptions overload of create() are
// defined in stats_host.cpp.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "util/result.h"

namespace ql {
class ActivationStats;
struct RunnerStatsOptions;
}  // namespace ql

namespace ql::cuda {

enum class HessianMode { None, Float32, Float64 };  // mirrors ql::HessianPrecision

// How the Hessian GEMMs cover the C × C accumulator. Full: one GEMM per chunk of rows. The half
// layouts split the channels into tiles of hessianTile (the last one smaller when it does not
// divide) and compute only the tiles on and above the diagonal — the upper triangle, row-major
// (column >= row; cuBLAS, column-major, sees it as its lower triangle): Diagonals runs one
// strided-batched GEMM per tile diagonal, Grouped one pointer-array batched GEMM for all equal
// tiles. They do about (1 + 1/tiles) / 2 of the full work; with few tiles per diagonal a GEMM
// may fill only part of the GPU, which `quantlens-cli bench hessian` measures. Auto: Diagonals
// with 2048-channel tiles from 4096 channels (below that the full GEMM is about one wave of
// tiles on an H100 and halving it saves nothing), else Full.
enum class HessianTiling { Auto, Full, Diagonals, Grouped };

struct DeviceStatsConfig {
    std::int32_t channels = 0;
    HessianMode hessian = HessianMode::Float32;
    int histogramBins = 2048;  // made even (at least 2) as on the CPU; at most kMaxHistogramBins
    int topK = 32;             // at most kMaxTopK
    bool statistics = true;    // false: the Hessian alone (benchmarks)
    // Rows per Hessian GEMM; an add() with more rows runs several GEMMs, each added to the
    // accumulator with beta = 1. 0: 16384 for bf16 inputs, one GEMM for float32. Tensor cores
    // accumulate a GEMM's products with truncation, which biases long sums (about 1e-3 relative
    // over 262144 rows in one GEMM); the epilogue's addition rounds to nearest.
    std::int64_t hessianChunkRows = 0;
    HessianTiling hessianTiling = HessianTiling::Auto;
    int hessianTile = 0;  // Diagonals / Grouped: tile edge, a multiple of 16; 0: 2048
    // Top-k candidates that may go straight to the candidate list (when the histogram shows
    // that no more can reach the threshold); beyond, each block keeps its own top-k first.
    // -1: as many as one merge with the running list takes. Tests set 0 to cover both paths.
    int topKDirectLimit = -1;
    // A probe's first batch (what calibration adds: one batch per probe and forward pass) read
    // once instead of twice: binned at block-local ranges and merged exactly at the final range
    // (power-of-two bin counts; see stats.cu, localMerge). false: binned again like a batch that
    // grows the range.
    bool firstBatchOnePass = true;
};

// Benchmarks (`bench hessian --breakdown`): where one add() spends its time. The passes are timed
// with CUDA events; the serial work that the last block of a pass does alone, with %globaltimer.
struct DeviceStatsProfile {
    double statsMs = 0;       // fused pass, including its last block's range growth (and the
                              // threshold when the range did not grow)
    double rebinMs = 0;       // binning again at a grown range, with the threshold
    double candidatesMs = 0;  // top-k candidates, with the merge
    double hessianMs = 0;     // the Hessian GEMMs (and the float64 sum)
    double growUs = 0, thresholdUs = 0, mergeUs = 0;  // the last blocks' serial work
    bool rebinned = false;           // the range grew: the batch was read twice for the histogram
    bool onePass = false;            // a first batch binned at block ranges in the fused pass
    bool direct = false;             // candidates went straight to the list (no per-block top-k)
    std::uint32_t candidates = 0;    // keys the candidate pass produced
    std::uint32_t passing = 0;       // histogram bound on the values at or above the threshold
    std::uint64_t tilesScanned = 0;  // tiles whose abs-max reached the threshold
    std::uint64_t tiles = 0;
    float threshold = 0;
    int blocks = 0;  // grid of the streaming passes
};

constexpr int kMaxHistogramBins = 12288;  // shared-memory histograms
constexpr int kMaxTopK = 1024;

// Host copy of the accumulators (what download() turns into an ActivationStats).
struct DeviceStatsParts {
    struct Top {
        float value = 0;
        std::int32_t channel = 0, sample = 0, position = 0;
    };
    std::int32_t channels = 0;
    std::int64_t tokens = 0;
    int topK = 0;
    std::vector<float> absMax;
    std::vector<double> sumAbs, sumSquare;
    double range = 0;
    std::vector<std::uint64_t> counts;
    std::vector<Top> top;  // by descending |value|
    HessianMode hessian = HessianMode::None;
    std::vector<double> hessianValues;   // channels × channels, Float64
    std::vector<float> hessianValues32;  // channels × channels, Float32 (copied as is)
};

// A download path of its own: a stream and two page-locked staging buffers. Copies into pageable
// host memory go through the staging buffers in chunks (the DMA of one chunk overlaps the host
// copy of the previous one), so several lanes on several host threads download different
// accumulators at once near PCIe speed — plain cudaMemcpy into fresh pageable memory runs at a
// fraction of it and faults the destination's pages in on one thread.
class DownloadLane {
public:
    DownloadLane() = default;
    ~DownloadLane();
    DownloadLane(DownloadLane&&) noexcept;
    DownloadLane& operator=(DownloadLane&&) noexcept;
    DownloadLane(const DownloadLane&) = delete;
    DownloadLane& operator=(const DownloadLane&) = delete;

    // On the current device; chunkBytes per staging buffer.
    static Result<DownloadLane> create(std::size_t chunkBytes = std::size_t(16) << 20);
    // Device → host, complete on return. Work queued on other streams is not waited for.
    Status copy(void* dst, const void* src, std::size_t bytes);
    std::uint64_t pinnedBytes() const { return 2 * std::uint64_t(m_chunk); }

private:
    cudaStream_t m_stream = nullptr;
    cudaEvent_t m_done[2] = {nullptr, nullptr};
    void* m_staging[2] = {nullptr, nullptr};
    std::size_t m_chunk = 0;
};

class DeviceStats {
public:
    DeviceStats();
    ~DeviceStats();
    DeviceStats(DeviceStats&&) noexcept;
    DeviceStats& operator=(DeviceStats&&) noexcept;
    DeviceStats(const DeviceStats&) = delete;
    DeviceStats& operator=(const DeviceStats&) = delete;

    // Allocates the accumulators on the current device. Work goes to `stream`; `blas` runs the
    // Hessian GEMMs (its stream and pointer mode are set for each call and restored after).
    static Result<DeviceStats> create(const DeviceStatsConfig& config, cudaStream_t stream,
                                      cublasHandle_t blas);
    static Result<DeviceStats> create(std::int32_t channels, const RunnerStatsOptions& options,
                                      cudaStream_t stream, cublasHandle_t blas);

    // dX: rows × channels on the device, row-major. The rows are `sequences` sequences of
    // rows / sequences tokens: row r is token r % T of calibration sample firstSample + r / T.
    // Asynchronous; dX must stay valid until the stream has run the work.
    Status add(const float* dX, std::int64_t rows, std::int64_t sequences = 1,
               std::int32_t firstSample = 0);
    Status add(const __nv_bfloat16* dX, std::int64_t rows, std::int64_t sequences = 1,
               std::int32_t firstSample = 0);

    // Zero every accumulator (collection starts afresh).
    Status reset();

    // With a half layout (HessianTiling) add() accumulates only the upper triangle of the
    // Hessian (row-major: column >= row); this enqueues the mirror of it into the lower one on the
    // stream, for the Float32 or the Float64 accumulator. Nothing to do when no add() ran since
    // the last call. download() calls it; a device reader of deviceHessian32() / 64() calls it
    // after the last add() and reads after the stream has run it.
    Status symmetrize();

    // Waits for the stream and copies the accumulators back; the Hessian through `lane` when
    // given (see DownloadLane), else with plain cudaMemcpy. The Hessian is symmetrized first
    // (logically const: the lower triangle is a mirror of the upper one).
    Status downloadParts(DeviceStatsParts& out, DownloadLane* lane = nullptr) const;
    Result<ActivationStats> download(DownloadLane* lane = nullptr) const;

    // Benchmarks: time each pass of add() (see DeviceStatsProfile); lastProfile() waits for the
    // stream and reports the latest add().
    Status setProfiling(bool on);
    Result<DeviceStatsProfile> lastProfile() const;

    std::int32_t channels() const;
    std::int64_t tokenCount() const;
    std::uint64_t deviceBytes() const;  // accumulators and scratch held on the device
    // The Hessian accumulator on the device (channels × channels; symmetric, so row- and
    // column-major alike), for device-side consumers such as GPTQ; null when not kept in that
    // precision. Complete once the stream has run the adds and a symmetrize() after them; before
    // that a half layout leaves the lower triangle stale (hessianHalf()).
    const float* deviceHessian32() const;   // HessianMode::Float32
    const double* deviceHessian64() const;  // HessianMode::Float64
    bool hessianHalf() const;               // a half layout is in use (HessianTiling)
    int hessianTile() const;                // its tile edge; 0 with the full GEMM
    bool valid() const { return m_impl != nullptr; }

    struct Impl;

private:
    std::unique_ptr<Impl> m_impl;
};

}  // namespace ql::cuda
