// The schedule of GPTQ on the device (cuda_gptq.cpp), plain C++ so that a test can replay it on
// the CPU: the lazy blocks, where each scale group ("unit") is fitted, and which of a unit's
// columns lie beyond the block that fits it.
//
// Why the last matters: the device runs GPTQ left-looking on F, the upper Cholesky factor of the
// damped Hessian (Hd = F F^T, U = F^-1 is the CPU's factor). A column's weight is known only
// when the loop reaches it (w_i = w0_i + (1/F_ii) sum_{j<i} D_j F_ji, D = W0 - Q), but a unit
// is fitted when the loop first reaches one of its columns, from the current (right-looking)
// weights of all its columns: W_k(t) = w0_k - sum_{j<t} e_j U_jk for k >= t. Inside the block
// the kernel gets them by a triangular solve with the block's F; a column beyond the block needs
// rows 0..t-1 of U, which the device computes for those columns only (U's first `uRows` rows).
// Blocks are cut at unit boundaries where that keeps every unit inside the block that fits it
// (no act-order, units of at most kMaxBlock columns), so the common case needs no rows of U.
#pragma once

#include <cstdint>
#include <vector>

namespace ql::cuda {

struct GptqPlan {
    static constexpr std::int64_t kMaxBlock = 128;

    std::vector<std::int64_t> blockStart;  // blocks + 1 positions: block b = [start[b], start[b+1])
    std::vector<std::int32_t> fitAt;       // position -> unit fitted before it is quantized, or -1
    // Positions of the columns of units fitted in an earlier block than theirs, ordered by the
    // position that fits their unit; unit u owns beyond[unitBeyond[2u] .. unitBeyond[2u+1]) and
    // block b's fits own beyond[blockBeyond[b] .. blockBeyond[b+1]).
    std::vector<std::int32_t> beyond;
    std::vector<std::int32_t> unitBeyond;   // 2 per unit
    std::vector<std::int64_t> blockBeyond;  // blocks + 1
    std::int64_t uRows = 0;  // rows of U those columns need: the last position fitting one of them

    std::int64_t blocks() const { return std::int64_t(blockStart.size()) - 1; }
};

// pos: original column -> position (the processing order's inverse). unitLen: columns per unit
// (scale group), contiguous in the original order. Without fits in the loop (static groups, a
// per-tensor grid) fitAt is all -1 and nothing lies beyond.
GptqPlan planGptq(const std::vector<std::int32_t>& pos, std::int64_t unitLen, bool fitsInLoop,
                  bool actOrder);

}  // namespace ql::cuda
