// The Ada-KV allocation on the device: which prefix positions each KV head of a layer keeps, given the scores S
// [Hk, m]. Reference: compress.cc allocate (same keys, same rule, so the same positions, not just the same count).
//
// Selection key (compress.cc select_key): (~ordered_bits(score)) << 32 | index, ascending = higher score first, then
// the lower index; index = position within a head (step 1) or the head-major flat index h * m + j (step 2: the
// lower head, then the lower position). Keys are unique, so any correct sort gives the one answer.
//   1. every head's own top f: a segmented radix sort (CUB) of the head's keys, the first f of each segment.
//   2. the remaining Hk * (Bp - f) slots: one radix sort of the flat keys, taken ones moved to the end (key ~0).
//   3. compaction: per head, its kept positions in ascending order (block scan over flags), written densely after
//      a header [NaN count, count per head], so one copy brings the answer back.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "kernels.cuh"

namespace kvf {
namespace cuda {

namespace {

constexpr int kSelThreads = 256;

__device__ __forceinline__ uint64_t select_key(float s, uint32_t idx) {
  return (uint64_t)(~ordered_bits(s)) << 32 | idx;
}

__global__ void head_keys_kernel(uint64_t* __restrict__ keys, const float* __restrict__ S, int Hk, int m) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)Hk * m) return;
  keys[i] = select_key(S[i], (uint32_t)(i % m));
}

__global__ void offsets_kernel(int* __restrict__ off, int n, int stride) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) off[i] = i * stride;
}

// flags[h * m + j] = 1 for the first f keys of head h's sorted segment.
__global__ void take_head_top_kernel(uint8_t* __restrict__ flags, const uint64_t* __restrict__ sorted, int Hk, int m,
                                     int f) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)Hk * f) return;
  const int h = (int)(i / f), r = (int)(i % f);
  const uint32_t j = (uint32_t)(sorted[(size_t)h * m + r] & 0xFFFFFFFFu);
  flags[(size_t)h * m + j] = 1;
}

__global__ void flat_keys_kernel(uint64_t* __restrict__ keys, const float* __restrict__ S,
                                 const uint8_t* __restrict__ flags, int64_t total) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  keys[i] = flags[i] ? ~(uint64_t)0 : select_key(S[i], (uint32_t)i);
}

__global__ void take_flat_top_kernel(uint8_t* __restrict__ flags, const uint64_t* __restrict__ sorted, int64_t rest) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rest) return;
  flags[(uint32_t)(sorted[i] & 0xFFFFFFFFu)] = 1;
}

using BlockScanI = cub::BlockScan<int, kSelThreads>;
using BlockReduceI = cub::BlockReduce<int, kSelThreads>;

// grid Hk: out[1 + h] = head h's kept count, out[0] += NaN scores seen (atomic: a count, order-free).
__global__ void __launch_bounds__(kSelThreads) count_kernel(int32_t* __restrict__ out, const uint8_t* __restrict__ flags,
                                                             const float* __restrict__ S, int m) {
  __shared__ typename BlockReduceI::TempStorage tmp;
  const int h = blockIdx.x;
  int c = 0, nan = 0;
  for (int j = threadIdx.x; j < m; j += kSelThreads) {
    c += flags[(size_t)h * m + j];
    nan += isnan(S[(size_t)h * m + j]) ? 1 : 0;
  }
  const int total = BlockReduceI(tmp).Sum(c);
  __syncthreads();
  const int nans = BlockReduceI(tmp).Sum(nan);
  if (threadIdx.x == 0) {
    out[1 + h] = total;
    if (nans) atomicAdd(out, nans);
  }
}

// grid Hk: head h's kept positions, ascending, at out[1 + Hk + (counts of heads before h)].
__global__ void __launch_bounds__(kSelThreads) compact_kernel(int32_t* __restrict__ out, const uint8_t* __restrict__ flags,
                                                               int Hk, int m) {
  __shared__ typename BlockScanI::TempStorage tmp;
  __shared__ int s_base;
  const int h = blockIdx.x;
  if (threadIdx.x == 0) {
    int b = 0;
    for (int g = 0; g < h; g++) b += out[1 + g];
    s_base = b;
  }
  __syncthreads();
  int32_t* dst = out + 1 + Hk + s_base;
  int running = 0;
  for (int j0 = 0; j0 < m; j0 += kSelThreads) {
    const int j = j0 + threadIdx.x;
    const int flag = j < m ? flags[(size_t)h * m + j] : 0;
    int excl = 0, agg = 0;
    BlockScanI(tmp).ExclusiveSum(flag, excl, agg);
    __syncthreads();
    if (flag) dst[running + excl] = j;
    running += agg;
  }
}

