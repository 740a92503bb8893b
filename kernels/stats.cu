// Calibration statistics on the GPU (see stats.cuh for the design). Kernels, in launch order for
// one add(): statsKernel (fused pass; its last block grows the range and, when the range did not
// grow or the first batch was binned at block-local ranges, sets the top-k threshold),
// rebinKernel (exits at once unless the batch must be binned again; its last block sets the
// threshold), candidateKernel (top-k candidates; its last block merges them into
// the running list), then the cuBLAS Hessian. The serial steps run in the last block of a pass to
// finish (a counter in BatchState) rather than as one-block kernels of their own: each launch on
// the statistics stream waits for a free SM slot behind the forward pass's kernels.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "stats.cuh"

namespace ql::cuda {
namespace {

constexpr int kMaxThreads = 256;  // per block of the streaming kernels
constexpr int kRowsPerTile = 32;  // tile = 32 rows × one channel tile (tile abs-max granularity)
constexpr int kUnroll = 4;        // rows loaded before any is processed
constexpr int kKeyBuffer = 4096;  // shared top-k key buffer (keys are 8 bytes: 32 KB)
constexpr int kBlocksPerSm = 4;   // at most; fewer when the fused pass's occupancy is lower
constexpr std::int64_t kMaxGemmRows = std::int64_t(1) << 30;
constexpr std::int64_t kBf16GemmRows = 16384;  // see DeviceStatsConfig::hessianChunkRows
constexpr int kDefaultHessianTile = 2048;
constexpr std::int32_t kAutoHalfChannels = 4096;  // HessianTiling::Auto
// A probe's first batch (DeviceStatsConfig::firstBatchOnePass): block-local ranges 2^e go to
// slot e mod kRangeSlots (stored as e + kRangeBias, 0 = free); values at or above a block's range
// wait in a shared buffer of kDeferred until the range grows at the end of their tile.
constexpr int kRangeSlots = 32;
constexpr int kRangeBias = 1024;
constexpr int kDeferred = 512;
// Top-k keys: |value| bits (31) above 33 bits of inverted order (running list first, then the
// batch in row-major order).
constexpr int kOrderBits = 33;
constexpr unsigned long long kOrderMask = (1ull << kOrderBits) - 1;

struct PersistentState {
    double range;  // histogram covers [-range, range]
    int topCount;
    int overflow;  // a candidate list overflowed (a bug; download() reports it)
};

struct BatchState {
    unsigned maxBits;    // batch abs-max (float bits); cleared by the fused pass's last block
    int rebin;           // the range grew (or is 0): bin again at the new range
    unsigned candCount;  // keys appended by candidateKernel
    float thr;           // values below cannot enter the top-k
    float floorAbs;      // |value| of the running k-th entry (when full)
    int full;
    int direct;          // few values reach thr: candidates go straight to the list
    unsigned passing;    // histogram bound on the values at or above thr (saturated)
    unsigned done[3];    // blocks finished: fused pass, rebin, candidates (the last one resets)
    unsigned tailNs[3];  // the last blocks' serial work: grow, threshold, merge (profiling)
    unsigned long long tilesScanned;  // tiles the candidate pass read (profiling)
    // First batch in one pass (all zero between batches):
    unsigned localFallback;       // bin again at the final range (see localMerge)
    unsigned negMinInv;           // ~bits of the smallest |x| of a negative value; 0: none
    unsigned long long zeroOnly;  // values of blocks that saw nothing but zeros
};

struct TopEntry {
    float value;
    int channel, sample, position;
};

struct Geometry {
    std::int64_t rows;
    int channels;
    int threads;  // block size; tile width = threads * vec
    int chTiles;  // channel tiles
    std::int64_t rowTiles;
    int blocks;  // grid: a multiple of chTiles, so a block keeps its channel tile
};

struct HistParams {
    int n;       // bins (even)
    int copies;  // shared-memory copies per block (warps share them round-robin)
};

// What the three statistics kernels update, by value.
struct Accumulators {
    PersistentState* st;
    BatchState* batch;
    unsigned* absMaxBits;
    double* sumAbs;
    double* sumSq;
    unsigned long long* hist;       // running histogram
    unsigned long long* batchHist;  // this batch's (and the range growth's scratch)
    unsigned* tileMax;              // float bits per tile; null when k == 0
    const TopEntry* top;            // the running top-k list; null when k == 0
    TopEntry* nextTop;              // where the merge writes the new list
    unsigned long long* cand;       // candidate keys
    unsigned candSize;              // their capacity (k per block at least)
    unsigned directCapacity;        // candidates that fit one merge with the running list
    int k;
    unsigned long long* slotHist;  // first batch in one pass: kRangeSlots × n, by block range
    int* slotExp;                  // their range exponents + kRangeBias (0: free)
};

// First batch in one pass: a block's state in dynamic shared memory after its histogram copies
// and the merge scratch.
struct LocalRange {
    float deferred[kDeferred];
    float range;  // the block's range 2^exponent (0 until it sees a nonzero value)
    int exponent;
    float runMax;    // the block's abs-max so far
    unsigned count;  // values waiting in deferred
    int fallback;    // a deferred value was lost or the range overflowed float
    int conflict;    // the block's range slot holds another exponent
};

template <class T>
constexpr int vecWidth()
{
    return sizeof(T) == 4 ? 4 : 8;  // 16-byte loads
}

// ---- device helpers ----------------------------------------------------------------------------

template <class T, int V>
__device__ __forceinline__ void loadValues(const T* __restrict__ p, float (&v)[V])
{
    if constexpr (sizeof(T) == 4) {
        if constexpr (V == 4) {
            const float4 q = *reinterpret_cast<const float4*>(p);
            v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
        } else {
            v[0] = *reinterpret_cast<const float*>(p);
        }
    } else {
        if constexpr (V == 8) {
            const uint4 q = *reinterpret_cast<const uint4*>(p);
            const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                v[2 * i] = __uint_as_float(w[i] << 16);
                v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            }
        } else {
            v[0] = __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
        }
    }
}

template <class T>
__device__ __forceinline__ float loadOne(const T* p)
{
    if constexpr (sizeof(T) == 4)
        return *reinterpret_cast<const float*>(p);
    else
        return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
}

// Bin of v exactly as ActivationStats::add computes it: int64((double(v) + range) * scale),
// clamped, returned as an offset i = bin - n/2 in [-n/2, n/2 - 1]. With a power-of-two bin count
// the scale is a power of two and a float form is exact: i = floor(v * scale), except that
// double(v) + range rounds to range when -v <= range * 2^-54 (then i = 0). (Checked against the
// double formula over 2·10^8 values, edges and tiny values included.)
struct Binner {
    int n, half;
    float scaleF, negTiny;
    double range, scaleD;

    __device__ static Binner make(double range, int n)
    {
        Binner b;
        b.n = n;
        b.half = n / 2;
        b.range = range;
        b.scaleD = range > 0 ? double(n) / (2 * range) : 0.0;
        b.scaleF = float(b.scaleD);
        b.negTiny = -float(range * 0x1p-54);
        return b;
    }
    template <bool kPow2>
    __device__ __forceinline__ int offset(float v) const
    {
        int i;
        if constexpr (kPow2) {
            i = __float2int_rd(v * scaleF);  // saturates
            if (v >= negTiny) i = max(i, 0);
        } else {
            const double t = __dmul_rn(__dadd_rn(double(v), range), scaleD);
            const long long b = __double2ll_rz(t);
            i = int(min(max(b, 0ll), (long long)(n - 1))) - half;
        }
        return min(max(i, -half), half - 1);
    }
};

// Counts into a shared histogram. The two central bins, where nearly every value lands when a
// few massive activations set the range, are counted in registers; the rest with shared atomics.
struct HistCounter {
    unsigned below = 0, above = 0;  // bins n/2 - 1 and n/2
    __device__ __forceinline__ void add(int i, unsigned* hist, int half)
    {
        below += i == -1;
        above += i == 0;
        if (unsigned(i + 1) > 1u) atomicAdd(&hist[half + i], 1u);
    }
    __device__ __forceinline__ void flush(unsigned* hist, int half)
    {
        if (below) atomicAdd(&hist[half - 1], below);
        if (above) atomicAdd(&hist[half], above);
        below = above = 0;
    }
};

__device__ __forceinline__ float warpMax(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ void zeroShared(unsigned* h, int count)
{
    for (int i = threadIdx.x; i < count; i += blockDim.x) h[i] = 0;
}

// Sums the block's shared histogram copies into the global batch histogram.
__device__ void flushShared(const unsigned* h, const HistParams& hp,
                            unsigned long long* __restrict__ out)
{
    for (int j = threadIdx.x; j < hp.n; j += blockDim.x) {
        unsigned long long s = 0;
        for (int c = 0; c < hp.copies; ++c) s += h[c * hp.n + j];
        if (s) atomicAdd(&out[j], s);
    }
}

__device__ __forceinline__ unsigned long long makeKey(float absValue, unsigned long long order)
{
    return (static_cast<unsigned long long>(__float_as_uint(absValue)) << kOrderBits) |
           (kOrderMask - order);
}

__device__ __forceinline__ unsigned long long keyOrder(unsigned long long key)
{
    return kOrderMask - (key & kOrderMask);
}

// Sorts keys[0, count) descending in place (the tail up to the next power of two is zeroed, and
// zero is below every real key). All threads of the block call it.
__device__ void sortKeysDesc(unsigned long long* keys, int count)
{
    int n = 1;
    while (n < count) n <<= 1;
    for (int i = count + threadIdx.x; i < n; i += blockDim.x) keys[i] = 0;
    __syncthreads();
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
                const int lo = 2 * i - (i & (stride - 1));
                const int hi = lo + stride;
                const bool desc = (lo & size) == 0;
                const unsigned long long x = keys[lo], y = keys[hi];
                if ((x < y) == desc) {
                    keys[lo] = y;
                    keys[hi] = x;
                }
            }
            __syncthreads();
        }
    }
}

// The smallest power of two at or above x (x > 0): exp2(ceil(log2(x))), exactly.
__device__ double pow2Ceil(double x)
{
    int e = 0;
    const double m = frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
    return m == 0.5 ? ldexp(1.0, e - 1) : ldexp(1.0, e);
}

