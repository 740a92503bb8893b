// Per-tensor layouts: the resolved answer to "which format, options and method does each tensor
// get", built from layout rules plus per-tensor overrides, and written back as rules.
//
// A TensorLayout holds one Assignment per quantizable tensor of a model (2-D weights; norms and
// other 1-D tensors stay F32 as in layout.h). It round-trips with the --layout text: fromLayout()
// resolves rules (the last matching rule wins, exactly as Layout::resolve), toText() writes a
// base rule "*=FORMAT" for the most common assignment and one exact-name rule for every tensor
// that differs, so parse(toText()) resolves to the same assignments. Assignments name what was
// requested; fallbacks (a k-quant on 64-column rows) happen in Layout::resolve as everywhere.
//
// Presets (presetNames()): "uniform:FORMAT" for any format, "q4_k_m" (llama.cpp's Q4_K_M mix,
// below), "edges8" (first and last block and the output head in q8_0, the rest q4_k).
//
// The Q4_K_M mix follows llama.cpp's llama_tensor_get_type for LLAMA_FTYPE_MOSTLY_Q4_K_M:
//   default q4_k; output.weight (or token_embd when the head is tied) q6_k;
//   attn_v and ffn_down q6_k in the blocks use_more_bits picks: i < n/8, i >= 7n/8, or
//   (i - n/8) % 3 == 2 (integer division, n = block count); everything else q4_k.
// (llama.cpp's extra cases for MoE, Falcon and 70B GQA models are left out.)
//
// Ties: an export target that stores fused projections needs q/k/v and gate/up in one format
// (GPTQ safetensors as vLLM loads it: qkv_proj and gate_up_proj share one quantization config).
// applyTies() gives every member of such a group the format of its most precise member (most
// bits per weight; ties broken by the first in q,k,v / gate,up order), so tying never lowers
// quality, and reports each change. TieTarget::None (GGUF) ties nothing.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "layout/layout.h"
#include "model/model.h"
#include "quant/format.h"
#include "util/result.h"

namespace ql {

struct Assignment {
    std::string tensor;
    QuantFormat format;
    QuantMethod method = QuantMethod::Rtn;
    std::vector<std::pair<std::string, std::string>> methodOptions;
    bool isVector = false;  // a 1-D tensor (a norm) named by an exact rule

    // "format[:method][:key=value...]" as a rule's right-hand side.
    std::string spec() const;
    bool operator==(const Assignment&) const = default;
};

enum class TieTarget {
    None,            // GGUF: every tensor on its own
    GptqSafetensors  // q/k/v and gate/up share a format (fused projections)
};
const char* tieTargetName(TieTarget target);  // "none", "gptq-safetensors"

class TensorLayout {
public:
    TensorLayout() = default;
    // One assignment per 2-D tensor of `model` that `layout` decides (tensors no rule matches
    // keep their stored type and are absent).
    static Result<TensorLayout> fromLayout(const Model& model, const Layout& layout);
    static Result<TensorLayout> fromText(const Model& model, std::string_view spec);

    const std::vector<Assignment>& assignments() const { return m_items; }
    const Assignment* find(std::string_view tensor) const;
    // Set (or add) one tensor's assignment; InvalidArgument for a name the model lacks.
    Status set(const Model& model, const Assignment& a);
    void setFormat(std::size_t index, const QuantFormat& format) { m_items[index].format = format; }

    // Rules that resolve to these assignments: "*=BASE; name=spec; ...".
    std::string toText() const;
    Result<Layout> toLayout() const;
    // Every assignment's method set to `method` (with options), e.g. to run GPTQ everywhere.
    void setMethod(QuantMethod method,
                   const std::vector<std::pair<std::string, std::string>>& options = {});

    bool operator==(const TensorLayout&) const = default;

private:
    std::vector<Assignment> m_items;  // the model's tensor order
    bool m_coversAllMatrices = true;  // every 2-D tensor has an assignment (a "*" base is safe)
};

// "uniform:q4_0", "q4_k_m", "edges8"; the uniform ones for the usual formats.
std::vector<std::string> presetNames();
// The preset's rules for `model` (block count and tied head matter), as layout text.
Result<std::string> presetText(const Model& model, std::string_view preset);
Result<TensorLayout> presetLayout(const Model& model, std::string_view preset);

// llama.cpp's use_more_bits(i, n).
bool llamaCppUseMoreBits(int block, int blockCount);

// Tie groups of a model for a target: lists of tensor names that must share a format.
std::vector<std::vector<std::string>> tieGroups(const Model& model, TieTarget target);

struct TieChange {
    std::string tensor;
    QuantFormat from;
    QuantFormat to;
};
// Raises each tie group to its most precise member's format (see above); returns the changes.
std::vector<TieChange> applyTies(const Model& model, TensorLayout& layout, TieTarget target);

}  // namespace ql
