// The CUDA backend's factory with its options (plain C++: the engine and the GPU check include it without nvcc).
// ops.h declares make_cuda_backend(device) with the default options.
#pragma once
#include <cstdint>
#include <memory>

#include "ops.h"

namespace kvf {

struct CudaOptions {
  // F16/BF16 matrix products: activations sent to the tensor cores as hi + lo pairs of the weight dtype (fp32-like
  // accuracy, twice the MMA work) when true; rounded once to the weight dtype when false.
  bool matmul_split_activations = true;
  // Synchronise after every kernel launch so an asynchronous fault names its kernel (the GPU check's correctness
  // pass; slow).
  bool sync_after_launch = false;
  // Record CUDA events around the decode attention kernels (the GPU check's kernel-only bandwidth).
  bool time_decode_kernels = false;
};

std::unique_ptr<Backend> make_cuda_backend(int32_t device, const CudaOptions& opts);

// Milliseconds the kernels of the last attn_decode call took on the device (waits for them). Throws BadArgument
// unless `be` is a CUDA backend made with time_decode_kernels.
double cuda_last_decode_kernel_ms(Backend& be);

}  // namespace kvf
