// Token sampling on the device. Reference: sampling.cc sample_token (the CPU backend's sample op); same steps, same
// arithmetic per element (float soft-cap, double probabilities exp((l - max) / t)), only the sums run in a fixed
// blocked order instead of one sequential loop, so a sampled row can differ from the CPU only when its draw falls
// within rounding of a boundary between two tokens. Greedy rows are exact.
//
// One block of kThreads per row. Per row:
//   inactive: token -1.
//   greedy (temperature 0): argmax of the soft-capped logits, the lower id on ties.
//   temperature, no filter: candidates are all ids in id order. Thread t owns a contiguous chunk of them; chunk sums
//     of p = exp((l - max) / t) are scanned across the block (fixed order), the draw target u * total is found in
//     the chunk whose [exclusive, inclusive) range holds it, and that thread walks its chunk.
//   top-k and/or top-p: candidates in descending logit order, ties by lower id, as the CPU's sort orders them: a
//     segmented radix sort (CUB, in the CUDA toolkit) of the filtered rows only, keys = order-preserving bits of the
//     capped logit, then the id's complement in ceil(log2 V) bits. top-k keeps the first k; top-p keeps the shortest prefix whose
//     share of the mass reaches top_p; the draw walks the kept prefix as above.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <cmath>

#include "kernels.cuh"