__device__ __forceinline__ unsigned long long globalNs()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Every block of the grid calls this once with all its threads; true in the block that finishes
// last, which then sees the global writes and atomics of all the others (fence, count, fence).
// The counter is left at zero for the next launch.
__device__ bool lastBlockDone(unsigned* counter)
{
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(counter, 1u) == gridDim.x - 1;
        if (last) *counter = 0;
    }
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// Inclusive prefix sum over the block in thread order (blockDim.x a multiple of 32).
__device__ unsigned long long blockInclusiveSum(unsigned long long v)
{
    __shared__ unsigned long long warpSums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += y;
    }
    if (lane == 31) warpSums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        unsigned long long w = lane < int(blockDim.x >> 5) ? warpSums[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned long long y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        warpSums[lane] = w;
    }
    __syncthreads();
    if (warp > 0) v += warpSums[warp - 1];
    __syncthreads();  // warpSums may be reused
    return v;
}

__device__ unsigned long long blockTotal(unsigned long long v)
{
    __shared__ unsigned long long total;
    v = blockInclusiveSum(v);
    if (threadIdx.x == blockDim.x - 1) total = v;
    __syncthreads();
    v = total;
    __syncthreads();
    return v;
}

// Count of |x| bin j of the batch histogram (bins half + j and half - 1 - j), read past L1: other
// blocks of the running kernel added to it.
__device__ __forceinline__ unsigned long long foldedCount(const unsigned long long* batchHist,
                                                          int half, int j)
{
    return __ldcg(batchHist + half + j) + __ldcg(batchHist + half - 1 - j);
}

// The highest |x| bin with at least k values of the batch at or above it; 0 when there is none.
__device__ int topBoundary(const unsigned long long* batchHist, int half, int k)
{
    __shared__ int boundary;
    // Thread t sums chunk u = threads - 1 - t, so the scan runs from the top.
    const int threads = int(blockDim.x);
    const int per = (half + threads - 1) / threads;
    const int u = threads - 1 - int(threadIdx.x);
    const int lo = min(u * per, half), hi = min(lo + per, half);
    unsigned long long chunk = 0;
    for (int j = lo; j < hi; ++j) chunk += foldedCount(batchHist, half, j);
    if (threadIdx.x == 0) boundary = 0;
    const unsigned long long above = blockInclusiveSum(chunk);
    if (above >= (unsigned long long)k && above - chunk < (unsigned long long)k) {
        unsigned long long acc = above - chunk;
        for (int j = hi - 1; j >= lo; --j) {
            acc += foldedCount(batchHist, half, j);
            if (acc >= (unsigned long long)k) {
                boundary = j;
                break;
            }
        }
    }
    __syncthreads();
    return boundary;
}

// The k-th largest of n values (k >= 1); 0 when there are fewer than k. Radix select from the top
// byte: per byte, count the values that share the bytes found so far (warp-aggregated shared
// atomics) and keep the byte at which the count from the top reaches the rank left.
__device__ unsigned kthLargest(const unsigned* values, std::int64_t n, int k)
{
    __shared__ unsigned counts[256];
    __shared__ unsigned found[2];  // byte, rank left within it
    if (n < k) return 0;
    unsigned prefix = 0, mask = 0, need = unsigned(k);
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) counts[i] = 0;
        __syncthreads();
        for (std::int64_t base = 0; base < n; base += blockDim.x) {
            const std::int64_t i = base + threadIdx.x;
            const unsigned v = i < n ? __ldcg(values + i) : 0u;
            const bool match = i < n && (v & mask) == prefix;
            const unsigned digit = match ? (v >> shift) & 255u : 256u;
            const unsigned peers = __match_any_sync(0xffffffffu, digit);
            if (match && int(threadIdx.x & 31) == __ffs(peers) - 1)
                atomicAdd(&counts[digit], unsigned(__popc(peers)));
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l holds bytes 255 - 8l down to 248 - 8l.
            const int lane = int(threadIdx.x);
            unsigned c[8], sum = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                c[i] = counts[255 - 8 * lane - i];
                sum += c[i];
            }
            unsigned incl = sum;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned y = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += y;
            }
            const unsigned before = incl - sum;
            if (before < need && incl >= need) {
                unsigned acc = before;
                for (int i = 0; i < 8; ++i) {
                    if (acc + c[i] >= need) {
                        found[0] = unsigned(255 - 8 * lane - i);
                        found[1] = need - acc;
                        break;
                    }
                    acc += c[i];
                }
            }
        }
        __syncthreads();
        prefix |= found[0] << shift;
        mask |= 255u << shift;
        need = found[1];
        __syncthreads();
    }
    return prefix;
}

// Range growth as ActivationStats::growRange: the first range is the power of two at or above the
// batch max (bins untouched); later the range doubles with pair merges until it covers the batch.
// batchHist is the merge's scratch and is cleared when the batch must be binned again. Run by the
// fused pass's last block; every thread computes the same range. Returns whether to bin again.
__device__ bool growStep(const Accumulators& a, double oldRange, int n, double& range)
{
    const double needed = double(__uint_as_float(__ldcg(&a.batch->maxBits)));
    range = oldRange;
    if (needed > oldRange) {
        if (oldRange == 0) {
            range = pow2Ceil(fmax(needed, 1e-30));
        } else {
            const int q = n / 4;
            while (range < needed) {
                for (int j = threadIdx.x; j < n; j += blockDim.x) {
                    unsigned long long s = 0;
                    if (j >= q && j < q + n / 2) s = a.hist[2 * (j - q)] + a.hist[2 * (j - q) + 1];
                    a.batchHist[j] = s;
                }
                __syncthreads();
                for (int j = threadIdx.x; j < n; j += blockDim.x) a.hist[j] = a.batchHist[j];
                __syncthreads();
                range *= 2;
            }
        }
    }
    const bool rebin = needed > oldRange || oldRange == 0;
    if (rebin)
        for (int j = threadIdx.x; j < n; j += blockDim.x) a.batchHist[j] = 0;
    if (threadIdx.x == 0) {
        a.st->range = range;
        a.batch->rebin = rebin;
        a.batch->maxBits = 0;  // for the next batch
    }
    __syncthreads();
    return rebin;
}

// Adds the batch histogram to the running one and clears it; with k > 0 also sets the top-k
// threshold, the larger of two bounds below which a value has k larger ones in the batch:
// - the histogram: fold it on |x|, find the highest bin f with at least k values at or above it;
//   any value below (f - 2) bin widths has k values strictly larger (one bin of margin for the
//   bin-edge rounding). Coarse when a few massive values set the range;
// - the k-th largest tile abs-max: k tiles each hold a value at least that large.
// The histogram also bounds how many values reach the threshold: few enough, and the candidate
// pass sends them straight to the list. Run by the last block of the pass that finished the batch
// histogram (the fused pass, or the rebin when the range grew).
__device__ void thresholdStep(const Accumulators& a, double range, int n, std::int64_t tiles)
{
    const int half = n / 2;
    float thr = 0.0f;
    unsigned long long passing = 0;
    if (a.k > 0) {
        const int boundary = topBoundary(a.batchHist, half, a.k);
        const double width = 2 * range / n;
        const float thrLo = boundary >= 2 ? __double2float_rd((boundary - 2) * width) : 0.0f;
        const float thrTile = __uint_as_float(kthLargest(a.tileMax, tiles, a.k));
        thr = fmaxf(thrLo, thrTile);
        // A value at or above thr sits in an |x| bin at or above floor(thr / width) - 2 (the
        // binning and this quotient round by a bin at most each); one more for margin.
        int j0 = 0;
        if (width > 0) j0 = int(fmin(fmax(floor(double(thr) / width) - 3, 0.0), double(half - 1)));
        unsigned long long mine = 0;
        for (int j = j0 + int(threadIdx.x); j < half; j += blockDim.x)
            mine += foldedCount(a.batchHist, half, j);
        passing = blockTotal(mine);
    }
    __syncthreads();  // every read of batchHist is done
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        a.hist[j] += __ldcg(a.batchHist + j);
        a.batchHist[j] = 0;
    }
    if (threadIdx.x == 0 && a.k > 0) {
        const bool full = a.st->topCount >= a.k;
        a.batch->thr = thr;
        a.batch->full = full;
        a.batch->floorAbs = full ? fabsf(a.top[a.k - 1].value) : -1.0f;
        a.batch->candCount = 0;
        a.batch->passing = unsigned(min(passing, 0xffffffffull));
        a.batch->direct = passing <= a.directCapacity;
        a.batch->tilesScanned = 0;
    }
    __syncthreads();
}

// floor(i / 2^s) for a bin offset i: the bin at a range 2^s times larger (pow2 bin counts).
__device__ __forceinline__ int coarserOffset(int i, int s)
{
    if (s >= 31) return i < 0 ? -1 : 0;
    return i >= 0 ? i >> s : -(((-i - 1) >> s) + 1);
}

// The block's shared histogram copies re-binned at a range 2^s times larger, into copy 0.
__device__ __forceinline__ void coarsenShared(unsigned* h, unsigned* scratch, const HistParams& hp,
                                              int s)
{
    const int half = hp.n / 2;
    for (int j = threadIdx.x; j < hp.n; j += blockDim.x) scratch[j] = 0;
    __syncthreads();
    for (int c = 0; c < hp.copies; ++c)
        for (int j = threadIdx.x; j < hp.n; j += blockDim.x) {
            const unsigned v = h[c * hp.n + j];
            if (v) atomicAdd(&scratch[half + coarserOffset(j - half, s)], v);
        }
    __syncthreads();
    for (int c = 0; c < hp.copies; ++c)
        for (int j = threadIdx.x; j < hp.n; j += blockDim.x) h[c * hp.n + j] = c ? 0 : scratch[j];
    __syncthreads();
}

