// CPU reference implementations of the transformer ops the forward pass is made of. They are the
// oracle a GPU backend is checked against (kernels/ implements the same ops with the same
// arguments), so each states its numerics: float32 storage, float32 GEMM accumulation (Eigen),
// float32 softmax with the row maximum subtracted; RMSNorm's mean square and the RoPE angles are
// computed in double, then rounded to float.
//
// Activations are row-major matrices, one row per token (T × features), as in ggml and PyTorch.
// Weights of linear layers are row-major {out_features, in_features}: y = x Wᵀ + b.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "util/result.h"

namespace ql {

using MatrixXfRowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// How RoPE pairs the dimensions of a head.
enum class RopeStyle {
    AdjacentPairs,  // (x[2i], x[2i+1]): Meta's original, llama2.c, GGUF "llama" (ggml mode 0)
    HalfSplit,      // (x[i], x[i + d/2]): Hugging Face rotate_half, GPT-NeoX, GGUF qwen2
};
const char* ropeStyleName(RopeStyle style);

// The rotation frequencies of one head: inverse frequency per pair, plus the YaRN magnitude scale.
struct RopeFrequencies {
    RopeStyle style = RopeStyle::AdjacentPairs;
    std::vector<double> invFreq;  // headDim / 2 entries, radians per position
    double magnitude = 1.0;       // multiplies cos and sin (YaRN's attention factor)
};

struct RopeParams {
    std::int64_t headDim = 0;
    double theta = 10000.0;
    std::string scaling;  // "", "linear", "llama3", "yarn", "dynamic" (see ropeFrequencies)
    double factor = 1.0;
    std::int64_t originalContext = 0;
    double lowFreqFactor = 1.0;   // llama3
    double highFreqFactor = 4.0;  // llama3
    double yarnBetaFast = 32.0;
    double yarnBetaSlow = 1.0;
    // Per-pair divisors of the frequency (GGUF's rope_freqs tensor, llama.cpp's llama3 form);
    // when given, they replace `scaling` = "llama3".
    std::vector<float> freqFactors;
};

// Frequencies as Hugging Face's rope_init_fn computes them, in double: default
// theta^(-2i/d); "linear" divides by factor; "llama3" scales the long wavelengths by 1/factor with
// a smooth ramp between high_freq and low_freq wavelengths of the original context; "yarn" ramps
// between interpolation and extrapolation (beta_fast, beta_slow) and scales by 0.1 ln(factor) + 1;
// "dynamic" (NTK) equals the default up to the original context and is treated as such.
Result<RopeFrequencies> ropeFrequencies(const RopeParams& params);

// cos and sin of position × invFreq for `count` positions from `firstPosition`: count × (d/2)
// each, magnitude applied.
struct RopeTable {
    RopeStyle style = RopeStyle::AdjacentPairs;
    std::int64_t firstPosition = 0;
    MatrixXfRowMajor cos, sin;
};
RopeTable makeRopeTable(const RopeFrequencies& freqs, std::int64_t firstPosition,
                        std::int64_t count);

namespace cpu {

// out = x / sqrt(mean(x²) + eps) * weight, per row. `out` may alias `x`.
void rmsNorm(const Eigen::Ref<const MatrixXfRowMajor>& x,
             const Eigen::Ref<const Eigen::VectorXf>& weight, float eps,
             Eigen::Ref<MatrixXfRowMajor> out);

// y = x Wᵀ (+ bias): x T × in, W out × in, y T × out. Multithreaded through Eigen's GEMM.
void linear(const Eigen::Ref<const MatrixXfRowMajor>& x,
            const Eigen::Ref<const MatrixXfRowMajor>& w, const Eigen::VectorXf* bias,
            Eigen::Ref<MatrixXfRowMajor> y);

// Rotates every head of x (T × heads·headDim) in place; row t is at table.firstPosition + t.
void applyRope(Eigen::Ref<MatrixXfRowMajor> x, std::int64_t heads, std::int64_t headDim,
               const RopeTable& table);

// Causal grouped-query attention. q: T × (heads·headDim), the rows at positions
// firstPosition .. firstPosition+T-1; k, v: S × (kvHeads·headDim) for positions 0 .. S-1, with
// S >= firstPosition + T. Query head h reads KV head h / (heads / kvHeads). Row t attends to key
// positions 0 .. firstPosition+t, scores scaled by 1/sqrt(headDim), softmax in float32.
// out: T × (heads·headDim). Heads and query tiles run in parallel (OpenMP).
Status attention(const Eigen::Ref<const MatrixXfRowMajor>& q,
                 const Eigen::Ref<const MatrixXfRowMajor>& k,
                 const Eigen::Ref<const MatrixXfRowMajor>& v, std::int64_t heads,
                 std::int64_t kvHeads, std::int64_t headDim, std::int64_t firstPosition,
                 Eigen::Ref<MatrixXfRowMajor> out);

// out = silu(gate) * up, elementwise; silu(g) = g / (1 + exp(-g)). `out` may alias either input.
void swiglu(const Eigen::Ref<const MatrixXfRowMajor>& gate,
            const Eigen::Ref<const MatrixXfRowMajor>& up, Eigen::Ref<MatrixXfRowMajor> out);

// Rows of `table` selected by `ids`; an id outside the table is an error.
Status embeddingLookup(const Eigen::Ref<const MatrixXfRowMajor>& table,
                       std::span<const std::int32_t> ids, Eigen::Ref<MatrixXfRowMajor> out);

// In-place softmax of each row, float32, maximum subtracted.
void softmaxRows(Eigen::Ref<MatrixXfRowMajor> x);

}  // namespace cpu
}  // namespace ql