namespace kvf {
namespace cuda {

namespace {

constexpr int kThreads = 512;

// As sampling.cc: in double, rounded once to float (float tanhf differs between libdevice and glibc by ulps; the
// double results agree to ~1 ulp of double, so the floats agree except in about 1 of 2^29 cases).
__device__ __forceinline__ float capped(float x, float softcap) {
  return softcap > 0.f ? (float)((double)softcap * tanh((double)x / (double)softcap)) : x;
}

// Sort keys of the filtered rows: keys[f * V + i] = ordered_bits(capped logit of row rows[f], id i) << idbits |
// (mask - i), mask = 2^idbits - 1 >= V - 1. Sorted descending: the larger logit first, then the lower id. Only the
// low 32 + idbits bits are sorted.
__global__ void sample_keys_kernel(uint64_t* __restrict__ keys, const float* __restrict__ logits,
                                   const int32_t* __restrict__ rows, int64_t n, int V, int idbits, float softcap) {
  const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const int64_t f = idx / V;
  const uint32_t id = (uint32_t)(idx % V), mask = (1u << idbits) - 1u;
  const float x = capped(logits[(size_t)rows[f] * V + id], softcap);
  keys[idx] = ((uint64_t)ordered_bits(x) << idbits) | (uint64_t)(mask - id);
}

__global__ void segment_offsets_kernel(int* __restrict__ off, int R, int V) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r <= R) off[r] = r * V;
}

struct ArgMax {
  float v;
  int i;
};
struct ArgMaxOp {
  __device__ __forceinline__ ArgMax operator()(const ArgMax& a, const ArgMax& b) const {
    // an empty side (id -1) never wins (NaN entries never enter a side); equal values: the lower id
    if (b.i < 0) return a;
    if (a.i < 0) return b;
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
  }
};

struct MinOp {
  __device__ __forceinline__ int operator()(int a, int b) const { return b < a ? b : a; }
};

using BlockScanD = cub::BlockScan<double, kThreads>;
using BlockReduceA = cub::BlockReduce<ArgMax, kThreads>;
using BlockReduceI = cub::BlockReduce<int, kThreads>;

union SampleSmem {
  typename BlockScanD::TempStorage scan;
  typename BlockReduceA::TempStorage arg;
  typename BlockReduceI::TempStorage red;
};

// The candidate order: filtered rows read the sorted keys, the others use id order.
struct Candidates {
  const float* logits;      // this row's raw logits
  const uint64_t* sorted;   // this row's sorted keys, or null (id order)
  float softcap;
  uint32_t mask;            // 2^idbits - 1
  __device__ __forceinline__ int id(int i) const {
    return sorted ? (int)(mask - (uint32_t)(sorted[i] & mask)) : i;
  }
  __device__ __forceinline__ double p(int i, float mx, double invt) const {
    return exp(((double)capped(logits[id(i)], softcap) - (double)mx) * invt);
  }
};

// Scans the chunk sums of p over candidates [0, count): thread t owns [t * chunk, (t + 1) * chunk). Returns the
// block total; sm_excl[t] = thread t's exclusive prefix, sm_excl[kThreads] = the total. The scan's prefixes
// partition [0, total) into the threads' ranges [sm_excl[t], sm_excl[t + 1]) whatever the rounding.
__device__ double scan_chunks(SampleSmem& sm, double* sm_excl, const Candidates& c, int count, int chunk, float mx,
                              double invt) {
  const int b = threadIdx.x * chunk, e = min(count, b + chunk);
  double s = 0.0;
  for (int i = b; i < e; i++) s += c.p(i, mx, invt);
  double excl = 0.0, agg = 0.0;
  BlockScanD(sm.scan).ExclusiveSum(s, excl, agg);
  sm_excl[threadIdx.x] = excl;
  if (threadIdx.x == 0) sm_excl[kThreads] = agg;
  __syncthreads();
  return agg;
}

// The first candidate index at which the running sum crosses a threshold, i.e. `pred(cum)` turns true. Thread t
// walks its chunk when the crossing lies in its range (pred false at sm_excl[t], true at sm_excl[t + 1]); if
// rounding keeps its walk short of the crossing, the chunk's last index. The lowest such index over the block (one
// answer, whatever the rounding); count when no thread finds one.
template <typename Pred>
__device__ int first_crossing(SampleSmem& sm, int* s_first, const double* sm_excl, const Candidates& c, int count,
                              int chunk, float mx, double invt, Pred pred) {
  const int t = threadIdx.x, b = t * chunk, e = min(count, b + chunk);
  int found = count;
  if (b < e && !pred(sm_excl[t]) && pred(sm_excl[t + 1])) {
    double s = 0.0;
    found = e - 1;
    for (int i = b; i < e; i++) {
      s += c.p(i, mx, invt);
      if (pred(sm_excl[t] + s)) {
        found = i;
        break;
      }
    }
  }
  const int first = BlockReduceI(sm.red).Reduce(found, MinOp());
  if (t == 0) *s_first = first;
  __syncthreads();
  return *s_first;
}

// rows[r]: the row's parameters (u: its uniform draw in [0, 1), counter_uniform computed on the host).
__global__ void __launch_bounds__(kThreads) sample_rows_kernel(int32_t* __restrict__ out, const float* __restrict__ logits,
                                                               const uint64_t* __restrict__ sorted,
                                                               const SampleRowDev* __restrict__ rows, int V,
                                                               int idbits, float softcap) {
  __shared__ SampleSmem sm;
  __shared__ double sm_excl[kThreads + 1];
  __shared__ int s_best, s_first;
  const int r = blockIdx.x, tid = threadIdx.x;
  const SampleRowDev row = rows[r];
  const float* lr = logits + (size_t)r * V;
  if (!row.active) {
    if (tid == 0) out[r] = -1;
    return;
  }
  // the maximum (greedy: its id), lower id on ties
  // As the CPU's loop (best = 0; i wins when l[i] > l[best]): NaN never wins, and a NaN at id 0 stays the answer.
  ArgMax a{-INFINITY, -1};
  for (int i = tid; i < V; i += kThreads) {
    const float x = capped(lr[i], softcap);
    if (!isnan(x) && (a.i < 0 || x > a.v)) a = ArgMax{x, i};
  }
  const ArgMax best = BlockReduceA(sm.arg).Reduce(a, ArgMaxOp());
  if (tid == 0) s_best = (best.i < 0 || isnan(capped(lr[0], softcap))) ? 0 : best.i;
  __syncthreads();
  if (row.temperature == 0.f) {
    if (tid == 0) out[r] = s_best;
    return;
  }
  const float mx = capped(lr[s_best], softcap);
  const Candidates c{lr, row.sort_slot >= 0 ? sorted + (size_t)row.sort_slot * V : nullptr, softcap,
                     (1u << idbits) - 1u};
  int count = (row.top_k > 0 && row.top_k < V) ? row.top_k : V;
  int chunk = (count + kThreads - 1) / kThreads;
  double total = scan_chunks(sm, sm_excl, c, count, chunk, mx, row.invt);
  if (row.top_p < 1.f) {
    // the shortest prefix whose share of the mass reaches top_p, then its own total in chunks of the kept count
    const double top_p = (double)row.top_p, tot = total;
    const int last = first_crossing(sm, &s_first, sm_excl, c, count, chunk, mx, row.invt,
                                    [=](double cum) { return cum / tot >= top_p; });
    count = last >= count ? count : last + 1;
    chunk = (count + kThreads - 1) / kThreads;
    total = scan_chunks(sm, sm_excl, c, count, chunk, mx, row.invt);
  }
  const double target = row.u * total;
  const int i = first_crossing(sm, &s_first, sm_excl, c, count, chunk, mx, row.invt,
                               [=](double cum) { return target < cum; });
  if (tid == 0) out[r] = c.id(i >= count ? count - 1 : i);
}

}  // namespace