// A probe's first batch in one pass: every block binned its values at its own range 2^e (a power
// of two above everything it saw) into slot e. With power-of-two bins, binning at 2^e and
// re-binning at the final range R = 2^E (offset floor(i / 2^(E - e))) equals binning at R,
// provided that e <= E (a block's max exactly R = 2^E would have e = E + 1), and no negative
// value lies in (2^e·2^-54, R·2^-54] (those go to bin 0 at R but not at 2^e, see Binner). Then
// the slots, merged into the batch histogram, are final; otherwise (or when a deferred value
// was lost) the batch is binned again at R. Run by the fused pass's last block after growStep;
// clears the slots for the next first batch. Returns whether the batch must be binned again.
__device__ bool localMerge(const Accumulators& a, double oldRange, double range, bool rebin, int n)
{
    __shared__ int use;
    const int half = n / 2;
    int e = 0;
    frexp(range, &e);
    const int top = e - 1;  // range = 2^top
    if (threadIdx.x == 0) {
        bool ok = oldRange == 0 && range > 0 && __ldcg(&a.batch->localFallback) == 0;
        const unsigned inv = __ldcg(&a.batch->negMinInv);
        if (inv != 0 && double(__uint_as_float(~inv)) <= range * 0x1p-54) ok = false;
        for (int s = 0; s < kRangeSlots; ++s) {
            const int biased = __ldcg(a.slotExp + s);
            if (biased && biased - kRangeBias > top) ok = false;
        }
        use = ok;
    }
    __syncthreads();
    const bool ok = use;
    for (int s = 0; s < kRangeSlots; ++s) {
        const int biased = __ldcg(a.slotExp + s);
        if (!biased) continue;
        unsigned long long* slot = a.slotHist + std::size_t(s) * n;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const unsigned long long count = __ldcg(slot + j);
            if (!count) continue;
            if (ok)
                atomicAdd(&a.batchHist[half + coarserOffset(j - half, top - (biased - kRangeBias))],
                          count);
            slot[j] = 0;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        if (ok) {
            const unsigned long long zeros = __ldcg(&a.batch->zeroOnly);
            if (zeros) atomicAdd(&a.batchHist[half], zeros);
        }
        for (int s = 0; s < kRangeSlots; ++s) a.slotExp[s] = 0;
        a.batch->localFallback = 0;
        a.batch->negMinInv = 0;
        a.batch->zeroOnly = 0;
        a.batch->rebin = !ok;
    }
    if (!ok && !rebin)  // (not on a first batch) the batch histogram was never made
        for (int j = threadIdx.x; j < n; j += blockDim.x) a.batchHist[j] = 0;
    __syncthreads();
    return !ok;
}

// ---- kernels -----------------------------------------------------------------------------------

// The fused pass: per-channel moments and abs-max, batch and tile abs-max, speculative histogram;
// the last block grows the range (and sets the threshold when it did not grow). kLocal (a probe's
// first batch, power-of-two bins): instead of the speculative histogram, each block bins at a
// range of its own — set from its first nonzero tile, read twice (the second time from cache),
// and grown at the end of a tile whose values reached it (they wait in a shared buffer) — and the
// last block merges the blocks' histograms at the final range (localMerge): the batch is read
// once instead of twice.
template <class T, int V, bool kPow2, bool kLocal>
__global__ void __launch_bounds__(kMaxThreads, 2)
    statsKernel(const T* __restrict__ x, Geometry g, HistParams hp, Accumulators a)
{
    extern __shared__ unsigned shHist[];
    __shared__ float warpTileMax[2][kMaxThreads / 32];  // by tile parity (one barrier per tile)
    const double range = a.st->range;
    const bool binning = !kLocal && range > 0;
    Binner binner = Binner::make(range, hp.n);
    unsigned* myHist = shHist + ((threadIdx.x >> 5) % hp.copies) * hp.n;
    unsigned* scratch = shHist + hp.copies * hp.n;                       // kLocal only
    LocalRange& local = *reinterpret_cast<LocalRange*>(scratch + hp.n);  // kLocal only
    float localRange = 0.0f;
    float minNeg = INFINITY;  // smallest |x| of a negative value (kLocal)
    if (binning || kLocal) zeroShared(shHist, hp.n * hp.copies);
    if (kLocal && threadIdx.x == 0) {
        local.range = 0.0f;
        local.exponent = -1024;  // growing from 0: any shift leaves the zeros in the middle bin
        local.runMax = 0.0f;
        local.count = 0;
        local.fallback = 0;
        local.conflict = 0;
    }
    if constexpr (kLocal) binner = Binner::make(0.0, hp.n);
    __syncthreads();

    const int chTile = blockIdx.x % g.chTiles;
    const int c0 = chTile * g.threads * V + threadIdx.x * V;
    const bool active = c0 < g.channels;
    const std::int64_t step = gridDim.x / g.chTiles;
    if constexpr (kLocal) {
        // The block's range from its first tile (read twice, the second time from cache): a power
        // of two above every value, so that no value sits on it. Later values at or above it wait
        // until the end of their tile, where the range grows (from 0 too: zeros stay in the
        // middle bin at any range).
        const std::int64_t rt = blockIdx.x / g.chTiles;
        const std::int64_t r0 = rt * kRowsPerTile;
        const std::int64_t r1 = min(r0 + kRowsPerTile, g.rows);
        float m = 0.0f;
        if (active && rt < g.rowTiles)
            for (std::int64_t r = r0; r < r1; r += kUnroll) {
                float v[kUnroll][V];
#pragma unroll
                for (int u = 0; u < kUnroll; ++u)
                    if (r + u < r1) loadValues<T, V>(x + (r + u) * g.channels + c0, v[u]);
#pragma unroll
                for (int u = 0; u < kUnroll; ++u) {
                    if (r + u >= r1) break;
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        const float av = fabsf(v[u][i]);
                        if (av <= FLT_MAX) m = fmaxf(m, av);
                    }
                }
            }
        m = warpMax(m);
        if ((threadIdx.x & 31) == 0) warpTileMax[1][threadIdx.x >> 5] = m;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 0; w < int(blockDim.x >> 5); ++w) m = fmaxf(m, warpTileMax[1][w]);
            if (m > 0.0f) {
                local.exponent = ilogbf(m) + 1;
                local.range = local.exponent > 127 ? INFINITY : ldexpf(1.0f, local.exponent);
                local.fallback |= local.exponent > 127;
            } else if (blockIdx.x / g.chTiles < g.rowTiles) {
                // A first tile of zeros only: its first nonzero tile would wait whole in the
                // deferred buffer (over kDeferred values unless the tile is narrow), so the batch
                // is binned again at its final range. (The "zeros first" row that was 2 bins off
                // on the H100 was the CPU binning zeros at range 0 in bin 0, not this path.)
                local.fallback = 1;
            }
        }
        __syncthreads();
        localRange = local.range;
        binner = Binner::make(localRange, hp.n);
    }
    float amax[V];
    double sa[V], sq[V];
