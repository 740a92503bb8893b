// Layout rules: which format, and which method, each tensor of a model is quantized with.
//
// A layout is a list of rules separated by ';' or newlines; '#' starts a comment that runs to the
// end of the line. `@FILE` on the command line reads the rules from a file.
//
//   rule    = PATTERN "=" FORMAT { ":" option }
//   PATTERN = a glob over canonical tensor names ("blk.3.attn_q.weight", "token_embd.weight",
//             "output.weight"): '*' any run of characters (dots included), '?' one character,
//             "[abc]" / "[a-z]" / "[!abc]" one character of (or not of) a set
//   FORMAT  = a quantization format and its options as quant/format.h parses them: f32, f16,
//             bf16, int2..int8[:sym|:asym][:tensor|:channel|:gN], nf4[:gN][:dq], mxfp4, nvfp4,
//             fp8_e4m3 | fp8_e5m2 [:tensor|:channel], q8_0 q4_0 q4_1 q5_0 q5_1 q2_k .. q6_k
//   option  = the method, "rtn" (default) | "gptq" | "awq" (or "method=NAME"), and for gptq/awq
//             method parameters "key=value" (stored in order; checked when the method runs) or
//             the bare flags "actorder" and "static" (stored as "actorder=true"). gptq takes
//             damp=F, block=N, actorder, static (quant/gptq.h)
//
//   "*=q4_k; output.weight=q6_k; blk.0.*=q8_0"     "*=int4:g128:asym:gptq:damp=0.01:actorder"
//
// The last rule matching a tensor decides it. Norms and other 1-D tensors stay F32 unless a rule
// names them exactly (its pattern has no wildcard and equals the name). A 2-D tensor no rule
// matches keeps its stored type. A format whose block does not divide the tensor's row length
// falls back to the nearest one that fits, as llama.cpp does (fallbackFormat in format.h); the
// plan lists every fallback with its reason.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/model.h"
#include "quant/format.h"
#include "util/result.h"

namespace ql {

enum class QuantMethod { Rtn, Gptq, Awq };
const char* quantMethodName(QuantMethod method);  // "rtn", "gptq", "awq"

struct LayoutRule {
    std::string pattern;
    QuantFormat format;
    QuantMethod method = QuantMethod::Rtn;
    std::vector<std::pair<std::string, std::string>> methodOptions;  // "key=value", in order
    std::string text;                                                // the rule as written, trimmed
    int line = 1;  // where it starts in the spec (1-based)
    int column = 1;

    bool hasWildcard() const;
    // Canonical form "pattern=format[:method][:key=value...]"; parses back to the same rule.
    std::string toString() const;
};

// Why a tensor got its format.
enum class PlanChoice {
    Rule,        // a rule matched (TensorPlan::rule)
    KeptVector,  // a norm or other 1-D tensor no exact rule names: stays F32
    Unmatched,   // a 2-D tensor no rule matches: keeps its stored type
};

struct TensorPlan {
    std::string name;
    std::vector<std::int64_t> shape;  // row-major, as in TensorInfo
    std::int64_t rows = 0;            // product of all but the last dimension (1 for 1-D)
    std::int64_t cols = 0;            // the last dimension: the row length formats group along
    TensorType sourceType = TensorType::F32;
    QuantFormat requested;  // what the rule (or the default) asked for
    QuantFormat format;     // what will be stored: `requested`, or its fallback
    QuantMethod method = QuantMethod::Rtn;
    std::vector<std::pair<std::string, std::string>> methodOptions;
    PlanChoice choice = PlanChoice::Rule;
    int rule = -1;               // index into Layout::rules() for PlanChoice::Rule, else -1
    std::string fallbackReason;  // empty unless format != requested

    bool fellBack() const { return !(format == requested); }
    std::int64_t elementCount() const { return rows * cols; }
};

struct LayoutFallback {
    std::string tensor;
    QuantFormat wanted;
    QuantFormat got;
    std::string why;
};

struct LayoutPlan {
    std::vector<TensorPlan> tensors;        // in the model's tensor order
    std::vector<LayoutFallback> fallbacks;  // one per tensor whose format fell back
    std::vector<std::string> warnings;      // rules that match no tensor or decide none

    const TensorPlan* find(std::string_view name) const;
};

class Layout {
public:
    // Rules from a spec string; errors name the rule, its number and its line and column.
    static Result<Layout> parse(std::string_view spec);
    // Rules from a file (same syntax; positions given as FILE:LINE:COLUMN).
    static Result<Layout> parseFile(const std::string& path);
    // "@FILE" reads a file, anything else is a spec.
    static Result<Layout> fromArgument(std::string_view argument);

    const std::vector<LayoutRule>& rules() const { return m_rules; }
    // Canonical spec, rules joined by "; "; parses back to an equal layout.
    std::string toString() const;
    // Index of the rule deciding `name` (the last match; for a 1-D tensor only an exact name
    // counts), or -1.
    int decidingRule(std::string_view name, bool vector) const;
    // The per-tensor plan for a model: format (after fallback), method, which rule chose it.
    // Fails only when a chosen format cannot encode a tensor at all and has no fallback.
    Result<LayoutPlan> resolve(const Model& model) const;

private:
    static Result<Layout> parseText(std::string_view spec, const std::string& file);
    std::vector<LayoutRule> m_rules;
};

// Glob matching as in layout rules (case-sensitive; no escapes).
bool globMatch(std::string_view pattern, std::string_view text);
// Syntax check of a glob: the error gives the 0-based offset of the problem in `offset`.
Status checkGlob(std::string_view pattern, std::size_t* offset = nullptr);

// "rule 3 \"blk.0.*=q8_0\"", for messages.
std::string describeRule(const Layout& layout, int index);

}  // namespace ql
