// RTN driver: validate, let the format's codec compute tensor-wide parameters, then encode rows in
// parallel. Work is handed out in chunks from an atomic counter; the calling thread takes chunks
// too and is the only one that reports progress, so callbacks never run on a worker thread.
#include "quant/rtn.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "quant/ggml_dequant.h"

namespace ql {

Status parallelForRows(std::int64_t rows, std::int64_t chunkRows,
                       const std::function<void(std::int64_t, std::int64_t)>& fn,
                       const ProgressFn& progress, std::string_view what, int threads)
{
    if (rows <= 0) return {};
    chunkRows = std::max<std::int64_t>(1, chunkRows);
    const std::int64_t chunks = (rows + chunkRows - 1) / chunkRows;
    int n = threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency()));
    n = int(std::min<std::int64_t>(n, chunks));

    std::atomic<std::int64_t> next{0};
    std::atomic<std::int64_t> done{0};
    std::atomic<bool> cancelled{false};
    auto work = [&](bool reporter) {
        while (!cancelled.load(std::memory_order_relaxed)) {
            const std::int64_t c = next.fetch_add(1);
            if (c >= chunks) break;
            const std::int64_t r0 = c * chunkRows;
            fn(r0, std::min(rows, r0 + chunkRows));
            const std::int64_t d = done.fetch_add(1) + 1;
            // 1.0 is reported once the work is done (below): a stop asked for then would throw
            // finished work away (as tensor_stats.cpp's forEachChunk).
            if (reporter && d < chunks &&
                !reportProgress(progress, double(d) / double(chunks), what))
                cancelled.store(true);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(std::size_t(n > 0 ? n - 1 : 0));
    for (int t = 1; t < n; ++t) pool.emplace_back(work, false);
    work(true);
    for (auto& t : pool) t.join();
    if (cancelled.load())
        return makeError(ErrorCode::Cancelled,
                         std::string(what.empty() ? "work" : what) + " cancelled");
    // The last chunk may have finished on a worker; the work is done either way.
    (void)reportProgress(progress, 1.0, what);
    return {};
}

Result<QuantizedTensor> quantizeRtn(const float* w, std::int64_t rows, std::int64_t cols,
                                    const QuantFormat& format, const float* importance,
                                    const ProgressFn& progress, int threads)
{
    if (!w) return makeError(ErrorCode::InvalidArgument, "no weights given");
    QL_TRY_STATUS(checkFormatFits(format, rows, cols));
    if (!reportProgress(progress, 0.0, "quantizing"))
        return makeError(ErrorCode::Cancelled, "quantization cancelled");

    QuantizedTensor q;
    q.format = format;
    q.rows = rows;
    q.cols = cols;
    const FormatCodec& codec = codecFor(format.kind);
    try {
        QL_TRY_STATUS(codec.prepare(w, importance, q));
    } catch (const std::bad_alloc&) {
        return makeError(ErrorCode::OutOfMemory, "out of memory for a " + std::to_string(rows) +
                                                     " x " + std::to_string(cols) + " " +
                                                     formatToString(format) + " tensor");
    }
    // About 64K weights per chunk: small enough to balance, large enough to amortise the
    // scheduling; the slow searched formats get smaller chunks for smoother progress.
    const bool searched = format.kind == QuantKind::Ggml;
    const std::int64_t target = searched ? 16384 : 65536;
    const std::int64_t chunkRows = std::max<std::int64_t>(1, target / cols);
    const std::string what = "quantizing to " + formatToString(format);
    QL_TRY_STATUS(parallelForRows(
        rows, chunkRows,
        [&](std::int64_t r0, std::int64_t r1) { codec.encodeRows(w, importance, r0, r1, q); },
        progress, what, threads));
    return q;
}

Result<QuantizedTensor> quantizeRtn(const Model& model, const TensorInfo& tensor,
                                    const QuantFormat& format, const float* importance,
                                    const ProgressFn& progress, int threads)
{
    auto decoded = dequantizeTensor(model, tensor);
    if (!decoded) return decoded.error();
    const std::int64_t rows = std::max<std::int64_t>(1, tensor.rows());
    const std::int64_t cols = tensor.cols();
    if (format.kind == QuantKind::Ggml) {
        if (auto fits = checkFormatFits(format, rows, cols); !fits)
            return makeError(fits.error().code, tensor.name + ": " + fits.error().message);
    }
    return quantizeRtn(decoded->data(), rows, cols, format, importance, progress, threads);
}

}  // namespace ql
