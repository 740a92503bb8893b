// The CUDA backend: one object owning the device's CudaContext (stream, cuBLAS handles), creating
// model runners on it. Included by compute/factory.cpp, so plain C++ only.
#pragma once

#include <memory>
#include <vector>

#include "compute/backend.h"

namespace ql::cuda {

std::vector<DeviceInfo> listDevices();
Result<std::unique_ptr<Backend>> createCudaBackend(int deviceIndex);

}  // namespace ql::cuda
