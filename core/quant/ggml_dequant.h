// Decoding of every stored tensor type to float32: F32, F16, BF16 and llama.cpp's block formats
// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (block layouts as in ggml).
// Results equal llama.cpp's dequantize_row_* bit for bit (tests/test_dequant checks this against
// llama.cpp-made vectors).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/tensor_type.h"
#include "util/progress.h"
#include "util/result.h"

namespace ql {

float fp16ToFp32(std::uint16_t h);
std::uint16_t fp32ToFp16(float f);  // round to nearest even
float bf16ToFp32(std::uint16_t h);
std::uint16_t fp32ToBf16(float f);  // round to nearest even

// Decode `count` elements (a multiple of the type's block size) from `src` into `dst`.
// `src` must hold exactly tensorBytes(type, count) bytes.
Status dequantizeRow(TensorType type, std::span<const std::uint8_t> src, std::span<float> dst);

// Whole tensor, decoded in chunks on all cores; cancellable.
Result<std::vector<float>> dequantizeTensor(const Model& model, const TensorInfo& tensor,
                                            const ProgressFn& progress = {});
// The same into `out` (exactly the tensor's element count), e.g. a matrix's own storage.
Status dequantizeTensorInto(const Model& model, const TensorInfo& tensor, std::span<float> out,
                            const ProgressFn& progress = {});

}  // namespace ql
