#include <cuda_runtime.h>
#include "device.h"

namespace kvf {
DeviceInfo query_device_cuda() {
  DeviceInfo info;
  info.cuda_compiled = true;
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);  // on a machine without a driver: an error code, not a crash
  if (err != cudaSuccess) {
    info.reason = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return info;
  }
  info.device_count = n;
  if (n == 0) {
    info.reason = "no CUDA device";
    return info;
  }
  cudaDeviceProp prop;
  err = cudaGetDeviceProperties(&prop, 0);
  if (err != cudaSuccess) {
    info.reason = cudaGetErrorString(err);
    return info;
  }
  info.cuda_usable = true;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_memory = prop.totalGlobalMem;
  return info;
}
}  // namespace kvf
