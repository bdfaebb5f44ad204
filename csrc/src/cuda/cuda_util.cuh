// CUDA helpers shared by the kernels and the backend: checked calls, checked launches, grow-only device buffers.
//
// Every CUDA runtime call goes through CUDA_CHECK and every launch is followed by KVF_AFTER_LAUNCH: a failure
// throws kvf::Error(Internal) naming the call (or kernel), the file, the line and the runtime's message. Nothing
// here calls exit(). Asynchronous faults (an illegal address inside a kernel) surface at the next checked call;
// with Stream::sync_each set (the GPU check sets it) every launch is followed by a synchronisation, so the error
// names the kernel that faulted.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace kvf {
namespace cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so the next launch check does not report it again
  throw Error(ErrorKind::Internal, std::string("CUDA error in ") + what + " at " + file + ":" + std::to_string(line) +
                                       ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

// The stream every op of one backend runs on, in order.
struct Stream {
  cudaStream_t s = nullptr;
  bool sync_each = false;  // synchronise after every launch (debugging; the GPU check's correctness pass)
};

inline void after_launch(const Stream& st, const char* kernel, const char* file, int line) {
  cudaError_t e = cudaGetLastError();  // launch-configuration errors (bad grid, too much shared memory)
  if (e != cudaSuccess) throw_cuda_error(e, kernel, file, line);
  if (st.sync_each) {
    e = cudaStreamSynchronize(st.s);  // faults inside the kernel
    if (e != cudaSuccess) throw_cuda_error(e, kernel, file, line);
  }
}

}  // namespace cuda
}  // namespace kvf

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t kvf_cuda_err_ = (call);                                                    \
    if (kvf_cuda_err_ != cudaSuccess) ::kvf::cuda::throw_cuda_error(kvf_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define KVF_AFTER_LAUNCH(st, kernel_name) ::kvf::cuda::after_launch((st), (kernel_name), __FILE__, __LINE__)

namespace kvf {
namespace cuda {

// A device buffer that only grows (cudaMalloc when a larger size is asked for, never per call otherwise).
// Growing synchronises the stream first: kernels queued earlier may still read the old buffer.
class GrowBuffer {
 public:
  GrowBuffer() = default;
  GrowBuffer(const GrowBuffer&) = delete;
  GrowBuffer& operator=(const GrowBuffer&) = delete;
  ~GrowBuffer() {
    if (p_) cudaFree(p_);  // destructor: no throw; the context may already be torn down at exit
  }
  void* ensure(size_t bytes, const Stream& st) {
    if (bytes <= cap_ && p_) return p_;
    size_t want = bytes < 2 * cap_ ? 2 * cap_ : bytes;
    if (want < (size_t)1 << 16) want = (size_t)1 << 16;
    if (p_) {
      CUDA_CHECK(cudaStreamSynchronize(st.s));
      CUDA_CHECK(cudaFree(p_));
      p_ = nullptr;
      cap_ = 0;
    }
    CUDA_CHECK(cudaMalloc(&p_, want));
    cap_ = want;
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Host arrays an op needs on the device (ids, positions, page lists), packed 256-byte aligned and sent with one
// cudaMemcpyAsync. Safe to reuse per op: the copy from pageable memory returns once the host bytes are staged,
// and the next op's copy is ordered after this op's kernels on the same stream.
class Staging {
 public:
  void clear() { host_.clear(); }
  // Returns the byte offset of the array inside the pack.
  size_t add(const void* src, size_t bytes) {
    const size_t off = (host_.size() + 255) & ~(size_t)255;
    host_.resize(off + bytes);
    if (bytes) std::memcpy(host_.data() + off, src, bytes);
    return off;
  }
  // Uploads the pack; returns the device base (pointers = base + offset), valid until the next upload.
  char* upload(const Stream& st) {
    char* base = static_cast<char*>(dev_.ensure(host_.size() + 256, st));
    if (!host_.empty()) CUDA_CHECK(cudaMemcpyAsync(base, host_.data(), host_.size(), cudaMemcpyHostToDevice, st.s));
    return base;
  }

 private:
  std::vector<char> host_;
  GrowBuffer dev_;
};

}  // namespace cuda
}  // namespace kvf
