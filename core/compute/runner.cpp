#include "compute/runner.h"

namespace ql {

const char* precisionName(Precision p)
{
    return p == Precision::Float32 ? "f32" : "bf16";
}

std::optional<Precision> parsePrecision(std::string_view name)
{
    if (name == "f32" || name == "float32") return Precision::Float32;
    if (name == "bf16" || name == "bfloat16") return Precision::BFloat16;
    return std::nullopt;
}

}  // namespace ql
