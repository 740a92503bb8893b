// Element types of device tensors. Plain C++ (no CUDA types): shared by the kernels, the host-side
// runner and the test wrappers in ops.h.
#pragma once

#include <cstddef>

namespace ql::cuda {

enum class DType {
    F32,   // float
    BF16,  // bfloat16, stored as 16 bits; host code holds it as std::uint16_t
};

inline std::size_t dtypeSize(DType t)
{
    return t == DType::F32 ? 4 : 2;
}

inline const char* dtypeName(DType t)
{
    return t == DType::F32 ? "f32" : "bf16";
}

}  // namespace ql::cuda
