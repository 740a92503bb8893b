#include "calib/calibration.h"

namespace ql {

const char* probeSiteName(ProbeSite site)
{
    switch (site) {
        case ProbeSite::AttnQkv: return "attn_qkv";
        case ProbeSite::AttnOutput: return "attn_output";
        case ProbeSite::FfnGateUp: return "ffn_gate_up";
        case ProbeSite::FfnDown: return "ffn_down";
    }
    return "?";
}

std::string probeName(int block, ProbeSite site)
{
    return "blk." + std::to_string(block) + "." + probeSiteName(site);
}

const ProbeStats* CalibrationResult::find(const std::string& name) const
{
    for (const auto& p : probes)
        if (p.name == name) return &p;
    return nullptr;
}

}  // namespace ql
