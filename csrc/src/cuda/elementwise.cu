// Row-wise and elementwise kernels: embedding gather, RMSNorm, RoPE, SiLU-mul, add, and the page writes, moves
// and reads. Reference: the same ops of cpu_ops.cc.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels.cuh"

namespace kvf {
namespace cuda {

namespace {

// Element i of a tensor in `dt` (DType values: F32 = 0, F16 = 1, BF16 = 2), widened exactly to fp32.
__device__ __forceinline__ float load_any(const void* p, int dt, size_t i) {
  if (dt == 0) return static_cast<const float*>(p)[i];
  if (dt == 1) return __half2float(static_cast<const __half*>(p)[i]);
  return __uint_as_float((uint32_t)static_cast<const uint16_t*>(p)[i] << 16);
}
// Page element store: f32 as is, f16 rounded to nearest even (the CPU's f32_to_f16).
__device__ __forceinline__ void store_kv(void* base, int dt, size_t i, float v) {
  if (dt == 0) static_cast<float*>(base)[i] = v;
  else static_cast<__half*>(base)[i] = __float2half_rn(v);
}
__device__ __forceinline__ float load_kv(const void* base, int dt, size_t i) {
  return dt == 0 ? static_cast<const float*>(base)[i] : __half2float(static_cast<const __half*>(base)[i]);
}

int grid_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (int)std::min<int64_t>(std::max<int64_t>(b, 1), 65535 * 16);  // grid-stride loops cover the rest
}

// Embedding gather. grid (T), block 256: block t copies row ids[t] (D elements, strided by the block).
__global__ void embed_kernel(float* out, const int32_t* ids, const void* emb, int dt, int D) {
  const int t = blockIdx.x;
  const size_t src = (size_t)ids[t] * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) out[(size_t)t * D + i] = load_any(emb, dt, src + i);
}

// RMSNorm. grid (T), block 256: block t reduces its row's sum of squares in double (each thread a strided partial
// sum, then a fixed tree over the 256 partials: the order depends only on D), then scales. The CPU sums in double
// too, so both round the same 1/rms to fp32 except in rare last-bit cases.
constexpr int kNormThreads = 256;
__global__ void __launch_bounds__(kNormThreads) rmsnorm_kernel(float* out, const float* x, const float* w, int D,
                                                               float eps) {
  __shared__ double red[kNormThreads];
  const float* xr = x + (size_t)blockIdx.x * D;
  double ss = 0;
  for (int i = threadIdx.x; i < D; i += kNormThreads) ss += (double)xr[i] * xr[i];
  red[threadIdx.x] = ss;
  __syncthreads();
  for (int s = kNormThreads / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = (float)(1.0 / sqrt(red[0] / D + (double)eps));
  for (int i = threadIdx.x; i < D; i += kNormThreads) out[(size_t)blockIdx.x * D + i] = xr[i] * inv * w[i];
}

// RoPE. grid (T), block 128, dynamic shared memory 2 * (d/2) floats. Block t first computes cos/sin of the d/2
// angles double(pos[t]) * double(inv_freq[i]) in double precision, rounded to fp32 as the CPU does, then rotates
// the (h, i) pairs of its row: x1 = x[h, i], x2 = x[h, i + d/2].
__global__ void rope_kernel(float* x, const int32_t* pos, const float* inv_freq, int nh, int d) {
  extern __shared__ float cs[];  // [half] cos, then [half] sin
  const int half = d / 2;
  float* sn = cs + half;
  const int t = blockIdx.x;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double a = (double)pos[t] * (double)inv_freq[i];
    cs[i] = (float)cos(a);
    sn[i] = (float)sin(a);
  }
  __syncthreads();
  float* row = x + (size_t)t * nh * d;
  for (int p = threadIdx.x; p < nh * half; p += blockDim.x) {
    const int h = p / half, i = p % half;
    float* v = row + (size_t)h * d;
    const float x1 = v[i], x2 = v[i + half];
    v[i] = x1 * cs[i] - x2 * sn[i];
    v[i + half] = x2 * cs[i] + x1 * sn[i];
  }
}

// Grid-stride elementwise ops over n elements. expf (not __expf): full fp32 accuracy, as the CPU's std::exp.
__global__ void silu_mul_kernel(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.f + expf(-g)) * up[i];
  }
}
__global__ void add_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    x[i] += y[i];
}

// kv_write. grid (count), block 128: block i writes token i's K row and V row (d elements each) into its slot.
__global__ void kv_write_kernel(void* base, int dt, int P, int d, int64_t page_elems, const float* k, const float* v,
                                int64_t row_stride, const int32_t* src_row, const int32_t* dst_page,
                                const int32_t* dst_slot) {
  const int i = blockIdx.x;
  const size_t kb = (size_t)dst_page[i] * page_elems + (size_t)dst_slot[i] * d;
  const size_t vb = kb + (size_t)P * d;
  const float* ks = k + (size_t)src_row[i] * row_stride;
  const float* vs = v + (size_t)src_row[i] * row_stride;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    store_kv(base, dt, kb + e, ks[e]);
    store_kv(base, dt, vb + e, vs[e]);
  }
}

// kv_copy, parallel form (moves touch disjoint slots). grid (count), block 128: block i moves token i's K and V.
template <typename E>
__global__ void kv_copy_parallel_kernel(E* base, int P, int d, int64_t page_elems, const int32_t* sp,
                                        const int32_t* ss, const int32_t* dp, const int32_t* ds) {
  const int i = blockIdx.x;
  const size_t src = (size_t)sp[i] * page_elems + (size_t)ss[i] * d;
  const size_t dst = (size_t)dp[i] * page_elems + (size_t)ds[i] * d;
  const size_t voff = (size_t)P * d;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    base[dst + e] = base[src + e];
    base[dst + voff + e] = base[src + voff + e];
  }
}