unsigned blocks_for(int64_t n, int t) { return (unsigned)((n + t - 1) / t); }

}  // namespace

void launch_select(const Stream& st, int32_t* out, const float* S, int32_t Hk, int32_t m, int32_t f, int64_t rest,
                   GrowBuffer& ws) {
  const int64_t total = (int64_t)Hk * m;
  KVF_CHECK(total < ((int64_t)1 << 31), "select: Hk * m exceeds the sort's 2^31 items");
  // workspace: keys in / out, flags, segment offsets, then CUB's temporary storage (the larger of the two sorts)
  size_t seg_bytes = 0, flat_bytes = 0;
  CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(nullptr, seg_bytes, (const uint64_t*)nullptr, (uint64_t*)nullptr,
                                                      (int)total, Hk, (const int*)nullptr, (const int*)nullptr, 0, 64,
                                                      st.s));
  CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, flat_bytes, (const uint64_t*)nullptr, (uint64_t*)nullptr,
                                            (int)total, 0, 64, st.s));
  auto al = [](size_t b) { return (b + 255) & ~(size_t)255; };
  const size_t kb = al((size_t)total * sizeof(uint64_t)), fb = al((size_t)total), ob = al((size_t)(Hk + 1) * sizeof(int));
  const size_t tb = std::max(seg_bytes, flat_bytes);
  char* base = static_cast<char*>(ws.ensure(2 * kb + fb + ob + tb, st));
  uint64_t* keys_in = reinterpret_cast<uint64_t*>(base);
  uint64_t* keys_out = reinterpret_cast<uint64_t*>(base + kb);
  uint8_t* flags = reinterpret_cast<uint8_t*>(base + 2 * kb);
  int* off = reinterpret_cast<int*>(base + 2 * kb + fb);
  void* temp = base + 2 * kb + fb + ob;

  CUDA_CHECK(cudaMemsetAsync(flags, 0, (size_t)total, st.s));
  CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(int32_t), st.s));
  if (f > 0) {
    head_keys_kernel<<<blocks_for(total, 256), 256, 0, st.s>>>(keys_in, S, Hk, m);
    KVF_AFTER_LAUNCH(st, "head_keys_kernel");
    offsets_kernel<<<blocks_for(Hk + 1, 256), 256, 0, st.s>>>(off, Hk, m);
    KVF_AFTER_LAUNCH(st, "offsets_kernel");
    size_t tbytes = seg_bytes;
    const int* offc = off;  // the same iterator types as the size query above
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeys(temp, tbytes, (const uint64_t*)keys_in, keys_out, (int)total, Hk,
                                                        offc, offc + 1, 0, 64, st.s));
    KVF_AFTER_LAUNCH(st, "DeviceSegmentedRadixSort::SortKeys");
    take_head_top_kernel<<<blocks_for((int64_t)Hk * f, 256), 256, 0, st.s>>>(flags, keys_out, Hk, m, f);
    KVF_AFTER_LAUNCH(st, "take_head_top_kernel");
  }
  if (rest > 0) {
    flat_keys_kernel<<<blocks_for(total, 256), 256, 0, st.s>>>(keys_in, S, flags, total);
    KVF_AFTER_LAUNCH(st, "flat_keys_kernel");
    size_t tbytes = flat_bytes;
    CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp, tbytes, (const uint64_t*)keys_in, keys_out, (int)total, 0, 64,
                                              st.s));
    KVF_AFTER_LAUNCH(st, "DeviceRadixSort::SortKeys");
    take_flat_top_kernel<<<blocks_for(rest, 256), 256, 0, st.s>>>(flags, keys_out, rest);
    KVF_AFTER_LAUNCH(st, "take_flat_top_kernel");
  }
  count_kernel<<<Hk, kSelThreads, 0, st.s>>>(out, flags, S, m);
  KVF_AFTER_LAUNCH(st, "count_kernel");
  compact_kernel<<<Hk, kSelThreads, 0, st.s>>>(out, flags, Hk, m);
  KVF_AFTER_LAUNCH(st, "compact_kernel");
}

}  // namespace cuda
}  // namespace kvf
