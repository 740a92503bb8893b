// The CUDA ModelRunner of the Llama family (interface in compute/runner.h).
#pragma once

#include <memory>

#include "compute/runner.h"
#include "cuda_context.h"

namespace ql::cuda {

Result<std::unique_ptr<ModelRunner>> createCudaLlamaRunner(std::shared_ptr<CudaContext> ctx,
                                                           const LlamaWeightsView& weights,
                                                           Precision precision,
                                                           const RunnerOptions& options = {});

}  // namespace ql::cuda
