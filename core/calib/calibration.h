// Calibration: run text through the model and collect ActivationStats at the input of every
// linear layer. q/k/v share one input (probe "blk.N.attn_qkv"), gate/up share one
// ("blk.N.ffn_gate_up"); attn_output and ffn_down have their own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "calib/activation_stats.h"

namespace ql {

enum class ProbeSite { AttnQkv, AttnOutput, FfnGateUp, FfnDown };
const char* probeSiteName(ProbeSite site);  // "attn_qkv", "attn_output", "ffn_gate_up", "ffn_down"
std::string probeName(int block, ProbeSite site);  // "blk.3.ffn_down"

struct CalibrationConfig {
    std::vector<std::string> textFiles;
    std::int32_t samples = 128;
    std::int32_t seqLen = 512;
    std::uint64_t seed = 0;
    bool consecutive = false;  // consecutive windows instead of seeded random ones
    HessianPrecision hessian = HessianPrecision::Float32;
    std::int32_t histogramBins = 2048;
    std::int32_t topK = 32;
};

struct TopActivationContext {
    std::string before;  // decoded tokens before the one that produced the activation
    std::string token;   // the token itself
    std::string after;
};

struct ProbeStats {
    std::string name;  // probeName(block, site)
    int block = 0;
    ProbeSite site = ProbeSite::AttnQkv;
    ActivationStats stats;
    std::vector<TopActivationContext> topContext;  // parallel to stats.top()
};

struct CalibrationResult {
    CalibrationConfig config;
    std::int64_t tokens = 0;
    double seconds = 0;
    std::string device;  // what ran it
    std::vector<ProbeStats> probes;

    const ProbeStats* find(const std::string& name) const;
};

}  // namespace ql