#pragma unroll
    for (int i = 0; i < V; ++i) amax[i] = 0.0f, sa[i] = 0.0, sq[i] = 0.0;
    HistCounter counter;
    int parity = 0;
    for (std::int64_t rt = blockIdx.x / g.chTiles; rt < g.rowTiles; rt += step) {
        const std::int64_t r0 = rt * kRowsPerTile;
        const std::int64_t r1 = min(r0 + kRowsPerTile, g.rows);
        float tmax = 0.0f;
        float tam[V];  // this tile's abs-max per channel
#pragma unroll
        for (int i = 0; i < V; ++i) tam[i] = 0.0f;
        if (active) {
            for (std::int64_t r = r0; r < r1; r += kUnroll) {
                float v[kUnroll][V];
#pragma unroll
                for (int u = 0; u < kUnroll; ++u)
                    if (r + u < r1) loadValues<T, V>(x + (r + u) * g.channels + c0, v[u]);
                // Sums of kUnroll rows in float (at most kUnroll ulp relative), then in double.
                float pa[V], pq[V];
#pragma unroll
                for (int i = 0; i < V; ++i) pa[i] = 0.0f, pq[i] = 0.0f;
#pragma unroll
                for (int u = 0; u < kUnroll; ++u) {
                    if (r + u >= r1) break;
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        const float av = fabsf(v[u][i]);
                        if (!(av <= FLT_MAX)) continue;  // NaN and inf are skipped, as on the CPU
                        tam[i] = fmaxf(tam[i], av);
                        pa[i] += av;
                        pq[i] = fmaf(v[u][i], v[u][i], pq[i]);
                        if constexpr (kLocal) {
                            if (v[u][i] < 0.0f) minNeg = fminf(minNeg, av);
                            if (av < localRange || av == 0.0f) {
                                counter.add(binner.offset<true>(v[u][i]), myHist, hp.n / 2);
                            } else {
                                const unsigned slot = atomicAdd(&local.count, 1u);
                                if (slot < kDeferred) local.deferred[slot] = v[u][i];
                            }
                        } else if (binning) {
                            counter.add(binner.offset<kPow2>(v[u][i]), myHist, hp.n / 2);
                        }
                    }
                }
#pragma unroll
                for (int i = 0; i < V; ++i) {
                    sa[i] += double(pa[i]);
                    sq[i] += double(pq[i]);
                }
            }
#pragma unroll
            for (int i = 0; i < V; ++i) {
                amax[i] = fmaxf(amax[i], tam[i]);
                tmax = fmaxf(tmax, tam[i]);
            }
        }
        tmax = warpMax(tmax);
        if (a.tileMax || kLocal) {
            // Every tile is one block's: one plain store each, so no memset and no atomics.
            if ((threadIdx.x & 31) == 0) warpTileMax[parity][threadIdx.x >> 5] = tmax;
            __syncthreads();
            if (threadIdx.x == 0) {
                float m = 0.0f;
                for (int w = 0; w < int(blockDim.x >> 5); ++w) m = fmaxf(m, warpTileMax[parity][w]);
                if (a.tileMax) a.tileMax[rt * g.chTiles + chTile] = __float_as_uint(m);
                if (kLocal) local.runMax = fmaxf(local.runMax, m);
            }
            parity ^= 1;
        }
        if constexpr (kLocal) {
            __syncthreads();  // local.count and local.runMax
            const unsigned waiting = local.count;
            if (waiting > 0) {
                // Values reached the block's range: a range above the block's max, the histogram
                // re-binned at it, then the waiting values.
                counter.flush(myHist, hp.n / 2);
                const int grown = ilogbf(local.runMax) + 1;
                coarsenShared(shHist, scratch, hp, grown - local.exponent);
                localRange = grown > 127 ? INFINITY : ldexpf(1.0f, grown);
                binner = Binner::make(localRange, hp.n);
                for (unsigned d = threadIdx.x; d < min(waiting, unsigned(kDeferred));
                     d += blockDim.x)
                    atomicAdd(&shHist[hp.n / 2 + binner.offset<true>(local.deferred[d])], 1u);
                __syncthreads();
                if (threadIdx.x == 0) {
                    local.fallback |= waiting > unsigned(kDeferred) || grown > 127;
                    local.exponent = grown;
                    local.range = localRange;
                    local.count = 0;
                }
                __syncthreads();
            }
        }
    }
    if (binning || kLocal) counter.flush(myHist, hp.n / 2);
    if (active) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
            if (amax[i] > 0.0f) atomicMax(&a.absMaxBits[c0 + i], __float_as_uint(amax[i]));
            if (sa[i] != 0.0) atomicAdd(&a.sumAbs[c0 + i], sa[i]);
            if (sq[i] != 0.0) atomicAdd(&a.sumSq[c0 + i], sq[i]);
        }
    }
    float threadMax = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) threadMax = fmaxf(threadMax, amax[i]);
    threadMax = warpMax(threadMax);
    if ((threadIdx.x & 31) == 0 && threadMax > 0.0f)
        atomicMax(&a.batch->maxBits, __float_as_uint(threadMax));
    if constexpr (kLocal) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            minNeg = fminf(minNeg, __shfl_xor_sync(0xffffffffu, minNeg, o));
        if ((threadIdx.x & 31) == 0 && minNeg < INFINITY)
            atomicMax(&a.batch->negMinInv, ~__float_as_uint(minNeg));
    }
    __syncthreads();
    if (binning) flushShared(shHist, hp, a.batchHist);
    if constexpr (kLocal) {
        if (localRange == 0.0f) {
            // Nothing but zeros (and non-finite values): all in the middle bin at any range.
            if (threadIdx.x == 0) {
                unsigned long long zeros = 0;
                for (int c = 0; c < hp.copies; ++c) zeros += shHist[c * hp.n + hp.n / 2];
                if (zeros) atomicAdd(&a.batch->zeroOnly, zeros);
            }
        } else {
            const int slot = ((local.exponent % kRangeSlots) + kRangeSlots) % kRangeSlots;
            if (threadIdx.x == 0) {
                const int biased = local.exponent + kRangeBias;
                const int held = atomicCAS(a.slotExp + slot, 0, biased);
                local.conflict = held != 0 && held != biased;
            }
            __syncthreads();
            if (!local.conflict) flushShared(shHist, hp, a.slotHist + std::size_t(slot) * hp.n);
        }
        if (threadIdx.x == 0 && (local.fallback || local.conflict))
            atomicOr(&a.batch->localFallback, 1u);
    }

    if (!lastBlockDone(&a.batch->done[0])) return;
    const unsigned long long t0 = globalNs();
    double grown = 0;
    bool rebin = growStep(a, range, hp.n, grown);
    if constexpr (kLocal) rebin = localMerge(a, range, grown, rebin, hp.n);
    const unsigned long long t1 = globalNs();
    if (!rebin) thresholdStep(a, grown, hp.n, g.rowTiles * g.chTiles);
    if (threadIdx.x == 0) {
        a.batch->tailNs[0] = unsigned(t1 - t0);
        a.batch->tailNs[1] = rebin ? 0u : unsigned(globalNs() - t1);
    }
}

// Bins the batch again at the grown range (exits at once when the range did not grow). With a
// zero range (nothing but zeros so far) the values go to the middle bin, as on the CPU. The last
// block sets the threshold.
template <class T, int V, bool kPow2>
__global__ void __launch_bounds__(kMaxThreads)
    rebinKernel(const T* __restrict__ x, Geometry g, HistParams hp, Accumulators a)
{
    if (!a.batch->rebin) return;
    extern __shared__ unsigned shHist[];
    const double range = a.st->range;
    const Binner binner = Binner::make(range, hp.n);
    unsigned* myHist = shHist + ((threadIdx.x >> 5) % hp.copies) * hp.n;
    zeroShared(shHist, hp.n * hp.copies);
    __syncthreads();
    const int chTile = blockIdx.x % g.chTiles;
    const int c0 = chTile * g.threads * V + threadIdx.x * V;
    HistCounter counter;
    unsigned zeroRangeCount = 0;
    const std::int64_t step = gridDim.x / g.chTiles;
    if (c0 < g.channels) {
        for (std::int64_t rt = blockIdx.x / g.chTiles; rt < g.rowTiles; rt += step) {
            const std::int64_t r0 = rt * kRowsPerTile;
            const std::int64_t r1 = min(r0 + kRowsPerTile, g.rows);
            for (std::int64_t r = r0; r < r1; r += kUnroll) {
                float v[kUnroll][V];
#pragma unroll
                for (int u = 0; u < kUnroll; ++u)
                    if (r + u < r1) loadValues<T, V>(x + (r + u) * g.channels + c0, v[u]);
#pragma unroll
                for (int u = 0; u < kUnroll; ++u) {
                    if (r + u >= r1) break;
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        if (!(fabsf(v[u][i]) <= FLT_MAX)) continue;
                        if (range > 0)
                            counter.add(binner.offset<kPow2>(v[u][i]), myHist, hp.n / 2);
                        else
                            ++zeroRangeCount;
                    }
                }
            }
        }
    }
    counter.flush(myHist, hp.n / 2);
    if (zeroRangeCount) atomicAdd(&myHist[hp.n / 2], zeroRangeCount);
    __syncthreads();
    flushShared(shHist, hp, a.batchHist);

    if (!lastBlockDone(&a.batch->done[1])) return;
    const unsigned long long t0 = globalNs();
    thresholdStep(a, range, hp.n, g.rowTiles * g.chTiles);
    if (threadIdx.x == 0) a.batch->tailNs[1] = unsigned(globalNs() - t0);
}

// Merges the shared key buffer down to its k largest keys; returns the new count.
__device__ int mergeKeys(unsigned long long* keys, int count, int k, unsigned long long* floorKey)
{
    sortKeysDesc(keys, count);
    const int kept = min(count, k);
    if (kept == k && threadIdx.x == 0) *floorKey = keys[k - 1];
    __syncthreads();
    return kept;
}

// Top-k candidates: the values of the tiles that reach the threshold (and, once the list is full,
// exceed its k-th |value|). When the histogram shows that few can pass they go straight to the
// candidate list; otherwise each block keeps the top-k of its own (at most k per block, appended
// at the end). The last block merges the running list (orders 0..count-1) and the candidates down
// to k and resolves the entries to value, channel, sample and position.
template <class T, int V>
__global__ void __launch_bounds__(kMaxThreads)
    candidateKernel(const T* __restrict__ x, Geometry g, Accumulators a,
                    std::int64_t tokensPerSequence, int firstSample)
{
    __shared__ unsigned long long keys[kKeyBuffer];
    __shared__ int count;
    __shared__ unsigned long long floorKey;  // the block's k-th key once it holds k
    __shared__ unsigned scanned;
    BatchState* batch = a.batch;
    const int k = a.k;
    const float thr = batch->thr;
    const float floorAbs = batch->floorAbs;
    const bool full = batch->full;
    const bool direct = batch->direct;
    if (threadIdx.x == 0) {
        count = 0;
        floorKey = 0;
        scanned = 0;
    }
    __syncthreads();
    const int chTile = blockIdx.x % g.chTiles;
    const int c0 = chTile * g.threads * V + threadIdx.x * V;
    const bool active = c0 < g.channels;
    const std::int64_t step = gridDim.x / g.chTiles;
    if (direct) {
        // No barriers here: threads leave inactive tiles on their own.
        for (std::int64_t rt = blockIdx.x / g.chTiles; rt < g.rowTiles; rt += step) {
            const float tm = __uint_as_float(a.tileMax[rt * g.chTiles + chTile]);
            if (tm < thr || (full && tm <= floorAbs)) continue;
            if (threadIdx.x == 0) ++scanned;
            if (!active) continue;
            const std::int64_t r0 = rt * kRowsPerTile;
            const std::int64_t r1 = min(r0 + kRowsPerTile, g.rows);
            for (std::int64_t r = r0; r < r1; r += kUnroll) {
                float v[kUnroll][V];
#pragma unroll
                for (int u = 0; u < kUnroll; ++u)
                    if (r + u < r1) loadValues<T, V>(x + (r + u) * g.channels + c0, v[u]);
#pragma unroll
                for (int u = 0; u < kUnroll; ++u) {
                    if (r + u >= r1) break;
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        const float av = fabsf(v[u][i]);
                        if (!(av <= FLT_MAX) || av < thr || (full && av <= floorAbs)) continue;
                        const unsigned long long order = (unsigned long long)k +
                                                         (unsigned long long)(r + u) * g.channels +
                                                         (c0 + i);
                        const unsigned slot = atomicAdd(&batch->candCount, 1u);
                        if (slot < a.directCapacity)
                            a.cand[slot] = makeKey(av, order);
                        else
                            a.st->overflow = 1;
                    }
                }
            }
        }
    } else {
        const int mergeAt = kKeyBuffer - int(blockDim.x) * V;
        for (std::int64_t rt = blockIdx.x / g.chTiles; rt < g.rowTiles; rt += step) {
            const float tm = __uint_as_float(a.tileMax[rt * g.chTiles + chTile]);
            if (tm < thr || (full && tm <= floorAbs)) continue;  // uniform across the block
            if (threadIdx.x == 0) ++scanned;
            const std::int64_t r0 = rt * kRowsPerTile;
            const std::int64_t r1 = min(r0 + kRowsPerTile, g.rows);
            for (std::int64_t r = r0; r < r1; ++r) {
                if (active) {
                    float v[V];
                    loadValues<T, V>(x + r * g.channels + c0, v);
                    const unsigned long long fk = floorKey;
#pragma unroll
                    for (int i = 0; i < V; ++i) {
                        const float av = fabsf(v[i]);
                        if (!(av <= FLT_MAX) || av < thr || (full && av <= floorAbs)) continue;
                        const unsigned long long order =
                            (unsigned long long)k + (unsigned long long)r * g.channels + (c0 + i);
                        const unsigned long long key = makeKey(av, order);
                        if (key > fk) keys[atomicAdd(&count, 1)] = key;
                    }
                }
                __syncthreads();
                const int c = count;
                if (c > mergeAt) {
                    const int kept = mergeKeys(keys, c, k, &floorKey);
                    if (threadIdx.x == 0) count = kept;
                }
                __syncthreads();
            }
        }
        const int c = count;
        if (c > 0) {
            const int kept = mergeKeys(keys, c, k, &floorKey);
            __shared__ unsigned base;
            if (threadIdx.x == 0) base = atomicAdd(&batch->candCount, unsigned(kept));
            __syncthreads();
            for (int i = threadIdx.x; i < kept; i += blockDim.x) {
                if (base + unsigned(i) < a.candSize)
                    a.cand[base + i] = keys[i];
                else
                    a.st->overflow = 1;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0 && scanned) atomicAdd(&batch->tilesScanned, (unsigned long long)scanned);

    if (!lastBlockDone(&batch->done[2])) return;
    const unsigned long long t0 = globalNs();
    const unsigned limit = direct ? a.directCapacity : a.candSize;
    const unsigned m = min(__ldcg(&batch->candCount), limit);
    const int oldCount = a.st->topCount;
    for (int i = threadIdx.x; i < oldCount; i += blockDim.x)
        keys[i] = makeKey(fabsf(a.top[i].value), (unsigned long long)i);
    int n = oldCount;  // the running list is sorted already
    for (unsigned from = 0; from < m;) {
        const unsigned take = min(m - from, unsigned(kKeyBuffer - n));
        for (unsigned i = threadIdx.x; i < take; i += blockDim.x)
            keys[n + i] = __ldcg(a.cand + from + i);
        __syncthreads();
        n = mergeKeys(keys, n + int(take), k, &floorKey);
        from += take;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const unsigned long long order = keyOrder(keys[p]);
        TopEntry e;
        if (order < (unsigned long long)k) {
            e = a.top[order];
        } else {
            const unsigned long long idx = order - k;
            const std::int64_t row = std::int64_t(idx / g.channels);
            e.value = loadOne(x + idx);
            e.channel = int(idx % g.channels);
            e.sample = firstSample + int(row / tokensPerSequence);
            e.position = int(row % tokensPerSequence);
        }
        a.nextTop[p] = e;
    }
    if (threadIdx.x == 0) {
        a.st->topCount = n;
        batch->tailNs[2] = unsigned(globalNs() - t0);
    }
}

__global__ void addToDouble(const float* __restrict__ src, double* __restrict__ dst, std::size_t n)
{
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
         i += std::size_t(gridDim.x) * blockDim.x)
        dst[i] += double(src[i]);
}

