// Folding per-input-channel scales into a Llama-family model (quant/scale_fold.h).
#include "quant/scale_fold.h"

#include <algorithm>
#include <cmath>

namespace ql {

void ScaleFold::apply(std::vector<float>& values, std::int64_t rows, std::int64_t cols) const
{
    for (std::int64_t r = 0; r < rows; ++r) {
        const float rd = rowDiv.empty() ? 1.0f : rowDiv[std::size_t(r)];
        for (std::int64_t c = 0; c < cols; ++c) {
            float& v = values[std::size_t(r * cols + c)];
            if (!colMul.empty()) v *= colMul[std::size_t(c)];
            if (!rowDiv.empty()) v /= rd;
        }
    }
}

void ScaleFold::mulColumns(std::span<const float> mul)
{
    if (colMul.empty()) {
        colMul.assign(mul.begin(), mul.end());
        return;
    }
    for (std::size_t c = 0; c < colMul.size() && c < mul.size(); ++c) colMul[c] *= mul[c];
}

void ScaleFold::divRows(std::span<const float> div)
{
    if (rowDiv.empty()) {
        rowDiv.assign(div.begin(), div.end());
        return;
    }
    for (std::size_t r = 0; r < rowDiv.size() && r < div.size(); ++r) rowDiv[r] *= div[r];
}

std::vector<FoldSite> foldSites(const Model& model, int block)
{
    struct Def {
        ProbeSite site;
        std::vector<TensorRole> members;
        TensorRole fold;
    };
    const Def defs[] = {
        {ProbeSite::AttnQkv,
         {TensorRole::AttnQ, TensorRole::AttnK, TensorRole::AttnV},
         TensorRole::AttnNorm},
        {ProbeSite::AttnOutput, {TensorRole::AttnOutput}, TensorRole::AttnV},
        {ProbeSite::FfnGateUp, {TensorRole::FfnGate, TensorRole::FfnUp}, TensorRole::FfnNorm},
        {ProbeSite::FfnDown, {TensorRole::FfnDown}, TensorRole::FfnUp},
    };
    const HyperParams& hp = model.hparams;
    std::vector<FoldSite> out;
    for (const Def& d : defs) {
        FoldSite s;
        s.block = block;
        s.site = d.site;
        for (TensorRole role : d.members)
            if (const TensorInfo* t = model.find(role, block)) s.members.push_back(t);
        if (s.members.empty()) continue;
        s.channels = s.members[0]->shape.back();
        for (const TensorInfo* t : s.members)
            if (t->shape.size() != 2 || t->shape.back() != s.channels)
                s.why = "its layers differ in input width";
        s.fold = model.find(d.fold, block);
        if (!s.fold && s.why.empty())
            s.why = "the model has no " + std::string(tensorRoleName(d.fold)) + " in block " +
                    std::to_string(block) + " to fold the scales into";
        if (d.site == ProbeSite::AttnOutput) {
            s.heads = hp.headCount;
            s.kvHeads = hp.headCountKv;
            s.headDim = hp.headDim;
            s.foldBias = model.find(TensorRole::AttnVBias, block);
            if (s.why.empty() && (s.heads <= 0 || s.kvHeads <= 0 || s.heads % s.kvHeads != 0 ||
                                  s.heads * s.headDim != s.channels || s.fold->shape.size() != 2 ||
                                  s.fold->shape[0] != s.kvHeads * s.headDim))
                s.why = "the attention heads do not match attn_v's rows";
        } else if (s.fold && s.why.empty()) {
            const std::int64_t n =
                d.site == ProbeSite::FfnDown ? s.fold->shape[0] : s.fold->elementCount();
            if (n != s.channels) s.why = std::string(tensorRoleName(d.fold)) + " does not match";
        }
        out.push_back(std::move(s));
    }
    return out;
}

void tieToKvHeads(std::span<double> values, std::int64_t heads, std::int64_t kvHeads,
                  std::int64_t headDim, const std::function<double(double, double)>& combine)
{
    if (heads <= 0 || kvHeads <= 0 || heads % kvHeads ||
        std::int64_t(values.size()) != heads * headDim)
        return;
    const std::int64_t group = heads / kvHeads;
    for (std::int64_t kv = 0; kv < kvHeads; ++kv)
        for (std::int64_t d = 0; d < headDim; ++d) {
            double v = values[std::size_t(kv * group * headDim + d)];
            for (std::int64_t g = 1; g < group; ++g)
                v = combine(v, values[std::size_t((kv * group + g) * headDim + d)]);
            for (std::int64_t g = 0; g < group; ++g)
                values[std::size_t((kv * group + g) * headDim + d)] = v;
        }
}

Status foldScales(const FoldSite& site, std::span<const float> s,
                  const std::function<ScaleFold&(const std::string& tensor)>& at)
{
    const std::string where = probeName(site.block, site.site);
    if (!site.foldable())
        return makeError(ErrorCode::InvalidArgument,
                         "cannot fold scales at " + where + ": " + site.why);
    if (std::int64_t(s.size()) != site.channels)
        return makeError(ErrorCode::InvalidArgument,
                         where + ": " + std::to_string(s.size()) + " scales for " +
                             std::to_string(site.channels) + " channels");
    for (float v : s)
        if (!(v > 0) || !std::isfinite(v))
            return makeError(ErrorCode::InvalidArgument, where + ": a scale is not positive");
    std::vector<float> inv(s.size());
    for (std::size_t c = 0; c < s.size(); ++c) inv[c] = 1.0f / s[c];

    if (site.site == ProbeSite::AttnOutput) {
        // Channel h * headDim + d of the attention output reads attn_v's row kv(h) * headDim + d.
        const std::int64_t group = site.heads / site.kvHeads;
        std::vector<float> kvScale(std::size_t(site.kvHeads * site.headDim));
        for (std::int64_t h = 0; h < site.heads; ++h)
            for (std::int64_t d = 0; d < site.headDim; ++d) {
                const float v = s[std::size_t(h * site.headDim + d)];
                float& k = kvScale[std::size_t((h / group) * site.headDim + d)];
                if (h % group == 0)
                    k = v;
                else if (k != v)
                    return makeError(ErrorCode::InvalidArgument,
                                     where +
                                         ": the scales differ between query heads sharing a KV "
                                         "head, so they cannot be folded into attn_v exactly");
            }
        at(site.fold->name).divRows(kvScale);
        if (site.foldBias) {
            std::vector<float> invKv(kvScale.size());
            for (std::size_t i = 0; i < kvScale.size(); ++i) invKv[i] = 1.0f / kvScale[i];
            at(site.foldBias->name).mulColumns(invKv);
        }
    } else if (site.site == ProbeSite::FfnDown) {
        at(site.fold->name).divRows(s);
    } else {
        at(site.fold->name).mulColumns(inv);
    }
    for (const TensorInfo* m : site.members) at(m->name).mulColumns(s);
    return {};
}

}  // namespace ql
