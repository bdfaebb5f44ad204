// What GPU, if any, this process can use. Never throws: a machine without a driver is a normal answer.
#pragma once
#include <string>

namespace kvf {

struct DeviceInfo {
  bool cuda_compiled = false;   // the CUDA backend was built into this binary
  bool cuda_usable = false;     // a device answered
  int device_count = 0;
  std::string name;             // device 0, when usable
  std::string reason;           // why not usable (the CUDA runtime's message), when not
  int cc_major = 0, cc_minor = 0;
  size_t total_memory = 0;
};

DeviceInfo query_device();

}  // namespace kvf