// Half layouts: the upper triangle (row-major, column >= row) of c × c only.
__global__ void addUpperToDouble(const float* __restrict__ src, double* __restrict__ dst, int c)
{
    for (int r = blockIdx.x; r < c; r += gridDim.x) {
        const std::size_t row = std::size_t(r) * c;
        for (int j = r + threadIdx.x; j < c; j += blockDim.x) dst[row + j] += double(src[row + j]);
    }
}

// h[r][j] = h[j][r] for j < r (row-major c × c): block (bx, by) of 32 × 32, by >= bx, reads the
// upper block (rows bx, columns by) coalesced and writes it transposed into the lower block.
// Blocks above the diagonal exit; a diagonal block reads only upper and writes only lower entries.
template <class T>
__global__ void mirrorUpper(T* h, int c)
{
    __shared__ T tile[32][33];
    const int bx = blockIdx.x, by = blockIdx.y;
    if (bx > by) return;
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        const int r = bx * 32 + j, col = by * 32 + threadIdx.x;
        if (r < c && col < c) tile[j][threadIdx.x] = h[std::size_t(r) * c + col];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        const int r = by * 32 + j, col = bx * 32 + threadIdx.x;
        if (r < c && col < r) h[std::size_t(r) * c + col] = tile[threadIdx.x][j];
    }
}

// Grouped layout: per chunk of rows, the A, B and C pointer arrays of cublasGemmBatchedEx from
// the tiles' element offsets (A and B into the chunk of X, C into the accumulator).
__global__ void tilePointerKernel(const char* x, int elementBytes, std::int64_t chunkElements,
                                  int chunks, const std::int64_t* __restrict__ offsets, int tiles,
                                  float* h, void** out)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks * tiles;
         i += gridDim.x * blockDim.x) {
        const int chunk = i / tiles, t = i % tiles;
        const char* base = x + std::int64_t(chunk) * chunkElements * elementBytes;
        void** o = out + std::int64_t(chunk) * 3 * tiles;
        o[t] = const_cast<char*>(base + offsets[t] * elementBytes);
        o[tiles + t] = const_cast<char*>(base + offsets[tiles + t] * elementBytes);
        o[2 * tiles + t] = h + offsets[2 * tiles + t];
    }
}

// ---- host side ---------------------------------------------------------------------------------
template <class T>
class DeviceArray {
public:
    DeviceArray() = default;
    ~DeviceArray() { release(); }
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    Status allocate(std::size_t count)
    {
        release();
        if (count == 0) return {};
        QL_CUDA_TRY(cudaMalloc(&m_ptr, count * sizeof(T)));
        m_count = count;
        return {};
    }
    void release()
    {
        if (m_ptr) cudaFree(m_ptr);
        m_ptr = nullptr;
        m_count = 0;
    }
    T* get() const { return m_ptr; }
    std::size_t size() const { return m_count; }
    std::size_t bytes() const { return m_count * sizeof(T); }

private:
    T* m_ptr = nullptr;
    std::size_t m_count = 0;
};

Error blasError(cublasStatus_t status, const char* what)
{
    return makeError(
        status == CUBLAS_STATUS_ALLOC_FAILED ? ErrorCode::OutOfMemory : ErrorCode::Device,
        std::string(what) + " failed: " + cublasGetStatusString(status));
}

// Restores a cuBLAS handle's stream and pointer mode when it goes out of scope.
class BlasScope {
public:
    BlasScope(cublasHandle_t h, cudaStream_t stream) : m_h(h)
    {
        cublasGetStream(h, &m_stream);
        cublasGetPointerMode(h, &m_mode);
        cublasSetStream(h, stream);
        cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST);
    }
    ~BlasScope()
    {
        cublasSetStream(m_h, m_stream);
        cublasSetPointerMode(m_h, m_mode);
    }
    BlasScope(const BlasScope&) = delete;
    BlasScope& operator=(const BlasScope&) = delete;

private:
    cublasHandle_t m_h;
    cudaStream_t m_stream = nullptr;
    cublasPointerMode_t m_mode = CUBLAS_POINTER_MODE_HOST;
};

// Tiles of a half layout: `count` tiles of `edge` channels, the last one `last` wide (== edge when
// edge divides the channels); `equal` tiles are edge wide.
struct TileGrid {
    int edge = 0, count = 0, last = 0, equal = 0;
    static TileGrid of(int channels, int edge)
    {
        TileGrid t;
        t.edge = edge;
        t.count = (channels + edge - 1) / edge;
        t.last = channels - (t.count - 1) * edge;
        t.equal = t.last == edge ? t.count : t.count - 1;
        return t;
    }
};

}  // namespace

struct DeviceStats::Impl {
    DeviceStatsConfig config;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    int bins = 0;
    bool pow2Bins = false;
    int sms = 1;
    std::int64_t tokens = 0;
    int current = 0;                // which top buffer holds the running list
    int blocksPerSm[2][2][2] = {};  // fused pass occupancy by [bf16][vector loads][first batch]

    HessianTiling tiling = HessianTiling::Full;  // resolved (never Auto)
    TileGrid tileGrid;                           // half layouts
    int groupedTiles = 0;     // Grouped: tiles in the pointer arrays (equal ones, then last row)
    int groupedEqual = 0;     // of which edge × edge
    bool lowerStale = false;  // half layout: the lower triangle is not the mirror of the upper

    DeviceArray<unsigned> absMaxBits;
    DeviceArray<double> sumAbs, sumSq;
    DeviceArray<unsigned long long> hist, batchHist;
    DeviceArray<PersistentState> state;
    DeviceArray<BatchState> batch;
    DeviceArray<TopEntry> top[2];
    DeviceArray<unsigned long long> cand;
    DeviceArray<unsigned> tileMax;
    DeviceArray<unsigned long long> slotHist;  // first batch in one pass: by block range
    DeviceArray<int> slotExp;
    DeviceArray<float> hessian32;   // Float32: the accumulator; Float64: one batch's product
    DeviceArray<double> hessian64;  // Float64 accumulator
    DeviceArray<std::int64_t> tileOffsets;  // Grouped: A, B, C element offsets per tile
    DeviceArray<void*> tilePointers;        // Grouped: per chunk, A, B, C pointer arrays

    bool profiling = false;
    cudaEvent_t marks[5] = {};  // before the fused pass, after it, the rebin, candidates, Hessian
    int lastBlocks = 0;
    std::uint64_t lastTiles = 0;
    bool lastLocal = false;  // the latest add ran the first-batch one-pass kernel

    Impl() = default;
    ~Impl()
    {
        for (cudaEvent_t e : marks)
            if (e) cudaEventDestroy(e);
    }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    Status allocate();
    Status zero();
    Status mark(int i)
    {
        if (profiling) QL_CUDA_TRY(cudaEventRecord(marks[i], stream));
        return {};
    }
    Geometry geometry(std::int64_t rows, int vec, int threads, int maxBlocks) const;
    HistParams histParams(int threads) const;
    template <class T>
    Status add(const T* x, std::int64_t rows, std::int64_t sequences, std::int32_t firstSample);
    template <class T, int V>
    Status launchStats(const T* x, std::int64_t rows, std::int64_t tokensPerSequence,
                       std::int32_t firstSample);
    template <class T>
    Status addHessian(const T* x, std::int64_t rows);
    template <class T>
    Status gemmTiles(const T* a, int k, const float* beta, std::int64_t rowOffset,
                     std::int64_t colOffset, int m, int n, int count);
    Status symmetrize();
};

