// Error metrics, accumulated in double. The Hessian-weighted error is computed per row as
// d^T H d with Eigen (a cols x cols symmetric matrix-vector product per row), in row blocks so
// that the product runs as a matrix-matrix multiply.
#include "quant/error_metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "util/serial_threads.h"

namespace ql {

Result<ErrorMetrics> computeErrorMetrics(std::span<const float> reference,
                                         std::span<const float> approx)
{
    if (reference.size() != approx.size())
        return makeError(ErrorCode::InvalidArgument,
                         "error metrics: " + std::to_string(reference.size()) + " reference and " +
                             std::to_string(approx.size()) + " quantized values");
    ErrorMetrics m;
    m.count = std::int64_t(reference.size());
    if (m.count == 0) return m;
    // Fixed chunks summed in order: the same result on any number of threads (a thread team
    // only for large tensors, see util/serial_threads.h).
    constexpr std::int64_t kChunk = std::int64_t(1) << 16;
    const std::int64_t chunks = (m.count + kChunk - 1) / kChunk;
    struct Part {
        double se = 0, ss = 0, maxAbs = 0;
        std::int64_t maxIndex = -1;
    };
    std::vector<Part> parts(static_cast<std::size_t>(chunks));
#pragma omp parallel for schedule(static) if (chunks > 64)
    for (std::int64_t c = 0; c < chunks; ++c) {
        Part p;
        const std::int64_t end = std::min(m.count, (c + 1) * kChunk);
        for (std::int64_t i = c * kChunk; i < end; ++i) {
            const double d = double(approx[std::size_t(i)]) - double(reference[std::size_t(i)]);
            p.se += d * d;
            p.ss += double(reference[std::size_t(i)]) * double(reference[std::size_t(i)]);
            if (std::fabs(d) > p.maxAbs || (p.maxIndex < 0 && std::isnan(d))) {
                p.maxAbs = std::fabs(d);
                p.maxIndex = i;
            }
        }
        parts[std::size_t(c)] = p;
    }
    double se = 0, ss = 0;
    for (const Part& p : parts) {
        se += p.se;
        ss += p.ss;
        if (p.maxAbs > m.maxAbsError || (m.maxAbsIndex < 0 && p.maxIndex >= 0)) {
            m.maxAbsError = p.maxAbs;
            m.maxAbsIndex = p.maxIndex;
        }
    }
    m.mse = se / double(m.count);
    m.rmse = std::sqrt(m.mse);
    m.signalPower = ss / double(m.count);
    m.relativeRmse = m.signalPower > 0 ? m.rmse / std::sqrt(m.signalPower) : 0.0;
    m.sqnrDb = m.mse > 0 ? 10.0 * std::log10(m.signalPower / m.mse)
                         : std::numeric_limits<double>::infinity();
    return m;
}

Result<double> importanceWeightedMse(std::span<const float> reference,
                                     std::span<const float> approx, std::int64_t rows,
                                     std::int64_t cols, std::span<const double> importance)
{
    if (rows <= 0 || cols <= 0 || reference.size() != std::size_t(rows * cols) ||
        approx.size() != reference.size() || importance.size() != std::size_t(cols))
        return makeError(ErrorCode::InvalidArgument, "weighted error: inconsistent sizes");
    double sum = 0;
    for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t c = 0; c < cols; ++c) {
            const double d = double(approx[r * cols + c]) - double(reference[r * cols + c]);
            sum += importance[c] * d * d;
        }
    }
    return sum / double(rows * cols);
}

Result<OutputError> hessianWeightedError(std::span<const float> w, std::span<const float> wq,
                                         std::int64_t rows, std::int64_t cols,
                                         std::span<const double> hessian)
{
    if (rows <= 0 || cols <= 0 || w.size() != std::size_t(rows * cols) || wq.size() != w.size())
        return makeError(ErrorCode::InvalidArgument, "Hessian-weighted error: weights are not " +
                                                         std::to_string(rows) + " x " +
                                                         std::to_string(cols));
    if (hessian.size() != std::size_t(cols * cols))
        return makeError(ErrorCode::InvalidArgument, "Hessian-weighted error: H has " +
                                                         std::to_string(hessian.size()) +
                                                         " entries, " + std::to_string(cols) +
                                                         " x " + std::to_string(cols) + " needed");
    using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::Map<const RowMatrix> H(hessian.data(), cols, cols);
    OutputError out;
    const std::int64_t block = 64;
    RowMatrix d, x;
    const SerialThreads serial(double(block) * double(cols) * double(cols) < kSerialMacs);
    for (std::int64_t r0 = 0; r0 < rows; r0 += block) {
        const std::int64_t n = std::min(block, rows - r0);
        d.resize(n, cols);
        x.resize(n, cols);
        for (std::int64_t i = 0; i < n; ++i) {
            for (std::int64_t c = 0; c < cols; ++c) {
                const std::size_t k = std::size_t((r0 + i) * cols + c);
                x(i, c) = w[k];
                d(i, c) = double(wq[k]) - double(w[k]);
            }
        }
        out.weighted += (d * H).cwiseProduct(d).sum();
        out.reference += (x * H).cwiseProduct(x).sum();
    }
    out.relative = out.reference > 0 ? out.weighted / out.reference : 0.0;
    return out;
}

}  // namespace ql
