#include "device.h"

namespace kvf {
#ifndef KVF_CUDA
DeviceInfo query_device() {
  DeviceInfo info;
  info.reason = "built without the CUDA backend (nvcc was not found at build time, or KVFLEET_CUDA=OFF)";
  return info;
}
#else
DeviceInfo query_device_cuda();  // cuda/device.cu
DeviceInfo query_device() { return query_device_cuda(); }
#endif
}  // namespace kvf
