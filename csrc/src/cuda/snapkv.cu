// SnapKV window scoring on the device. Reference: compress.cc snapkv_scores (same steps, same fp32 arithmetic per
// step, only the dot product and the softmax sums run in a different fixed order).
//   1. logits_kernel:  L[h][i][j] = dot(q_i,h, k_j,g) * scale for every window query i and key j < m.
//   2. stats_kernel:   per (h, i): M = max over visible j, inv = 1 / sum exp(L - M) (two passes, fixed trees).
//   3. reduce_kernel:  per (g, j < m_prefix): A_h[j] = sum over i (ascending) of exp(L[h][i][j] - M) * inv, for the
//                      G query heads of g; reduced over them in head order (sum or max), times 1/w (and 1/G).
//   4. pool_kernel:    max or average pooling along j (kernel k, stride 1, padding k/2, as compress.cc).
#include <algorithm>
#include <cmath>

#include "kernels.cuh"

namespace kvf {
namespace cuda {

namespace {

constexpr int kQT = 32;  // window queries per logits block

// grid (ceil(m / 128), H, ceil(w / 32)), block 128: thread j of block (jb, h, ib) computes L[h][i][j] for the
// block's up to 32 window queries (held in shared memory, [32][d]) against key j of KV head g = h / G.
__global__ void __launch_bounds__(128) snap_logits_kernel(float* __restrict__ L, const float* __restrict__ q,
                                                          int64_t q_stride, const float* __restrict__ k, int w, int m,
                                                          int H, int Hk, int d, float scale) {
  extern __shared__ float qs[];  // [kQT][d]
  const int h = blockIdx.y, g = h / (H / Hk), i0 = blockIdx.z * kQT;
  const int ni = min(kQT, w - i0);
  for (int idx = threadIdx.x; idx < ni * d; idx += blockDim.x) {
    const int i = idx / d, e = idx % d;
    qs[idx] = q[(size_t)(i0 + i) * q_stride + (size_t)h * d + e];
  }
  __syncthreads();
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m) return;
  const float* kj = k + ((size_t)j * Hk + g) * d;
  for (int i = 0; i < ni; i++) {
    float s = 0.f;
    for (int e = 0; e < d; e++) s = fmaf(qs[i * d + e], kj[e], s);
    L[((size_t)h * w + i0 + i) * m + j] = s * scale;
  }
}

// grid (w, H), block 256: row (h, i) of L over its visible keys [0, vis). Strided partials, then a fixed tree.
__global__ void __launch_bounds__(256) snap_stats_kernel(float* __restrict__ stats, const float* __restrict__ L,
                                                         const int32_t* __restrict__ visible, int w, int m) {
  __shared__ float red[256];
  const int i = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
  const int vis = visible[i];
  const float* row = L + ((size_t)h * w + i) * m;
  float mx = -INFINITY;
  for (int j = tid; j < vis; j += 256) mx = fmaxf(mx, row[j]);
  red[tid] = mx;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (tid < s) red[tid] = fmaxf(red[tid], red[tid + s]);
    __syncthreads();
  }
  const float M = red[0];
  __syncthreads();
  float sum = 0.f;
  for (int j = tid; j < vis; j += 256) sum += expf(row[j] - M);
  red[tid] = sum;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    __syncthreads();
  }
  if (tid == 0) {
    stats[2 * ((size_t)h * w + i)] = M;
    stats[2 * ((size_t)h * w + i) + 1] = vis > 0 ? 1.0f / red[0] : 0.f;  // a query that sees no key adds nothing
  }
}

// grid (ceil(m_prefix / 256), Hk), block 256: thread j computes R[g][j].
__global__ void __launch_bounds__(256) snap_reduce_kernel(float* __restrict__ R, const float* __restrict__ L,
                                                          const float* __restrict__ stats,
                                                          const int32_t* __restrict__ visible, int w, int m,
                                                          int m_prefix, int G, int reduce_max, float f) {
  const int g = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m_prefix) return;
  float r = 0.f;
  for (int u = 0; u < G; u++) {
    const int h = g * G + u;
    float a = 0.f;
    for (int i = 0; i < w; i++) {
      if (j >= visible[i]) continue;
      const float M = stats[2 * ((size_t)h * w + i)], inv = stats[2 * ((size_t)h * w + i) + 1];
      a += expf(L[((size_t)h * w + i) * m + j] - M) * inv;
    }
    r = (u == 0) ? a : (reduce_max ? fmaxf(r, a) : r + a);
  }
  R[(size_t)g * m_prefix + j] = r * f;
}

// grid (ceil(m_prefix / 256), Hk), block 256: S[g][j] pooled over [max(0, j - k/2), min(m_prefix - 1, j + k/2)];
// max ignores the padding, avg divides by the kernel size (the zero padding counts).
__global__ void __launch_bounds__(256) snap_pool_kernel(float* __restrict__ S, const float* __restrict__ R,
                                                        int m_prefix, int kernel, int pool_max) {
  const int g = blockIdx.y, j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m_prefix) return;
  const float* Rg = R + (size_t)g * m_prefix;
  const int r = kernel / 2, lo = max(0, j - r), hi = min(m_prefix - 1, j + r);
  float v;
  if (pool_max) {
    v = Rg[lo];
    for (int t = lo + 1; t <= hi; t++) v = fmaxf(v, Rg[t]);
  } else {
    v = 0.f;
    for (int t = lo; t <= hi; t++) v += Rg[t];
    v = v / (float)kernel;
  }
  S[(size_t)g * m_prefix + j] = v;
}

}  // namespace

void launch_snapkv(const Stream& st, float* S, const float* q, int64_t q_stride, const float* k, const int32_t* visible,
                   int32_t w, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling,
                   GqaReduce reduce, int32_t kernel, float scale, float* logits, float* stats, float* R) {
  if (m_prefix <= 0) return;
  const int G = H / Hk;
  const size_t smem = (size_t)kQT * d * sizeof(float);  // d <= 256: 32 KB at most
  dim3 g1((m + 127) / 128, H, (w + kQT - 1) / kQT);
  snap_logits_kernel<<<g1, 128, smem, st.s>>>(logits, q, q_stride, k, w, m, H, Hk, d, scale);
  KVF_AFTER_LAUNCH(st, "snap_logits_kernel");
  snap_stats_kernel<<<dim3(w, H), 256, 0, st.s>>>(stats, logits, visible, w, m);
  KVF_AFTER_LAUNCH(st, "snap_stats_kernel");
  const float inv_w = 1.0f / (float)w;
  const float f = reduce == GqaReduce::Mean ? inv_w / (float)G : inv_w;
  dim3 g3((m_prefix + 255) / 256, Hk);
  snap_reduce_kernel<<<g3, 256, 0, st.s>>>(R, logits, stats, visible, w, m, m_prefix, G,
                                           reduce == GqaReduce::Max ? 1 : 0, f);
  KVF_AFTER_LAUNCH(st, "snap_reduce_kernel");
  snap_pool_kernel<<<g3, 256, 0, st.s>>>(S, R, m_prefix, kernel, pooling == Pooling::Max ? 1 : 0);
  KVF_AFTER_LAUNCH(st, "snap_pool_kernel");
}

}  // namespace cuda
}  // namespace kvf
