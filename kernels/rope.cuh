// Rotary position embedding on the device, both pairings, from a precomputed cos/sin table.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.h"

namespace ql::cuda {

// Rotates heads × headDim columns of every row of `x` (rows × ld, F32 or BF16) in place. Row r is
// at position r % seqLen (batches of sequences, each from position 0); cosTable/sinTable hold
// seqLen × headDim/2 floats (the host's RopeTable, magnitude applied). halfSplit pairs
// (x[i], x[i + d/2]), else (x[2i], x[2i+1]). Arithmetic in float, as cpu::applyRope.
void launchRope(void* x, DType type, std::int64_t rows, std::int64_t ld, int heads, int headDim,
                const float* cosTable, const float* sinTable, std::int64_t seqLen, bool halfSplit,
                cudaStream_t stream);

}  // namespace ql::cuda
