#include "gptq_plan.h"

#include <algorithm>
#include <numeric>

namespace ql::cuda {

GptqPlan planGptq(const std::vector<std::int32_t>& pos, std::int64_t unitLen, bool fitsInLoop,
                  bool actOrder)
{
    GptqPlan plan;
    const std::int64_t cols = std::int64_t(pos.size());
    const std::int64_t units = (cols + unitLen - 1) / unitLen;

    std::int64_t block = GptqPlan::kMaxBlock;
    if (fitsInLoop && !actOrder && unitLen <= GptqPlan::kMaxBlock)
        block = GptqPlan::kMaxBlock / unitLen * unitLen;
    for (std::int64_t p = 0; p < cols; p += block) plan.blockStart.push_back(p);
    plan.blockStart.push_back(cols);

    plan.fitAt.assign(std::size_t(cols), -1);
    plan.unitBeyond.assign(std::size_t(2 * units), 0);
    plan.blockBeyond.assign(plan.blockStart.size(), 0);
    if (!fitsInLoop) return plan;

    std::vector<std::int32_t> first(static_cast<std::size_t>(units), std::int32_t(cols));
    for (std::int64_t c = 0; c < cols; ++c) {
        auto& f = first[std::size_t(c / unitLen)];
        f = std::min(f, pos[std::size_t(c)]);
    }
    std::vector<std::int32_t> byFit(static_cast<std::size_t>(units));
    std::iota(byFit.begin(), byFit.end(), 0);
    std::sort(byFit.begin(), byFit.end(), [&](std::int32_t a, std::int32_t b) {
        return first[std::size_t(a)] < first[std::size_t(b)];
    });
    std::int64_t b = 0;
    for (std::int32_t u : byFit) {
        const std::int32_t t = first[std::size_t(u)];
        plan.fitAt[std::size_t(t)] = u;
        while (plan.blockStart[std::size_t(b + 1)] <= t) {
            ++b;
            plan.blockBeyond[std::size_t(b)] = std::int64_t(plan.beyond.size());
        }
        const std::int64_t end = plan.blockStart[std::size_t(b + 1)];
        plan.unitBeyond[std::size_t(2 * u)] = std::int32_t(plan.beyond.size());
        for (std::int64_t c = std::int64_t(u) * unitLen; c < std::min(cols, (u + 1) * unitLen); ++c)
            if (pos[std::size_t(c)] >= end) plan.beyond.push_back(pos[std::size_t(c)]);
        plan.unitBeyond[std::size_t(2 * u + 1)] = std::int32_t(plan.beyond.size());
        if (plan.unitBeyond[std::size_t(2 * u + 1)] > plan.unitBeyond[std::size_t(2 * u)])
            plan.uRows = std::max<std::int64_t>(plan.uRows, t);
    }
    for (++b; b < std::int64_t(plan.blockBeyond.size()); ++b)
        plan.blockBeyond[std::size_t(b)] = std::int64_t(plan.beyond.size());
    return plan;
}

}  // namespace ql::cuda