Status DeviceStats::Impl::allocate()
{
    const std::size_t c = config.channels;
    if (config.statistics) {
        QL_TRY_STATUS(absMaxBits.allocate(c));
        QL_TRY_STATUS(sumAbs.allocate(c));
        QL_TRY_STATUS(sumSq.allocate(c));
        QL_TRY_STATUS(hist.allocate(bins));
        QL_TRY_STATUS(batchHist.allocate(bins));
        QL_TRY_STATUS(state.allocate(1));
        QL_TRY_STATUS(batch.allocate(1));
        if (config.topK > 0) {
            QL_TRY_STATUS(top[0].allocate(config.topK));
            QL_TRY_STATUS(top[1].allocate(config.topK));
            QL_TRY_STATUS(cand.allocate(
                std::max<std::size_t>(std::size_t(config.topK) * kBlocksPerSm * sms, kKeyBuffer)));
        }
        if (config.firstBatchOnePass && pow2Bins) {
            QL_TRY_STATUS(slotHist.allocate(std::size_t(kRangeSlots) * bins));
            QL_TRY_STATUS(slotExp.allocate(kRangeSlots));
        }
    }
    if (config.hessian != HessianMode::None) QL_TRY_STATUS(hessian32.allocate(c * c));
    if (config.hessian == HessianMode::Float64) QL_TRY_STATUS(hessian64.allocate(c * c));
    if (config.hessian != HessianMode::None && tiling == HessianTiling::Grouped) {
        // Tile (P, Q), P >= Q in tile units, is rows P and columns Q of cuBLAS's column-major
        // accumulator: A = X's columns P, B = X's columns Q, C at P·edge + Q·edge·c.
        const TileGrid& t = tileGrid;
        std::vector<std::int64_t> a, b, cOff;
        auto push = [&](int p, int q) {
            a.push_back(std::int64_t(p) * t.edge);
            b.push_back(std::int64_t(q) * t.edge);
            cOff.push_back(std::int64_t(p) * t.edge + std::int64_t(q) * t.edge * std::int64_t(c));
        };
        for (int p = 0; p < t.equal; ++p)
            for (int q = 0; q <= p; ++q) push(p, q);
        groupedEqual = int(a.size());
        if (t.equal < t.count)
            for (int q = 0; q < t.count - 1; ++q) push(t.count - 1, q);
        groupedTiles = int(a.size());
        std::vector<std::int64_t> all = a;
        all.insert(all.end(), b.begin(), b.end());
        all.insert(all.end(), cOff.begin(), cOff.end());
        QL_TRY_STATUS(tileOffsets.allocate(all.size()));
        QL_CUDA_TRY(cudaMemcpy(tileOffsets.get(), all.data(), all.size() * sizeof(std::int64_t),
                               cudaMemcpyHostToDevice));
    }
    return zero();
}

Status DeviceStats::Impl::zero()
{
    auto clear = [&](void* p, std::size_t bytes) {
        return p ? cudaMemsetAsync(p, 0, bytes, stream) : cudaSuccess;
    };
    QL_CUDA_TRY(clear(absMaxBits.get(), absMaxBits.bytes()));
    QL_CUDA_TRY(clear(sumAbs.get(), sumAbs.bytes()));
    QL_CUDA_TRY(clear(sumSq.get(), sumSq.bytes()));
    QL_CUDA_TRY(clear(hist.get(), hist.bytes()));
    QL_CUDA_TRY(clear(batchHist.get(), batchHist.bytes()));
    QL_CUDA_TRY(clear(state.get(), state.bytes()));
    QL_CUDA_TRY(clear(batch.get(), batch.bytes()));
    QL_CUDA_TRY(clear(slotHist.get(), slotHist.bytes()));
    QL_CUDA_TRY(clear(slotExp.get(), slotExp.bytes()));
    QL_CUDA_TRY(clear(hessian32.get(), hessian32.bytes()));
    QL_CUDA_TRY(clear(hessian64.get(), hessian64.bytes()));
    tokens = 0;
    current = 0;
    lowerStale = false;
    return {};
}

Geometry DeviceStats::Impl::geometry(std::int64_t rows, int vec, int threads, int maxBlocks) const
{
    Geometry g{};
    g.rows = rows;
    g.channels = config.channels;
    g.threads = threads;
    const int width = g.threads * vec;
    g.chTiles = (config.channels + width - 1) / width;
    g.rowTiles = (rows + kRowsPerTile - 1) / kRowsPerTile;
    const std::int64_t perTile = std::max<std::int64_t>(1, maxBlocks / g.chTiles);
    g.blocks = int(g.chTiles * std::min<std::int64_t>(g.rowTiles, perTile));
    return g;
}

HistParams DeviceStats::Impl::histParams(int threads) const
{
    HistParams hp{};
    hp.n = bins;
    const int warps = threads / 32;
    int copies = 1;
    while (copies * 2 <= warps && copies * 2 <= 8 &&
           std::size_t(copies) * 2 * bins * sizeof(unsigned) <= 32 * 1024)
        copies *= 2;
    hp.copies = copies;
    return hp;
}

template <class T, int V>
Status DeviceStats::Impl::launchStats(const T* x, std::int64_t rows, std::int64_t tokensPerSequence,
                                      std::int32_t firstSample)
{
    const int lanes = (config.channels + V - 1) / V;
    const int threads = std::min(kMaxThreads, (lanes + 31) / 32 * 32);
    const HistParams hp = histParams(threads);
    const std::size_t smem = std::size_t(hp.copies) * hp.n * sizeof(unsigned);
    // A probe's first batch (nothing added since creation or reset(): the range is 0) with
    // power-of-two bins is binned in the fused pass at block-local ranges; the merge scratch and
    // the block's state follow its histogram copies.
    const bool local = tokens == 0 && config.firstBatchOnePass && pow2Bins && slotHist.get();
    const std::size_t statsSmem =
        local ? smem + std::size_t(hp.n) * sizeof(unsigned) + sizeof(LocalRange) : smem;
    auto statsFn = local      ? statsKernel<T, V, true, true>
                   : pow2Bins ? statsKernel<T, V, true, false>
                              : statsKernel<T, V, false, false>;
    auto rebinFn = pow2Bins ? rebinKernel<T, V, true> : rebinKernel<T, V, false>;
    if (statsSmem > 48 * 1024)
        QL_CUDA_TRY(cudaFuncSetAttribute(statsFn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(statsSmem)));
    // As many blocks as stay resident: a second wave would only add per-block atomics and
    // histogram flushes.
    int& perSm = blocksPerSm[sizeof(T) == 2 ? 1 : 0][V > 1 ? 1 : 0][local ? 1 : 0];
    if (perSm == 0) {
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, statsFn, threads, statsSmem) !=
                cudaSuccess ||
            perSm < 1) {
            (void)cudaGetLastError();
            perSm = 2;
        }
        perSm = std::min(perSm, kBlocksPerSm);
    }
    const Geometry g = geometry(rows, V, threads, perSm * sms);
    const int k = config.topK;
    const std::size_t tiles = std::size_t(g.chTiles) * g.rowTiles;
    if (k > 0 && tileMax.size() < tiles) QL_TRY_STATUS(tileMax.allocate(tiles + tiles / 4));
    const std::size_t candidates =
        std::max<std::size_t>(std::size_t(k) * g.blocks, kKeyBuffer);  // k per block at most
    if (k > 0 && cand.size() < candidates) QL_TRY_STATUS(cand.allocate(candidates));
    lastBlocks = g.blocks;
    lastTiles = tiles;
    lastLocal = local;

    Accumulators acc{};
    acc.st = state.get();
    acc.batch = batch.get();
    acc.absMaxBits = absMaxBits.get();
    acc.sumAbs = sumAbs.get();
    acc.sumSq = sumSq.get();
    acc.hist = hist.get();
    acc.batchHist = batchHist.get();
    acc.k = k;
    if (k > 0) {
        acc.tileMax = tileMax.get();
        acc.top = top[current].get();
        acc.nextTop = top[1 - current].get();
        acc.cand = cand.get();
        acc.candSize = unsigned(std::min<std::size_t>(cand.size(), UINT_MAX));
        acc.directCapacity =
            unsigned(config.topKDirectLimit < 0 ? kKeyBuffer - k
                                                : std::min(config.topKDirectLimit, kKeyBuffer - k));
    }

    acc.slotHist = slotHist.get();
    acc.slotExp = slotExp.get();
    statsFn<<<g.blocks, g.threads, statsSmem, stream>>>(x, g, hp, acc);
    QL_CUDA_TRY(cudaGetLastError());
    QL_TRY_STATUS(mark(1));
    rebinFn<<<g.blocks, g.threads, smem, stream>>>(x, g, hp, acc);
    QL_CUDA_TRY(cudaGetLastError());
    QL_TRY_STATUS(mark(2));
    if (k > 0) {
        candidateKernel<T, V>
            <<<g.blocks, g.threads, 0, stream>>>(x, g, acc, tokensPerSequence, firstSample);
        QL_CUDA_TRY(cudaGetLastError());
        current = 1 - current;
    }
    return mark(3);
}

template <class T>
Status DeviceStats::Impl::gemmTiles(const T* a, int k, const float* beta, std::int64_t rowOffset,
                                    std::int64_t colOffset, int m, int n, int count)
{
    // Tiles i = 0..count-1 of m × n at (rowOffset + i·edge, colOffset + i·edge) of the
    // column-major accumulator: H[p][q] += Σ_r X[r][p] X[r][q] over the chunk's k rows at `a`.
    constexpr bool kBf16 = sizeof(T) == 2;
    const cudaDataType_t type = kBf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute = kBf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
    const std::int64_t c = config.channels;
    const float one = 1.0f;
    const T* A = a + rowOffset;
    const T* B = a + colOffset;
    float* C = hessian32.get() + rowOffset + colOffset * c;
    cublasStatus_t s;
    if (count == 1) {
        s = cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &one, A, type, int(c), B, type,
                         int(c), beta, C, CUDA_R_32F, int(c), compute, CUBLAS_GEMM_DEFAULT);
    } else {
        const long long edge = tileGrid.edge;
        s = cublasGemmStridedBatchedEx(blas, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &one, A, type,
                                       int(c), edge, B, type, int(c), edge, beta, C, CUDA_R_32F,
                                       int(c), edge + edge * c, count, compute,
                                       CUBLAS_GEMM_DEFAULT);
    }
    if (s != CUBLAS_STATUS_SUCCESS) return blasError(s, "cublasGemmEx (Hessian tiles)");
    return {};
}