void launch_sample(const Stream& st, int32_t* tokens, const float* logits, int32_t R, int32_t V,
                   const SampleRowDev* rows, const int32_t* sort_rows, int32_t n_sort, float softcap, GrowBuffer& ws) {
  if (R <= 0) return;
  int idbits = 1;
  while (idbits < 31 && ((int64_t)1 << idbits) < V) idbits++;
  const uint64_t* sorted = nullptr;
  if (n_sort > 0) {
    const int64_t n = (int64_t)n_sort * V;
    KVF_CHECK(n < (int64_t)1 << 31, "sample: filtered rows x vocabulary exceeds the sort's 2^31 items");
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(nullptr, temp_bytes, (const uint64_t*)nullptr,
                                                                  (uint64_t*)nullptr, (int)n, n_sort,
                                                                  (const int*)nullptr, (const int*)nullptr, 0,
                                                                  32 + idbits, st.s));
    const size_t keys_bytes = (size_t)n * sizeof(uint64_t);
    const size_t off_bytes = ((size_t)(n_sort + 1) * sizeof(int) + 255) & ~(size_t)255;
    char* base = static_cast<char*>(ws.ensure(2 * keys_bytes + off_bytes + temp_bytes, st));
    uint64_t* keys_in = reinterpret_cast<uint64_t*>(base);
    uint64_t* keys_out = reinterpret_cast<uint64_t*>(base + keys_bytes);
    int* off = reinterpret_cast<int*>(base + 2 * keys_bytes);
    void* temp = base + 2 * keys_bytes + off_bytes;
    sample_keys_kernel<<<(unsigned)((n + 255) / 256), 256, 0, st.s>>>(keys_in, logits, sort_rows, n, V, idbits, softcap);
    KVF_AFTER_LAUNCH(st, "sample_keys_kernel");
    segment_offsets_kernel<<<(n_sort + 1 + 255) / 256, 256, 0, st.s>>>(off, n_sort, V);
    KVF_AFTER_LAUNCH(st, "segment_offsets_kernel");
    const int* offc = off;  // the same iterator types as the size query above
    CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(temp, temp_bytes, (const uint64_t*)keys_in, keys_out,
                                                                  (int)n, n_sort, offc, offc + 1, 0, 32 + idbits,
                                                                  st.s));
    KVF_AFTER_LAUNCH(st, "DeviceSegmentedRadixSort::SortKeysDescending");
    sorted = keys_out;
  }
  sample_rows_kernel<<<R, kThreads, 0, st.s>>>(tokens, logits, sorted, rows, V, idbits, softcap);
  KVF_AFTER_LAUNCH(st, "sample_rows_kernel");
}

}  // namespace cuda
}  // namespace kvf
