// Round-to-nearest quantization of whole tensors in any QuantFormat, multithreaded over rows and
// cancellable through the progress callback.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "model/model.h"
#include "quant/format.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

// w: rows x cols, row-major (rows = output channels). importance: optional per-column weights
// (e.g. ActivationStats::channelMeanSquare of the layer input), cols values >= 0; the llama.cpp
// formats then minimise sum_i importance_i * (w_i - q_i)^2 in their scale search (without it,
// Q8_0..Q5_1 are byte-identical to llama.cpp's reference quantizer). The other formats have no
// scale search and ignore it. threads: 0 = all cores.
// Errors: InvalidArgument for a bad shape or a format that does not fit (naming the fallback),
// Cancelled when the callback returns false.
Result<QuantizedTensor> quantizeRtn(const float* w, std::int64_t rows, std::int64_t cols,
                                    const QuantFormat& format, const float* importance = nullptr,
                                    const ProgressFn& progress = {}, int threads = 0);

// A model tensor, decoded to float first; 1-D tensors are one row.
Result<QuantizedTensor> quantizeRtn(const Model& model, const TensorInfo& tensor,
                                    const QuantFormat& format, const float* importance = nullptr,
                                    const ProgressFn& progress = {}, int threads = 0);

// Runs fn(rowBegin, rowEnd) over [0, rows) in chunks of about `chunkRows` rows on up to
// `threads` threads (0 = all cores), the calling thread included. Only the calling thread calls
// `progress`, between its chunks; a false return stops every worker after its current chunk and
// gives Cancelled.
Status parallelForRows(std::int64_t rows, std::int64_t chunkRows,
                       const std::function<void(std::int64_t, std::int64_t)>& fn,
                       const ProgressFn& progress = {}, std::string_view what = {},
                       int threads = 0);

}  // namespace ql