template <class T>
Status DeviceStats::Impl::addHessian(const T* x, std::int64_t rows)
{
    constexpr bool kBf16 = sizeof(T) == 2;
    const int c = config.channels;
    const cudaDataType_t type = kBf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute = kBf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC;
    const float one = 1.0f, zero = 0.0f;
    BlasScope scope(blas, stream);
    std::int64_t chunk = config.hessianChunkRows > 0 ? config.hessianChunkRows
                                                     : (kBf16 ? kBf16GemmRows : kMaxGemmRows);
    chunk = std::min(chunk, kMaxGemmRows);
    const std::int64_t chunks = (rows + chunk - 1) / chunk;
    const TileGrid& t = tileGrid;
    if (tiling == HessianTiling::Grouped) {
        const std::size_t pointers = std::size_t(chunks) * 3 * groupedTiles;
        if (tilePointers.size() < pointers) QL_TRY_STATUS(tilePointers.allocate(pointers));
        const int total = int(chunks) * groupedTiles;
        tilePointerKernel<<<(total + 255) / 256, 256, 0, stream>>>(
            reinterpret_cast<const char*>(x), int(sizeof(T)), chunk * c, int(chunks),
            tileOffsets.get(), groupedTiles, hessian32.get(), tilePointers.get());
        QL_CUDA_TRY(cudaGetLastError());
    }
    for (std::int64_t i = 0; i < chunks; ++i) {
        const std::int64_t r0 = i * chunk;
        const int k = int(std::min(chunk, rows - r0));
        // Row-major X (rows × c) is column-major Xᵀ (c × rows, ld c): H = Xᵀ · (Xᵀ)ᵀ.
        const float* beta = (config.hessian == HessianMode::Float32 || r0 > 0) ? &one : &zero;
        const T* a = x + r0 * c;
        if (tiling == HessianTiling::Full) {
            cublasStatus_t s =
                cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_T, c, c, k, &one, a, type, c, a, type, c,
                             beta, hessian32.get(), CUDA_R_32F, c, compute, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) return blasError(s, "cublasGemmEx (Hessian)");
        } else if (tiling == HessianTiling::Diagonals) {
            // Diagonal d: the equal tiles (d + j, j), then the tile of the narrow last row.
            const std::int64_t e = t.edge;
            for (int d = 0; d < t.count; ++d) {
                if (t.equal - d > 0)
                    QL_TRY_STATUS(gemmTiles(a, k, beta, d * e, 0, t.edge, t.edge, t.equal - d));
                if (t.equal < t.count) {
                    const int q = t.count - 1 - d;
                    QL_TRY_STATUS(gemmTiles(a, k, beta, (t.count - 1) * e, q * e, t.last,
                                            q == t.count - 1 ? t.last : t.edge, 1));
                }
            }
        } else {
            void** p = tilePointers.get() + i * 3 * groupedTiles;
            auto batched = [&](int first, int count, int m) -> Status {
                const cublasStatus_t s = cublasGemmBatchedEx(
                    blas, CUBLAS_OP_N, CUBLAS_OP_T, m, t.edge, k, &one, p + first, type, c,
                    p + groupedTiles + first, type, c, beta, p + 2 * groupedTiles + first,
                    CUDA_R_32F, c, count, compute, CUBLAS_GEMM_DEFAULT);
                if (s != CUBLAS_STATUS_SUCCESS)
                    return blasError(s, "cublasGemmBatchedEx (Hessian tiles)");
                return {};
            };
            QL_TRY_STATUS(batched(0, groupedEqual, t.edge));
            if (groupedTiles > groupedEqual) {
                QL_TRY_STATUS(batched(groupedEqual, groupedTiles - groupedEqual, t.last));
                const std::int64_t corner = std::int64_t(t.count - 1) * t.edge;
                QL_TRY_STATUS(gemmTiles(a, k, beta, corner, corner, t.last, t.last, 1));
            }
        }
    }
    if (config.hessian == HessianMode::Float64) {
        const std::size_t n = std::size_t(c) * c;
        if (tiling == HessianTiling::Full) {
            const int blocks = int(std::min<std::size_t>((n + 255) / 256, std::size_t(sms) * 8));
            addToDouble<<<blocks, 256, 0, stream>>>(hessian32.get(), hessian64.get(), n);
        } else {
            addUpperToDouble<<<std::min(c, sms * 8), 256, 0, stream>>>(hessian32.get(),
                                                                       hessian64.get(), c);
        }
        QL_CUDA_TRY(cudaGetLastError());
    }
    if (tiling != HessianTiling::Full) lowerStale = true;
    return {};
}

Status DeviceStats::Impl::symmetrize()
{
    if (!lowerStale) return {};
    const int c = config.channels;
    const int blocks = (c + 31) / 32;
    const dim3 grid(blocks, blocks), block(32, 8);
    if (config.hessian == HessianMode::Float64)
        mirrorUpper<double><<<grid, block, 0, stream>>>(hessian64.get(), c);
    else
        mirrorUpper<float><<<grid, block, 0, stream>>>(hessian32.get(), c);
    QL_CUDA_TRY(cudaGetLastError());
    lowerStale = false;
    return {};
}

template <class T>
Status DeviceStats::Impl::add(const T* x, std::int64_t rows, std::int64_t sequences,
                              std::int32_t firstSample)
{
    const int c = config.channels;
    if (rows < 0 || sequences < 1 || rows % sequences != 0)
        return makeError(ErrorCode::InvalidArgument,
                         "DeviceStats::add: " + std::to_string(rows) + " rows are not " +
                             std::to_string(sequences) + " equal sequences");
    if (rows == 0) return {};
    if (!x) return makeError(ErrorCode::InvalidArgument, "DeviceStats::add: null input");
    const std::int64_t tokensPerSequence = rows / sequences;
    if (tokensPerSequence > INT_MAX ||
        (config.statistics && config.topK > 0 &&
         std::uint64_t(rows) * std::uint64_t(c) + config.topK >= kOrderMask))
        return makeError(ErrorCode::InvalidArgument,
                         "DeviceStats::add: batch of " + std::to_string(rows) + " × " +
                             std::to_string(c) + " values is too large for one call; split it");
    QL_TRY_STATUS(mark(0));
    if (config.statistics) {
        constexpr int kVec = vecWidth<T>();
        const bool vec = c % kVec == 0 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
        if (vec)
            QL_TRY_STATUS((launchStats<T, kVec>(x, rows, tokensPerSequence, firstSample)));
        else
            QL_TRY_STATUS((launchStats<T, 1>(x, rows, tokensPerSequence, firstSample)));
    } else {
        for (int i = 1; i <= 3; ++i) QL_TRY_STATUS(mark(i));
    }
    if (config.hessian != HessianMode::None) QL_TRY_STATUS(addHessian(x, rows));
    QL_TRY_STATUS(mark(4));
    tokens += rows;
    return {};
}

DeviceStats::DeviceStats() = default;
DeviceStats::~DeviceStats() = default;
DeviceStats::DeviceStats(DeviceStats&&) noexcept = default;
DeviceStats& DeviceStats::operator=(DeviceStats&&) noexcept = default;

Result<DeviceStats> DeviceStats::create(const DeviceStatsConfig& config, cudaStream_t stream,
                                        cublasHandle_t blas)
{
    if (config.channels <= 0)
        return makeError(ErrorCode::InvalidArgument, "DeviceStats: channel count must be positive");
    const int bins = std::max(2, config.histogramBins + (config.histogramBins & 1));
    if (bins > kMaxHistogramBins)
        return makeError(ErrorCode::Unsupported,
                         "DeviceStats: at most " + std::to_string(kMaxHistogramBins) +
                             " histogram bins on the GPU (asked for " + std::to_string(bins) + ")");
    if (config.topK < 0 || config.topK > kMaxTopK)
        return makeError(ErrorCode::Unsupported,
                         "DeviceStats: top-k must be within 0.." + std::to_string(kMaxTopK));
    if (config.hessian != HessianMode::None && !blas)
        return makeError(ErrorCode::InvalidArgument,
                         "DeviceStats: a Hessian needs a cuBLAS handle");
    if (config.hessianTile != 0 && (config.hessianTile < 16 || config.hessianTile % 16 != 0))
        return makeError(ErrorCode::InvalidArgument,
                         "DeviceStats: the Hessian tile must be a positive multiple of 16, not " +
                             std::to_string(config.hessianTile));
    DeviceStats s;
    s.m_impl = std::make_unique<Impl>();
    Impl& m = *s.m_impl;
    m.config = config;
    m.stream = stream;
    m.blas = blas;
    m.bins = bins;
    m.pow2Bins = (bins & (bins - 1)) == 0;
    const int edge = config.hessianTile > 0 ? config.hessianTile : kDefaultHessianTile;
    m.tiling = config.hessianTiling;
    if (m.tiling == HessianTiling::Auto)
        m.tiling =
            config.channels >= kAutoHalfChannels ? HessianTiling::Diagonals : HessianTiling::Full;
    if (edge >= config.channels) m.tiling = HessianTiling::Full;
    if (m.tiling != HessianTiling::Full) m.tileGrid = TileGrid::of(config.channels, edge);
    int device = 0;
    QL_CUDA_TRY(cudaGetDevice(&device));
    QL_CUDA_TRY(cudaDeviceGetAttribute(&m.sms, cudaDevAttrMultiProcessorCount, device));
    QL_TRY_STATUS(m.allocate());
    return Result<DeviceStats>(std::move(s));
}

