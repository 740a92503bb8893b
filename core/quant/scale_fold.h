// Per-input-channel scales folded into a Llama-family model, shared by AWQ and SmoothQuant.
//
// A group of linear layers reading one input x (a calibration probe site) computes y = x W^T. With
// scales s per input channel, y = (x diag(1/s)) (W diag(s))^T: the layers' columns are multiplied
// by s, and 1/s is folded into whatever produced x, so the model stays exactly the same function:
//   attn_qkv    (q/k/v read rmsnorm(x) * attn_norm)   attn_norm /= s
//   ffn_gate_up (gate/up read rmsnorm(x) * ffn_norm)   ffn_norm  /= s
//   ffn_down    (reads silu(gate) * up, linear in up)  ffn_up's rows /= s
//   attn_output (reads the heads' softmax-weighted v)  attn_v's rows (and bias) /= s, exact only
//               when every query head sharing a KV head has the same scales: with grouped-query
//               attention the scales must be tied per KV head (tieToKvHeads), else it is not
//               foldable.
// A tensor can take part twice (ffn_up: its columns from gate/up, its rows from ffn_down; attn_v:
// columns from q/k/v, rows from attn_output); ScaleFold composes both.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "calib/calibration.h"
#include "model/model.h"

namespace ql {

// What folding does to one tensor: values[r][c] *= colMul[c] / rowDiv[r] (either may be empty).
struct ScaleFold {
    std::vector<float> colMul;
    std::vector<float> rowDiv;

    void apply(std::vector<float>& values, std::int64_t rows, std::int64_t cols) const;
    // Compose another column multiplier / row divisor into this one.
    void mulColumns(std::span<const float> mul);
    void divRows(std::span<const float> div);
};

// One group of linear layers sharing an input, and where its scales fold.
struct FoldSite {
    int block = 0;
    ProbeSite site = ProbeSite::AttnQkv;
    std::vector<const TensorInfo*> members;  // the layers reading the input
    const TensorInfo* fold = nullptr;        // attn_norm / ffn_norm / ffn_up / attn_v
    const TensorInfo* foldBias = nullptr;    // attn_v's bias for attn_output (when present)
    std::int64_t channels = 0;               // input channels
    std::int64_t heads = 0, kvHeads = 0, headDim = 0;  // attn_output only
    std::string why;  // why the scales cannot be folded here ("" when they can)

    bool foldable() const { return why.empty(); }
    // attn_output with grouped-query attention: scales must be equal across the query heads of a
    // KV head.
    bool needsTiedHeads() const { return site == ProbeSite::AttnOutput && heads != kvHeads; }
};

// The sites of one block in execution order: attn_qkv, attn_output, ffn_gate_up, ffn_down. Sites
// without members are left out; a site that cannot be folded has `why` set.
std::vector<FoldSite> foldSites(const Model& model, int block);

// For attn_output under grouped-query attention: replaces each channel's value by `combine` over
// the query heads sharing its KV head (e.g. the max of the activation abs-max), so scales computed
// from them are tied. `values` has heads * headDim entries.
void tieToKvHeads(std::span<double> values, std::int64_t heads, std::int64_t kvHeads,
                  std::int64_t headDim, const std::function<double(double, double)>& combine);

// Folds scales s (site.channels values, s > 0) of `site` into the tensors `at` returns (created on
// first use): members' columns *= s; the norm's values /= s, or the fold tensor's rows /= s.
// Returns InvalidArgument when the site is not foldable or s does not fit (attn_output scales not
// tied across a KV head's query heads).
Status foldScales(const FoldSite& site, std::span<const float> s,
                  const std::function<ScaleFold&(const std::string& tensor)>& at);

}  // namespace ql
