// Multiple-choice knapsack over the measured sensitivity curves (see allocate.h).
#include "layout/allocate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

namespace ql {
namespace {

struct Option {
    std::string format;  // stored format, canonical
    std::uint64_t bytes = 0;
    double kl = 0;
};

struct Item {
    std::vector<std::string> tensors;
    std::vector<Option> options;
};

bool nativeGguf(const std::string& format)
{
    auto f = parseQuantFormat(format);
    return f && (f->kind == QuantKind::Float || f->kind == QuantKind::Ggml);
}

}  // namespace

double predictedKl(const SensitivityTable& table, const LayoutPlan& plan, int* missing)
{
    double sum = 0;
    int miss = 0;
    for (const auto& t : table.tensors) {
        const TensorPlan* p = plan.find(t.name);
        if (!p) continue;
        const std::string stored = formatToString(p->format);
        if (stored == "f32") continue;
        bool found = false;
        for (const auto& c : t.cells)
            if (c.stored == stored && std::isfinite(c.deltaKl)) {
                sum += c.deltaKl;
                found = true;
                break;
            }
        if (!found) ++miss;
    }
    if (missing) *missing = miss;
    return sum;
}

Result<AllocationResult> allocateLayout(const Model& model, const SensitivityTable& table,
                                        const AllocationOptions& options)
{
    if (!options.targetBytes == !options.targetBpw)
        return makeError(ErrorCode::InvalidArgument,
                         "give one target: bytes of the file or bits per weight");
    const bool fileTarget = options.targetBytes.has_value();
    const std::uint64_t alignment = 32;  // refined below from the size report
    (void)alignment;

    // Per-tensor options from the table, with their padded (file) or plain (bpw) bytes.
    auto f32Plan = Layout::parse("*=f32");
    if (!f32Plan) return f32Plan.error();
    auto basePlan = f32Plan->resolve(model);
    if (!basePlan) return basePlan.error();
    auto baseSize = estimateSize(model, *basePlan, "", options.size);
    if (!baseSize) return baseSize.error();
    const std::uint64_t align = baseSize->alignment;
    auto cost = [&](std::uint64_t bytes) {
        return fileTarget ? (bytes + align - 1) / align * align : bytes;
    };
    std::map<std::string, std::vector<Option>> perTensor;
    for (const auto& t : table.tensors) {
        const TensorInfo* info = model.find(t.name);
        if (!info)
            return makeError(ErrorCode::InvalidArgument, "the sensitivity table names " + t.name +
                                                             ", which " + model.path +
                                                             " lacks (measured on another model?)");
        std::map<std::string, Option> best;
        for (const auto& c : t.cells) {
            if (!std::isfinite(c.deltaKl) || !nativeGguf(c.stored)) continue;
            if (!options.formats.empty() &&
                std::find(options.formats.begin(), options.formats.end(), c.stored) ==
                    options.formats.end())
                continue;
            auto it = best.find(c.stored);
            if (it == best.end() || c.deltaKl < it->second.kl)
                best[c.stored] = {c.stored, cost(c.bytes), std::max(0.0, c.deltaKl)};
        }
        best["f32"] = {"f32", cost(std::uint64_t(info->elementCount()) * 4), 0.0};
        for (auto& [k, o] : best) perTensor[t.name].push_back(o);
    }

    // Items: tie groups first (members present in the table), then single tensors.
    std::vector<Item> items;
    std::map<std::string, bool> grouped;
    for (const auto& group : tieGroups(model, options.ties)) {
        Item item;
        for (const auto& name : group)
            if (perTensor.count(name)) item.tensors.push_back(name);
        if (item.tensors.size() < 2) continue;
        for (const Option& o : perTensor[item.tensors.front()]) {
            Option sum{o.format, 0, 0};
            bool all = true;
            for (const auto& name : item.tensors) {
                const auto& opts = perTensor[name];
                auto it = std::find_if(opts.begin(), opts.end(),
                                       [&](const Option& x) { return x.format == o.format; });
                if (it == opts.end()) {
                    all = false;
                    break;
                }
                sum.bytes += it->bytes;
                sum.kl += it->kl;
            }
            if (all) item.options.push_back(sum);
        }
        for (const auto& name : item.tensors) grouped[name] = true;
        items.push_back(std::move(item));
    }
    for (const auto& t : table.tensors)
        if (!grouped.count(t.name)) items.push_back({{t.name}, perTensor[t.name]});

    // Fixed costs: tensors outside the table, and (file target) the header with a pessimistic
    // layout text: every table tensor named with its longest option.
    std::uint64_t fixed = 0;
    std::string pessimistic;
    const std::string methodSuffix = [&] {
        Assignment a;
        a.method = options.method;
        a.methodOptions = options.methodOptions;
        const std::string s = a.spec();  // "f32[:method...]"
        return s.substr(3);
    }();
    for (const auto& t : baseSize->tensors) {
        if (perTensor.count(t.name)) continue;
        fixed += fileTarget ? t.paddedBytes : t.bytes;
    }
    for (const auto& [name, opts] : perTensor) {
        std::size_t longest = 0;
        for (const auto& o : opts) longest = std::max(longest, o.format.size());
        pessimistic += name + "=" + std::string(longest, 'x') + methodSuffix + "; ";
    }
    if (fileTarget) {
        auto h = estimateSize(model, *basePlan, pessimistic, options.size);
        if (!h) return h.error();
        // One alignment of slack for the header's rounding, and the caller's reserve.
        fixed += h->headerBytes + align + options.reserveBytes;
    }
    const std::uint64_t target =
        fileTarget ? *options.targetBytes
                   : std::uint64_t(std::floor(*options.targetBpw * double(baseSize->weights) / 8));
    AllocationResult result;
    result.budget = target;
    std::uint64_t minimum = fixed;
    for (const auto& item : items) {
        std::uint64_t m = std::numeric_limits<std::uint64_t>::max();
        for (const auto& o : item.options) m = std::min(m, o.bytes);
        minimum += m;
    }
    if (target < minimum)
        return makeError(ErrorCode::InvalidArgument,
                         "the target of " + std::to_string(target) +
                             " bytes is below the smallest layout the measured formats allow (" +
                             std::to_string(minimum) + " bytes)");

    // DP over the budget in units.
    const std::uint64_t budget = target - fixed;
    const std::uint64_t steps = std::min<std::uint64_t>(4096, std::max<std::uint64_t>(budget, 1));
    const double unit = double(budget) / double(steps);
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<double> dp(steps + 1, inf), next(steps + 1);
    dp[0] = 0;
    std::vector<std::vector<std::int16_t>> choice(items.size(),
                                                  std::vector<std::int16_t>(steps + 1, -1));
    for (std::size_t i = 0; i < items.size(); ++i) {
        std::fill(next.begin(), next.end(), inf);
        for (std::size_t k = 0; k < items[i].options.size(); ++k) {
            const Option& o = items[i].options[k];
            const auto c = std::uint64_t(std::ceil(double(o.bytes) / unit - 1e-9));
            if (c > steps) continue;
            for (std::uint64_t b = c; b <= steps; ++b) {
                if (dp[b - c] == inf) continue;
                const double v = dp[b - c] + o.kl;
                if (v < next[b]) {
                    next[b] = v;
                    choice[i][b] = std::int16_t(k);
                }
            }
        }
        dp.swap(next);
    }
    std::uint64_t bestB = 0;
    for (std::uint64_t b = 0; b <= steps; ++b)
        if (dp[b] < dp[bestB]) bestB = b;
    if (dp[bestB] == inf)
        return makeError(ErrorCode::InvalidArgument,
                         "no layout fits " + std::to_string(target) + " bytes");
    // Walk back.
    std::vector<int> picked(items.size(), -1);
    std::uint64_t b = bestB;
    for (std::size_t i = items.size(); i-- > 0;) {
        const int k = choice[i][b];
        picked[i] = k;
        const Option& o = items[i].options[std::size_t(k)];
        b -= std::uint64_t(std::ceil(double(o.bytes) / unit - 1e-9));
    }
    // Base: 1-D tensors stay F32 (no rule); every table tensor gets its stored format.
    TensorLayout layout;
    for (std::size_t i = 0; i < items.size(); ++i)
        for (const auto& name : items[i].tensors) {
            Assignment a;
            a.tensor = name;
            a.format = *parseQuantFormat(items[i].options[std::size_t(picked[i])].format);
            a.method = options.method;
            a.methodOptions = options.methodOptions;
            QL_TRY_STATUS(layout.set(model, a));
        }
    // Matrices outside the table keep F32 (written exactly so the text is complete).
    for (const auto& t : model.tensors)
        if (t.shape.size() >= 2 && !layout.find(t.name)) {
            Assignment a;
            a.tensor = t.name;
            a.format = floatFormat(TensorType::F32);
            QL_TRY_STATUS(layout.set(model, a));
        }
    result.layout = layout;
    auto parsed = layout.toLayout();
    if (!parsed) return parsed.error();
    result.text = parsed->toString();
    auto plan = parsed->resolve(model);
    if (!plan) return plan.error();
    auto size = estimateSize(model, *plan, result.text, options.size);
    if (!size) return size.error();
    result.size = std::move(size).value();
    result.predictedKl = predictedKl(table, *plan);
    const std::uint64_t got = fileTarget ? result.size.fileBytes : result.size.tensorBytes;
    if (got > target)
        return makeError(ErrorCode::InvalidArgument,
                         "internal: the allocation came to " + std::to_string(got) +
                             " bytes, over the target " + std::to_string(target));
    return result;
}

}  // namespace ql
