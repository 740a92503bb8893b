// Quantization error of a tensor: element statistics (MSE, SQNR, max |error|) and the output error
// a calibration Hessian predicts, tr(dW H dW^T) with dW = W_q - W and H = sum_t x_t x_t^T over the
// layer's calibration inputs (ActivationStats::hessian, cols x cols): the summed squared error
// of the layer's outputs over those inputs, which is what GPTQ minimises.
#pragma once

#include <cstdint>
#include <span>

#include "util/result.h"

namespace ql {

struct ErrorMetrics {
    std::int64_t count = 0;
    double mse = 0;           // mean (q - w)^2
    double rmse = 0;          // sqrt(mse)
    double signalPower = 0;   // mean w^2
    double relativeRmse = 0;  // rmse / sqrt(signalPower)
    double sqnrDb = 0;        // 10 log10(signalPower / mse); +inf when exact
    double maxAbsError = 0;
    std::int64_t maxAbsIndex = -1;  // where max |q - w| occurs
};

// reference and approx must have the same size.
Result<ErrorMetrics> computeErrorMetrics(std::span<const float> reference,
                                         std::span<const float> approx);

// sum over rows r, columns c of importance[c] * (q - w)^2, divided by rows * cols: the error that
// RTN's importance weighting minimises (importance: cols values, e.g. mean x^2 per input channel).
Result<double> importanceWeightedMse(std::span<const float> reference,
                                     std::span<const float> approx, std::int64_t rows,
                                     std::int64_t cols, std::span<const double> importance);

struct OutputError {
    double weighted = 0;   // tr(dW H dW^T)
    double reference = 0;  // tr(W H W^T), the output energy, for scale
    double relative = 0;   // weighted / reference
};

// w, wq: rows x cols row-major; hessian: cols x cols row-major (symmetric).
Result<OutputError> hessianWeightedError(std::span<const float> w, std::span<const float> wq,
                                         std::int64_t rows, std::int64_t cols,
                                         std::span<const double> hessian);

}  // namespace ql
