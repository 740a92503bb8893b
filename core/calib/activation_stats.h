// Activation statistics collected at the input of a linear layer while calibration text runs
// through the model: per-channel abs-max, mean |x| and mean x², a signed histogram, the largest
// activations with their position (massive activations), and the Hessian XᵀX for GPTQ.
//
// The histogram is linear and symmetric over [-range, range] with a fixed bin count. When a value
// beyond the range arrives, the range doubles and adjacent bins merge, so the histogram stays exact
// in counts, mergeable across batches, and independent of the order the batches come in up to that
// doubling. Range methods (min-max, percentile, MSE-optimal, KL-optimal) read the histogram.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/result.h"

namespace ql {

struct TopActivation {
    float value = 0;  // signed activation
    std::int32_t channel = 0;
    std::int32_t sample = 0;    // calibration window index
    std::int32_t position = 0;  // token position within the window
};

enum class HessianPrecision { None, Float32, Float64 };

struct SymmetricHistogram {
    double range = 0;  // covers [-range, range]
    std::vector<std::uint64_t> counts;
    double binWidth() const { return counts.empty() ? 0 : 2 * range / counts.size(); }
    double binCenter(std::size_t i) const { return -range + (i + 0.5) * binWidth(); }
    std::uint64_t total() const;
};

class ActivationStats {
public:
    ActivationStats() = default;
    ActivationStats(std::int32_t channels, HessianPrecision hessian, int histogramBins = 2048,
                    int topK = 32);

    // x: tokens × channels, row-major. `sample` and `firstPosition` locate the rows for top-k.
    void add(std::span<const float> x, std::int64_t tokens, std::int32_t sample,
             std::int32_t firstPosition = 0);
    // Combine statistics gathered on another thread or device (same channel count).
    Status merge(const ActivationStats& other);

    std::int32_t channels() const { return m_channels; }
    std::int64_t tokenCount() const { return m_tokens; }
    const std::vector<float>& channelAbsMax() const { return m_absMax; }
    std::vector<double> channelMeanAbs() const;
    std::vector<double> channelMeanSquare() const;
    const SymmetricHistogram& histogram() const { return m_hist; }
    const std::vector<TopActivation>& top() const { return m_top; }  // by descending |value|
    HessianPrecision hessianPrecision() const { return m_hessianPrecision; }
    // Σ xᵀx over all tokens, channels × channels row-major, in double (float64 accumulation, or the
    // float32 accumulator widened).
    std::vector<double> hessian() const;
    // The float32 accumulator itself (precision Float32), without hessian()'s double copy;
    // empty for the other precisions.
    std::span<const float> hessianF32() const { return m_hessianF32; }

    // Raw accumulators, for the session file.
    const std::vector<double>& sumAbs() const { return m_sumAbs; }
    const std::vector<double>& sumSquare() const { return m_sumSq; }
    static ActivationStats fromParts(std::int32_t channels, std::int64_t tokens,
                                     std::vector<float> absMax, std::vector<double> sumAbs,
                                     std::vector<double> sumSq, SymmetricHistogram hist,
                                     std::vector<TopActivation> top, HessianPrecision precision,
                                     std::vector<double> hessian, int topK);
    // The same with a float32 Hessian kept as is (precision Float32; no double copy of a
    // channels² matrix, which for a GPU download of every probe of an 8B model is gigabytes).
    static ActivationStats fromParts(std::int32_t channels, std::int64_t tokens,
                                     std::vector<float> absMax, std::vector<double> sumAbs,
                                     std::vector<double> sumSq, SymmetricHistogram hist,
                                     std::vector<TopActivation> top, std::vector<float> hessianF32,
                                     int topK);

private:
    void growRange(double needed);
    void pushTop(const TopActivation& a);

    std::int32_t m_channels = 0;
    std::int64_t m_tokens = 0;
    int m_topK = 32;
    std::vector<float> m_absMax;
    std::vector<double> m_sumAbs;
    std::vector<double> m_sumSq;
    SymmetricHistogram m_hist;
    std::vector<TopActivation> m_top;  // kept sorted by descending |value|
    HessianPrecision m_hessianPrecision = HessianPrecision::None;
    std::vector<float> m_hessianF32;
    std::vector<double> m_hessianF64;
};

// Clipping ranges for symmetric quantization of activations.
enum class RangeMethod { MinMax, Percentile999, Percentile9999, Mse, Entropy };
const char* rangeMethodName(RangeMethod method);

struct ActivationRange {
    RangeMethod method = RangeMethod::MinMax;
    double clip = 0;          // quantize to [-clip, clip]
    double mse = 0;           // expected squared error per activation at `bits`, from the histogram
    double clippedShare = 0;  // share of activations beyond the clip
};

// All methods at a given bit width (MSE- and entropy-optimal depend on it).
std::vector<ActivationRange> computeActivationRanges(const SymmetricHistogram& hist, int bits = 8);
// Expected squared error of symmetric uniform quantization with `bits` over the histogram.
double quantizationMse(const SymmetricHistogram& hist, double clip, int bits);

}  // namespace ql
