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
// cudaMemcpyAsync from pinned memory, so the host does not wait for the GPU (a copy from pageable memory may block
// until the stream's earlier kernels have run, which would serialise host and GPU every op). The pinned packs form
// a ring of kRing: a pack is rewritten only after the event recorded behind its last copy has completed (normally
// long ago). One device buffer serves every pack: op N + 1's copy is ordered after op N's kernels on the stream.
class Staging {
 public:
  static constexpr int kRing = 8;
  Staging() = default;
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {  // destructor: no throw
    for (Slot& sl : ring_) {
      if (sl.ev) {
        cudaEventSynchronize(sl.ev);
        cudaEventDestroy(sl.ev);
      }
      if (sl.p) cudaFreeHost(sl.p);
    }
  }
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
    if (host_.empty()) return base;
    Slot& sl = ring_[next_];
    next_ = (next_ + 1) % kRing;
    if (sl.ev) CUDA_CHECK(cudaEventSynchronize(sl.ev));  // this pack's previous copy has been read
    else CUDA_CHECK(cudaEventCreateWithFlags(&sl.ev, cudaEventDisableTiming));
    if (sl.cap < host_.size()) {
      if (sl.p) CUDA_CHECK(cudaFreeHost(sl.p));
      sl.p = nullptr;
      sl.cap = 0;
      size_t want = 4096;
      while (want < host_.size()) want *= 2;
      void* p = nullptr;
      CUDA_CHECK(cudaMallocHost(&p, want));
      sl.p = static_cast<char*>(p);
      sl.cap = want;
    }
    std::memcpy(sl.p, host_.data(), host_.size());
    CUDA_CHECK(cudaMemcpyAsync(base, sl.p, host_.size(), cudaMemcpyHostToDevice, st.s));
    CUDA_CHECK(cudaEventRecord(sl.ev, st.s));
    return base;
  }

 private:
  struct Slot {
    char* p = nullptr;  // pinned host memory
    size_t cap = 0;
    cudaEvent_t ev = nullptr;
  };
  std::vector<char> host_;
  GrowBuffer dev_;
  Slot ring_[kRing];
  int next_ = 0;
};

}  // namespace cuda
}  // namespace kvf
