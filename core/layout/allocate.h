// Automatic mixed-precision allocation: per-tensor formats for a target size that minimise the
// predicted KL divergence, the sum over tensors of the measured ΔKL of each tensor's format
// (sensitivity.h; additivity is the model's assumption, checked by evaluating the result).
//
// Each tensor of the sensitivity table is an item whose options are the distinct formats stored
// for it (after fallback; the format is then requested as stored, so the layout has no fallbacks)
// plus f32 (ΔKL 0). Formats GGUF has no type for (int, nf4, fp4, fp8) are left out: the GGUF
// writer stores their decoded values in F16 or F32, which costs as much as f16 and is worse. A tie
// group (tensor_layout.h) is one item whose options are the formats all members share, costs and
// ΔKL summed. The choice is a multiple-choice knapsack solved by dynamic programming over the
// byte budget in at most 4096 steps, costs rounded up, so the result never exceeds the budget:
//   --target-bytes N   N is the whole exported file: header (metadata with the layout text, a
//                      pessimistic estimate) + every tensor's padded data (size.h);
//   --target-bpw B     tensor data bits over all weights (llama.cpp's bpw).
// Tensors outside the table keep F32 (norms) or what `base` rules give them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "layout/sensitivity.h"
#include "layout/size.h"
#include "layout/tensor_layout.h"
#include "model/model.h"
#include "util/result.h"

namespace ql {

struct AllocationOptions {
    std::optional<std::uint64_t> targetBytes;  // whole file
    std::optional<double> targetBpw;           // tensor data bits per weight
    TieTarget ties = TieTarget::None;
    QuantMethod method = QuantMethod::Rtn;  // written on every rule (e.g. gptq)
    std::vector<std::pair<std::string, std::string>> methodOptions;
    std::vector<std::string> formats;  // restrict to these stored formats (empty: all)
    SizeOptions size;
    // Header bytes kept free for provenance the export adds that `size` does not name (e.g. the
    // calibration note of `quantize --text`, about 60 bytes).
    std::uint64_t reserveBytes = 0;
};

struct AllocationResult {
    TensorLayout layout;
    std::string text;  // layout text (TensorLayout::toText)
    double predictedKl = 0;
    SizeReport size;           // of `text`
    std::uint64_t budget = 0;  // the target in bytes (file, or tensor data for a bpw target)
};

Result<AllocationResult> allocateLayout(const Model& model, const SensitivityTable& table,
                                        const AllocationOptions& options);

// Sum of the measured ΔKL of each table tensor's planned format; tensors whose stored format
// the table lacks are counted in `missing` (and add nothing).
double predictedKl(const SensitivityTable& table, const LayoutPlan& plan, int* missing = nullptr);

}  // namespace ql
