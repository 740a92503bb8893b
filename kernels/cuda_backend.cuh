// The CUDA backend: one object owning the device, its stream and library handles.
#pragma once

#include <memory>
#include <vector>

#include "compute/backend.h"

namespace ql::cuda {

std::vector<DeviceInfo> listDevices();
Result<std::unique_ptr<Backend>> createCudaBackend(int deviceIndex);

}  // namespace ql::cuda