// kv_copy, ordered form. One block; moves applied in the given order. Element e of every row (K or V) is always
// moved by the same thread, so a move that reads a slot an earlier move wrote reads that thread's own earlier
// store: program order gives the sequential semantics with no barrier.
template <typename E>
__global__ void kv_copy_sequential_kernel(E* base, int P, int d, int64_t page_elems, const int32_t* sp,
                                          const int32_t* ss, const int32_t* dp, const int32_t* ds, int count) {
  const size_t voff = (size_t)P * d;
  for (int i = 0; i < count; i++) {
    const size_t src = (size_t)sp[i] * page_elems + (size_t)ss[i] * d;
    const size_t dst = (size_t)dp[i] * page_elems + (size_t)ds[i] * d;
    for (int e = threadIdx.x; e < d; e += blockDim.x) {  // the same e -> thread map for every move
      base[dst + e] = base[src + e];
      base[dst + voff + e] = base[src + voff + e];
    }
  }
}

// kv_read. grid (count), block 128: token i's K and V rows widened to fp32 into k_out/v_out [count, d].
__global__ void kv_read_kernel(const void* base, int dt, int P, int d, int64_t page_elems, const int32_t* page,
                               const int32_t* slot, float* k_out, float* v_out) {
  const int i = blockIdx.x;
  const size_t kb = (size_t)page[i] * page_elems + (size_t)slot[i] * d;
  const size_t vb = kb + (size_t)P * d;
  for (int e = threadIdx.x; e < d; e += blockDim.x) {
    k_out[(size_t)i * d + e] = load_kv(base, dt, kb + e);
    if (v_out) v_out[(size_t)i * d + e] = load_kv(base, dt, vb + e);
  }
}

}  // namespace

void launch_embed(const Stream& st, float* out, const int32_t* ids, int32_t T, const void* emb, DType dt, int32_t D) {
  if (T <= 0) return;
  embed_kernel<<<T, 256, 0, st.s>>>(out, ids, emb, (int)dt, D);
  KVF_AFTER_LAUNCH(st, "embed_kernel");
}

void launch_rmsnorm(const Stream& st, float* out, const float* x, const float* w, int32_t T, int32_t D, float eps) {
  if (T <= 0) return;
  rmsnorm_kernel<<<T, kNormThreads, 0, st.s>>>(out, x, w, D, eps);
  KVF_AFTER_LAUNCH(st, "rmsnorm_kernel");
}

void launch_rope(const Stream& st, float* x, const int32_t* pos, const float* inv_freq, int32_t T, int32_t nh,
                 int32_t d) {
  if (T <= 0) return;
  rope_kernel<<<T, 128, (size_t)d * sizeof(float), st.s>>>(x, pos, inv_freq, nh, d);
  KVF_AFTER_LAUNCH(st, "rope_kernel");
}

void launch_silu_mul(const Stream& st, float* out, const float* gate, const float* up, int64_t n) {
  if (n <= 0) return;
  silu_mul_kernel<<<grid_for(n, 256), 256, 0, st.s>>>(out, gate, up, n);
  KVF_AFTER_LAUNCH(st, "silu_mul_kernel");
}

void launch_add(const Stream& st, float* x, const float* y, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, st.s>>>(x, y, n);
  KVF_AFTER_LAUNCH(st, "add_kernel");
}

void launch_kv_write(const Stream& st, const KVStoreDesc& kv, const float* k, const float* v, int64_t row_stride,
                     const int32_t* src_row, const int32_t* dst_page, const int32_t* dst_slot, int32_t count) {
  if (count <= 0) return;
  kv_write_kernel<<<count, 128, 0, st.s>>>(kv.base, (int)kv.dtype, kv.P, kv.d, (int64_t)kv.page_elems(), k, v,
                                           row_stride, src_row, dst_page, dst_slot);
  KVF_AFTER_LAUNCH(st, "kv_write_kernel");
}

void launch_kv_copy(const Stream& st, const KVStoreDesc& kv, const int32_t* sp, const int32_t* ss, const int32_t* dp,
                    const int32_t* ds, int32_t count, bool sequential) {
  if (count <= 0) return;
  const int64_t pe = (int64_t)kv.page_elems();
  if (kv.dtype == DType::F32) {
    float* base = static_cast<float*>(kv.base);
    if (sequential) kv_copy_sequential_kernel<float><<<1, 128, 0, st.s>>>(base, kv.P, kv.d, pe, sp, ss, dp, ds, count);
    else kv_copy_parallel_kernel<float><<<count, 128, 0, st.s>>>(base, kv.P, kv.d, pe, sp, ss, dp, ds);
  } else {
    uint16_t* base = static_cast<uint16_t*>(kv.base);
    if (sequential)
      kv_copy_sequential_kernel<uint16_t><<<1, 128, 0, st.s>>>(base, kv.P, kv.d, pe, sp, ss, dp, ds, count);
    else kv_copy_parallel_kernel<uint16_t><<<count, 128, 0, st.s>>>(base, kv.P, kv.d, pe, sp, ss, dp, ds);
  }
  KVF_AFTER_LAUNCH(st, "kv_copy_kernel");
}

void launch_kv_read(const Stream& st, const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count,
                    float* k_out, float* v_out) {
  if (count <= 0) return;
  kv_read_kernel<<<count, 128, 0, st.s>>>(kv.base, (int)kv.dtype, kv.P, kv.d, (int64_t)kv.page_elems(), page, slot,
                                          k_out, v_out);
  KVF_AFTER_LAUNCH(st, "kv_read_kernel");
}

}  // namespace cuda
}  // namespace kvf
