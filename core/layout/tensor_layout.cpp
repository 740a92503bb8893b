// Per-tensor layouts, presets and ties (see tensor_layout.h).
#include "layout/tensor_layout.h"

#include <algorithm>
#include <map>

namespace ql {

std::string Assignment::spec() const
{
    std::string s = formatToString(format);
    if (method != QuantMethod::Rtn) s += std::string(":") + quantMethodName(method);
    for (const auto& [k, v] : methodOptions) s += ":" + k + "=" + v;
    return s;
}

const char* tieTargetName(TieTarget target)
{
    return target == TieTarget::GptqSafetensors ? "gptq-safetensors" : "none";
}

Result<TensorLayout> TensorLayout::fromLayout(const Model& model, const Layout& layout)
{
    auto plan = layout.resolve(model);
    if (!plan) return plan.error();
    TensorLayout out;
    for (const TensorPlan& p : plan->tensors) {
        const bool vector = p.shape.size() < 2;
        if (p.choice != PlanChoice::Rule) {
            if (!vector) out.m_coversAllMatrices = false;
            continue;
        }
        out.m_items.push_back({p.name, p.requested, p.method, p.methodOptions, vector});
    }
    return out;
}

Result<TensorLayout> TensorLayout::fromText(const Model& model, std::string_view spec)
{
    auto layout = Layout::fromArgument(spec);
    if (!layout) return layout.error();
    return fromLayout(model, *layout);
}

const Assignment* TensorLayout::find(std::string_view tensor) const
{
    for (const auto& a : m_items)
        if (a.tensor == tensor) return &a;
    return nullptr;
}

Status TensorLayout::set(const Model& model, const Assignment& a)
{
    const TensorInfo* t = model.find(a.tensor);
    if (!t) return makeError(ErrorCode::InvalidArgument, "the model has no tensor " + a.tensor);
    Assignment value = a;
    value.isVector = t->shape.size() < 2;
    for (auto& item : m_items)
        if (item.tensor == a.tensor) {
            item = value;
            return {};
        }
    // Keep the model's order.
    m_items.push_back(value);
    std::map<std::string, std::size_t> order;
    for (std::size_t i = 0; i < model.tensors.size(); ++i) order[model.tensors[i].name] = i;
    std::stable_sort(m_items.begin(), m_items.end(), [&](const Assignment& x, const Assignment& y) {
        return order[x.tensor] < order[y.tensor];
    });
    return {};
}

void TensorLayout::setMethod(QuantMethod method,
                             const std::vector<std::pair<std::string, std::string>>& options)
{
    for (auto& a : m_items) {
        a.method = method;
        a.methodOptions = options;
    }
}

std::string TensorLayout::toText() const
{
    // A base rule "*=SPEC" would also decide matrices no assignment names, so it is only used
    // when every matrix has one; exact-name rules alone are always right. The base is the most
    // common spec among matrices (a "*" rule never decides a 1-D tensor).
    std::map<std::string, int> counts;
    for (const auto& a : m_items)
        if (!a.isVector) ++counts[a.spec()];
    std::string base;
    int best = 0;
    for (const auto& [spec, n] : counts)
        if (n > best) {
            best = n;
            base = spec;
        }
    std::string s;
    if (!base.empty() && m_coversAllMatrices) s = "*=" + base;
    for (const auto& a : m_items) {
        const std::string spec = a.spec();
        if (!s.empty() && spec == base && m_coversAllMatrices && !a.isVector) continue;
        if (!s.empty()) s += "; ";
        s += a.tensor + "=" + spec;
    }
    return s;
}

Result<Layout> TensorLayout::toLayout() const
{
    return Layout::parse(toText());
}

bool llamaCppUseMoreBits(int block, int blockCount)
{
    return block < blockCount / 8 || block >= 7 * blockCount / 8 ||
           (block - blockCount / 8) % 3 == 2;
}

std::vector<std::string> presetNames()
{
    return {"q4_k_m",       "edges8",       "uniform:q8_0", "uniform:q6_k",
            "uniform:q5_k", "uniform:q4_k", "uniform:q3_k", "uniform:q2_k",
            "uniform:q5_0", "uniform:q4_0", "uniform:q4_1", "uniform:f16"};
}

Result<std::string> presetText(const Model& model, std::string_view preset)
{
    const int n = int(model.hparams.blockCount);
    const bool tied = model.find("output.weight") == nullptr;
    const std::string head = tied ? "token_embd.weight" : "output.weight";
    if (preset.rfind("uniform:", 0) == 0) {
        const std::string format(preset.substr(8));
        auto f = parseQuantFormat(format);
        if (!f) return f.error();
        return "*=" + formatToString(*f);
    }
    if (preset == "q4_k_m") {
        std::string s = "*=q4_k; " + head + "=q6_k";
        for (int i = 0; i < n; ++i)
            if (llamaCppUseMoreBits(i, n))
                s += "; blk." + std::to_string(i) + ".attn_v.weight=q6_k; blk." +
                     std::to_string(i) + ".ffn_down.weight=q6_k";
        return s;
    }
    if (preset == "edges8") {
        std::string s = "*=q4_k; blk.0.*=q8_0";
        if (n > 1) s += "; blk." + std::to_string(n - 1) + ".*=q8_0";
        return s + "; " + head + "=q8_0";
    }
    return makeError(ErrorCode::InvalidArgument,
                     "no preset '" + std::string(preset) + "' (q4_k_m, edges8, uniform:FORMAT)");
}

Result<TensorLayout> presetLayout(const Model& model, std::string_view preset)
{
    auto text = presetText(model, preset);
    if (!text) return text.error();
    return TensorLayout::fromText(model, *text);
}

std::vector<std::vector<std::string>> tieGroups(const Model& model, TieTarget target)
{
    std::vector<std::vector<std::string>> out;
    if (target == TieTarget::None) return out;
    for (std::int64_t b = 0; b < model.hparams.blockCount; ++b) {
        const std::string p = "blk." + std::to_string(b) + ".";
        for (const auto& roles : {std::vector<std::string>{"attn_q", "attn_k", "attn_v"},
                                  std::vector<std::string>{"ffn_gate", "ffn_up"}}) {
            std::vector<std::string> g;
            for (const auto& r : roles)
                if (model.find(p + r + ".weight")) g.push_back(p + r + ".weight");
            if (g.size() > 1) out.push_back(std::move(g));
        }
    }
    return out;
}

std::vector<TieChange> applyTies(const Model& model, TensorLayout& layout, TieTarget target)
{
    std::vector<TieChange> changes;
    for (const auto& group : tieGroups(model, target)) {
        const Assignment* best = nullptr;
        double bestBits = -1;
        for (const auto& name : group) {
            const Assignment* a = layout.find(name);
            const TensorInfo* t = model.find(name);
            if (!a || !t) continue;
            const double bits = bitsPerWeight(a->format, t->rows(), t->cols());
            if (bits > bestBits) {
                bestBits = bits;
                best = a;
            }
        }
        if (!best) continue;
        const Assignment winner = *best;
        for (const auto& name : group) {
            const Assignment* a = layout.find(name);
            if (!a || a->format == winner.format) continue;
            changes.push_back({name, a->format, winner.format});
            Assignment changed = *a;
            changed.format = winner.format;
            (void)layout.set(model, changed);
        }
    }
    return changes;
}

}  // namespace ql