Status DeviceStats::add(const float* dX, std::int64_t rows, std::int64_t sequences,
                        std::int32_t firstSample)
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    return m_impl->add(dX, rows, sequences, firstSample);
}

Status DeviceStats::add(const __nv_bfloat16* dX, std::int64_t rows, std::int64_t sequences,
                        std::int32_t firstSample)
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    return m_impl->add(dX, rows, sequences, firstSample);
}

Status DeviceStats::reset()
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    return m_impl->zero();
}

Status DeviceStats::symmetrize()
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    return m_impl->symmetrize();
}

Status DeviceStats::setProfiling(bool on)
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    Impl& m = *m_impl;
    if (on)
        for (cudaEvent_t& e : m.marks)
            if (!e) QL_CUDA_TRY(cudaEventCreate(&e));
    m.profiling = on;
    return {};
}

Result<DeviceStatsProfile> DeviceStats::lastProfile() const
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    const Impl& m = *m_impl;
    if (!m.profiling || !m.marks[0])
        return makeError(ErrorCode::InvalidArgument, "DeviceStats: profiling is off");
    QL_CUDA_TRY(cudaStreamSynchronize(m.stream));
    float ms[4] = {};
    for (int i = 0; i < 4; ++i)
        QL_CUDA_TRY(cudaEventElapsedTime(&ms[i], m.marks[i], m.marks[i + 1]));
    DeviceStatsProfile p;
    p.statsMs = ms[0];
    p.rebinMs = ms[1];
    p.candidatesMs = ms[2];
    p.hessianMs = ms[3];
    p.blocks = m.lastBlocks;
    p.tiles = m.lastTiles;
    if (m.config.statistics) {
        BatchState b{};
        QL_CUDA_TRY(cudaMemcpy(&b, m.batch.get(), sizeof b, cudaMemcpyDeviceToHost));
        p.growUs = b.tailNs[0] * 1e-3;
        p.thresholdUs = b.tailNs[1] * 1e-3;
        p.mergeUs = m.config.topK > 0 ? b.tailNs[2] * 1e-3 : 0.0;
        p.rebinned = b.rebin != 0;
        p.onePass = m.lastLocal && !p.rebinned;
        if (m.config.topK > 0) {
            p.direct = b.direct != 0;
            p.candidates = b.candCount;
            p.passing = b.passing;
            p.threshold = b.thr;
            p.tilesScanned = b.tilesScanned;
        }
    }
    return p;
}

DownloadLane::~DownloadLane()
{
    for (int i = 0; i < 2; ++i) {
        if (m_done[i]) cudaEventDestroy(m_done[i]);
        if (m_staging[i]) cudaFreeHost(m_staging[i]);
    }
    if (m_stream) cudaStreamDestroy(m_stream);
}

DownloadLane::DownloadLane(DownloadLane&& o) noexcept
{
    *this = std::move(o);
}

DownloadLane& DownloadLane::operator=(DownloadLane&& o) noexcept
{
    std::swap(m_stream, o.m_stream);
    std::swap(m_done, o.m_done);
    std::swap(m_staging, o.m_staging);
    std::swap(m_chunk, o.m_chunk);
    return *this;
}

Result<DownloadLane> DownloadLane::create(std::size_t chunkBytes)
{
    DownloadLane lane;
    lane.m_chunk = std::max<std::size_t>(chunkBytes, 4096);
    QL_CUDA_TRY(cudaStreamCreateWithFlags(&lane.m_stream, cudaStreamNonBlocking));
    for (int i = 0; i < 2; ++i) {
        QL_CUDA_TRY(cudaEventCreateWithFlags(&lane.m_done[i], cudaEventDisableTiming));
        if (cudaMallocHost(&lane.m_staging[i], lane.m_chunk) != cudaSuccess) {
            (void)cudaGetLastError();
            return makeError(ErrorCode::OutOfMemory,
                             "cannot allocate " + std::to_string(lane.m_chunk >> 20) + " MiB" +
                                 " of page-locked host memory for downloads");
        }
    }
    return Result<DownloadLane>(std::move(lane));
}

Status DownloadLane::copy(void* dst, const void* src, std::size_t bytes)
{
    auto* out = static_cast<char*>(dst);
    const auto* in = static_cast<const char*>(src);
    const std::size_t chunks = (bytes + m_chunk - 1) / m_chunk;
    // Chunk i lands in staging[i % 2]; while its DMA runs, chunk i - 1 is copied out on the host.
    // Chunk i + 1 reuses chunk i - 1's buffer only after that host copy is done.
    auto size = [&](std::size_t i) { return std::min(m_chunk, bytes - i * m_chunk); };
    for (std::size_t i = 0; i <= chunks; ++i) {
        if (i < chunks) {
            QL_CUDA_TRY(cudaMemcpyAsync(m_staging[i % 2], in + i * m_chunk, size(i),
                                        cudaMemcpyDeviceToHost, m_stream));
            QL_CUDA_TRY(cudaEventRecord(m_done[i % 2], m_stream));
        }
        if (i > 0) {
            const std::size_t p = i - 1;
            QL_CUDA_TRY(cudaEventSynchronize(m_done[p % 2]));
            std::memcpy(out + p * m_chunk, m_staging[p % 2], size(p));
        }
    }
    return {};
}

Status DeviceStats::downloadParts(DeviceStatsParts& out, DownloadLane* lane) const
{
    if (!m_impl) return makeError(ErrorCode::InvalidArgument, "DeviceStats: not created");
    QL_TRY_STATUS(m_impl->symmetrize());
    const Impl& m = *m_impl;
    QL_CUDA_TRY(cudaStreamSynchronize(m.stream));
    const std::size_t c = m.config.channels;
    out = DeviceStatsParts{};
    out.channels = m.config.channels;
    out.tokens = m.tokens;
    out.topK = m.config.topK;
    out.hessian = m.config.hessian;
    out.absMax.assign(c, 0.0f);
    out.sumAbs.assign(c, 0.0);
    out.sumSquare.assign(c, 0.0);
    out.counts.assign(m.bins, 0);
    if (m.config.statistics) {
        static_assert(sizeof(float) == sizeof(unsigned));
        QL_CUDA_TRY(cudaMemcpy(out.absMax.data(), m.absMaxBits.get(), c * sizeof(float),
                               cudaMemcpyDeviceToHost));
        QL_CUDA_TRY(cudaMemcpy(out.sumAbs.data(), m.sumAbs.get(), c * sizeof(double),
                               cudaMemcpyDeviceToHost));
        QL_CUDA_TRY(cudaMemcpy(out.sumSquare.data(), m.sumSq.get(), c * sizeof(double),
                               cudaMemcpyDeviceToHost));
        QL_CUDA_TRY(cudaMemcpy(out.counts.data(), m.hist.get(), m.bins * sizeof(std::uint64_t),
                               cudaMemcpyDeviceToHost));
        PersistentState st{};
        QL_CUDA_TRY(cudaMemcpy(&st, m.state.get(), sizeof st, cudaMemcpyDeviceToHost));
        out.range = st.range;
        if (st.overflow)
            return makeError(ErrorCode::Device,
                             "DeviceStats: the top-k candidate list overflowed (a bug: please "
                             "report it with the calibration settings)");
        if (m.config.topK > 0 && st.topCount > 0) {
            std::vector<TopEntry> top(st.topCount);
            QL_CUDA_TRY(cudaMemcpy(top.data(), m.top[m.current].get(),
                                   top.size() * sizeof(TopEntry), cudaMemcpyDeviceToHost));
            for (const auto& e : top) out.top.push_back({e.value, e.channel, e.sample, e.position});
        }
    }
    if (m.config.hessian == HessianMode::Float32) {
        out.hessianValues32.resize(c * c);
        const std::size_t bytes = out.hessianValues32.size() * sizeof(float);
        if (lane)
            QL_TRY_STATUS(lane->copy(out.hessianValues32.data(), m.hessian32.get(), bytes));
        else
            QL_CUDA_TRY(cudaMemcpy(out.hessianValues32.data(), m.hessian32.get(), bytes,
                                   cudaMemcpyDeviceToHost));
    } else if (m.config.hessian == HessianMode::Float64) {
        out.hessianValues.resize(c * c);
        const std::size_t bytes = out.hessianValues.size() * sizeof(double);
        if (lane)
            QL_TRY_STATUS(lane->copy(out.hessianValues.data(), m.hessian64.get(), bytes));
        else
            QL_CUDA_TRY(cudaMemcpy(out.hessianValues.data(), m.hessian64.get(), bytes,
                                   cudaMemcpyDeviceToHost));
    }
    return {};
}

std::int32_t DeviceStats::channels() const
{
    return m_impl ? m_impl->config.channels : 0;
}

std::int64_t DeviceStats::tokenCount() const
{
    return m_impl ? m_impl->tokens : 0;
}

const float* DeviceStats::deviceHessian32() const
{
    return m_impl && m_impl->config.hessian == HessianMode::Float32 ? m_impl->hessian32.get()
                                                                    : nullptr;
}

const double* DeviceStats::deviceHessian64() const
{
    return m_impl ? m_impl->hessian64.get() : nullptr;
}

bool DeviceStats::hessianHalf() const
{
    return m_impl && m_impl->config.hessian != HessianMode::None &&
           m_impl->tiling != HessianTiling::Full;
}

int DeviceStats::hessianTile() const
{
    return hessianHalf() ? m_impl->tileGrid.edge : 0;
}

std::uint64_t DeviceStats::deviceBytes() const
{
    if (!m_impl) return 0;
    const Impl& m = *m_impl;
    return m.absMaxBits.bytes() + m.sumAbs.bytes() + m.sumSq.bytes() + m.hist.bytes() +
           m.batchHist.bytes() + m.state.bytes() + m.batch.bytes() + m.top[0].bytes() +
           m.top[1].bytes() + m.cand.bytes() + m.tileMax.bytes() + m.slotHist.bytes() +
           m.slotExp.bytes() + m.hessian32.bytes() + m.hessian64.bytes() + m.tileOffsets.bytes() +
           m.tilePointers.bytes();
}

}  // namespace ql::cuda
