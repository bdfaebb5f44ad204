// The CUDA backend's entry point. The kernels come with the CUDA issues (op table ops one by one); until every
// op of the forward pass has a kernel, asking for this backend is a clear error, never a silent CPU fallback.
#include "ops.h"

namespace kvf {
std::unique_ptr<Backend> make_cuda_backend(int32_t device) {
  (void)device;
  fail(ErrorKind::BadArgument, "the CUDA backend's forward-pass ops are not built yet; use backend 'cpu'");
}
}  // namespace kvf
