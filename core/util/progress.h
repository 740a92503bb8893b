// Progress reporting for long core work (load, statistics, calibrate, GPTQ, evaluate, export).
// The callback receives the fraction done in [0,1] and a short description; returning false
// cancels the work, which then returns ErrorCode::Cancelled and leaves no partial output.
#pragma once

#include <functional>
#include <string_view>

namespace ql {

using ProgressFn = std::function<bool(double fraction, std::string_view what)>;

inline bool reportProgress(const ProgressFn& fn, double fraction, std::string_view what = {})
{
    return !fn || fn(fraction, what);
}

}  // namespace ql
