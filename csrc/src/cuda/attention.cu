// Attention kernels: causal GQA prefill over one sequence's scratch K/V, and paged per-head decode attention.
// Reference: cpu_ops.cc attn_prefill / attn_decode. Both run in fp32 (SIMT) with fp32 softmax statistics.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "kernels.cuh"

namespace kvf {
namespace cuda {

namespace {

constexpr unsigned kFull = 0xffffffffu;

// ============================================================================================================
// Prefill (flash-style, online softmax).
// grid (ceil(n / 64), H), block 256 = 16 x 16 threads (tx = tid % 16, ty = tid / 16).
// Block (qb, h): queries [qb*64, qb*64 + 64) of query head h, KV head g = h / G; walks key tiles of 64 from 0 up to
// its last query (causal). Thread (ty, tx) owns queries 4*ty + i (i < 4); for scores it owns the tile's keys
// tx + 16*j (j < 4), for the output it owns dims tx + 16*c (c < ND, ND = ceil(d / 16)).
// The 16 threads of one query row are 16 consecutive lanes of a warp: row max and row sum are xor-shuffle trees
// over those lanes (a fixed order).
// Shared memory: Qs [64][d+1], KVs [64][d+1] (the K tile, then the V tile of the same keys), Ps [64][65].
// ============================================================================================================
constexpr int kPQ = 64, kPK = 64;

template <int ND>
__global__ void __launch_bounds__(256) attn_prefill_kernel(float* __restrict__ out, const float* __restrict__ q,
                                                           const float* __restrict__ k, const float* __restrict__ v,
                                                           int n, int H, int Hk, int d, float scale) {
  extern __shared__ float sm[];
  const int ld = d + 1;  // odd row stride: the 16 lanes reading 16 different rows hit 16 different banks
  float* Qs = sm;
  float* KVs = Qs + kPQ * ld;
  float* Ps = KVs + kPK * ld;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int h = blockIdx.y, g = h / (H / Hk);
  const int q0 = blockIdx.x * kPQ;

  for (int idx = tid; idx < kPQ * d; idx += 256) {
    const int r = idx / d, e = idx % d, qi = q0 + r;
    Qs[r * ld + e] = qi < n ? q[((size_t)qi * H + h) * d + e] : 0.f;
  }

  float m[4], l[4], o[4][ND];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < ND; c++) o[i][c] = 0.f;
  }

  const int kend = min(n, q0 + kPQ);  // keys [0, kend) are visible to some query of this block
  for (int k0 = 0; k0 < kend; k0 += kPK) {
    __syncthreads();  // Q loaded (first tile); every thread done reading the previous V tile
    for (int idx = tid; idx < kPK * d; idx += 256) {
      const int r = idx / d, e = idx % d, kj = k0 + r;
      KVs[r * ld + e] = kj < n ? k[((size_t)kj * Hk + g) * d + e] : 0.f;
    }
    __syncthreads();

    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) s[i][j] = 0.f;
    for (int e = 0; e < d; e++) {
      float qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) qv[i] = Qs[(4 * ty + i) * ld + e];
#pragma unroll
      for (int j = 0; j < 4; j++) kv[j] = KVs[(tx + 16 * j) * ld + e];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
      const int qi = q0 + 4 * ty + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int kj = k0 + tx + 16 * j;
        s[i][j] = (kj <= qi && kj < n) ? s[i][j] * scale : -INFINITY;  // causal mask (and keys past n)
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
      const float mnew = fmaxf(m[i], mx);
      // A row with no visible key so far (only rows past n) keeps m = -inf: guard the -inf - -inf.
      const float alpha = (m[i] == -INFINITY) ? 0.f : expf(m[i] - mnew);
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float p = (s[i][j] == -INFINITY) ? 0.f : expf(s[i][j] - mnew);
        Ps[(4 * ty + i) * (kPK + 1) + tx + 16 * j] = p;
        rs += p;
      }
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) rs += __shfl_xor_sync(kFull, rs, off);
      l[i] = l[i] * alpha + rs;
      m[i] = mnew;
#pragma unroll
      for (int c = 0; c < ND; c++) o[i][c] *= alpha;
    }
    __syncthreads();  // all scores read the K tile; Ps complete
    for (int idx = tid; idx < kPK * d; idx += 256) {
      const int r = idx / d, e = idx % d, kj = k0 + r;
      KVs[r * ld + e] = kj < n ? v[((size_t)kj * Hk + g) * d + e] : 0.f;
    }
    __syncthreads();
    for (int kk = 0; kk < kPK; kk++) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; i++) p[i] = Ps[(4 * ty + i) * (kPK + 1) + kk];
#pragma unroll
      for (int c = 0; c < ND; c++) {
        const int e = tx + 16 * c;
        const float vv = e < d ? KVs[kk * ld + e] : 0.f;
#pragma unroll
        for (int i = 0; i < 4; i++) o[i][c] = fmaf(p[i], vv, o[i][c]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int qi = q0 + 4 * ty + i;
    if (qi >= n) continue;
    const float inv = 1.f / l[i];
#pragma unroll
    for (int c = 0; c < ND; c++) {
      const int e = tx + 16 * c;
      if (e < d) out[((size_t)qi * H + h) * d + e] = o[i][c] * inv;
    }
  }
}

template <int ND>
void run_prefill(const Stream& st, float* out, const float* q, const float* k, const float* v, int n, int H, int Hk,
                 int d, int max_smem) {
  const size_t smem = ((size_t)(kPQ + kPK) * (d + 1) + (size_t)kPQ * (kPK + 1)) * sizeof(float);
  if (smem > (size_t)max_smem)
    fail(ErrorKind::BadArgument, "attn_prefill: head dim " + std::to_string(d) + " needs " + std::to_string(smem) +
                                     " bytes of shared memory, the device allows " + std::to_string(max_smem));
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(attn_prefill_kernel<ND>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid((n + kPQ - 1) / kPQ, H);
  attn_prefill_kernel<ND><<<grid, 256, smem, st.s>>>(out, q, k, v, n, H, Hk, d, 1.f / sqrtf((float)d));
  KVF_AFTER_LAUNCH(st, "attn_prefill_kernel");
}

// ============================================================================================================
// Decode, pass 1: one block per (work item = (head hi = b * Hk + g, chunk c), query-head group r0 = GM * blockIdx.y;
// GM = 4 when G <= 4, else 8).
// block 128 = 4 warps. The chunk holds tokens [c * 256, min(len, c * 256 + 256)) of the head (clen of them).
// Token mapping: LPT lanes read one token's row (16 bytes each: VEC elements; NV such vectors per lane when the
// row is wider than 32 * 16 bytes), so a warp reads TPW = 32 / LPT tokens per step and the block 4 * TPW.
// Step base b0 = (s * 4 + warp) * TPW, token t = b0 + lane / LPT. Loops run on warp-uniform bounds so every lane
// reaches every shuffle (lanes past clen compute with zeros and do not store).
//   scores: s[r][t] = dot(q_r, K_t) * scale, the dot an fmaf chain over the lane's elements then an xor tree over
//           the LPT lanes of the token;
//   softmax: warp (r % 4) reduces row r: max, then exp(s - max) and its sum (lane-strided sums, xor tree);
//   P.V: each thread accumulates p * V_t for its tokens; then an xor tree over the token groups of the warp and a
//        sum over the 4 warps in warp order.
// Output per (item, query head): unnormalised o[d], max m, sum l -> ws. Every order above depends only on the
// chunk (so on the head's length), never on the batch.
// Pass 2 (combine): one block per head; for each (query head, dim) the chunks are merged in ascending order.
// ============================================================================================================
constexpr int kDecWarps = 4;
constexpr int kDecUnroll = 4;  // token steps whose loads are issued before any is used (memory-level parallelism)

template <typename KT>
struct KVec;  // 16 bytes of a page row and their widening to fp32
template <>
struct KVec<__half> {
  static constexpr int VEC = 8;
  __device__ static void widen(const uint4& u, float* f) {
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      const float2 t = __half22float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
};
template <>
struct KVec<float> {
  static constexpr int VEC = 4;
  __device__ static void widen(const uint4& u, float* f) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  }
};

template <typename KT, int LPT, int NV, int GM>
__global__ void __launch_bounds__(kDecWarps * 32)
    attn_decode_split_kernel(float* __restrict__ ws, const float* __restrict__ q, const KT* __restrict__ kv,
                             const DecodeHead* __restrict__ heads, const int32_t* __restrict__ items,
                             const int32_t* __restrict__ pages, int Hk, int G, int gs, int d, int P,
                             int64_t page_elems, float scale) {
  constexpr int VEC = KVec<KT>::VEC;
  constexpr int TPW = 32 / LPT;
  constexpr int STEP = kDecWarps * TPW;  // tokens per block step
  // GM: query heads per block (4 when G <= 4, else 8): the register arrays qr/acc are sized by it
  extern __shared__ float dsm[];
  // shared (gs = min(G, GM) rows): qs [gs][d], s [gs][chunk], red [warps][gs][d], ml [gs][2], pg [chunk + 1] (int)
  float* qs = dsm;
  float* s = qs + gs * d;
  float* red = s + gs * kDecodeChunk;
  float* ml = red + kDecWarps * gs * d;
  int* pg = reinterpret_cast<int*>(ml + 2 * gs);

  const int item = blockIdx.x;
  const int hi = items[2 * item], chunk = items[2 * item + 1];
  const DecodeHead hd = heads[hi];
  const int b = hi / Hk, g = hi % Hk;
  const int r0 = blockIdx.y * GM;
  const int Gb = min(GM, G - r0);  // query heads of this block
  const int H = Hk * G;
  const int t0 = chunk * kDecodeChunk;
  const int clen = min(kDecodeChunk, hd.len - t0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int li = lane % LPT, tl = lane / LPT;

  for (int idx = tid; idx < Gb * d; idx += blockDim.x) qs[idx] = q[((size_t)b * H + (size_t)g * G + r0) * d + idx];
  const int pfirst = t0 / P, plast = (t0 + clen - 1) / P;
  for (int i = tid; i <= plast - pfirst; i += blockDim.x) pg[i] = pages[hd.page_off + pfirst + i];
  __syncthreads();

  // Row address of token t (chunk-relative) in K (voff = 0) or V (voff = P * d).
  auto row_ptr = [&](int t, size_t voff) -> const KT* {
    const int tok = t0 + t;
    return kv + (size_t)pg[tok / P - pfirst] * page_elems + voff + (size_t)(tok % P) * d;
  };
  // Loads this lane's NV vectors of a row (zeros for vectors past d, or for a token past clen).
  auto load_row = [&](uint4 (&u)[NV], int t, size_t voff) {
    const bool ok = t < clen;
    const KT* rp = ok ? row_ptr(t, voff) : nullptr;
#pragma unroll
    for (int w = 0; w < NV; w++) {
      const int vi = li + LPT * w;  // vector index in the row
      if (ok && vi * VEC < d) u[w] = *reinterpret_cast<const uint4*>(rp + vi * VEC);
      else u[w] = make_uint4(0, 0, 0, 0);
    }
  };

  // ---- scores ----
  // this lane's query elements, in registers: qr[r][w][e] = q_r[(li + LPT * w) * VEC + e] (0 past d)
  float qr[GM][NV][VEC];
#pragma unroll
  for (int r = 0; r < GM; r++)
#pragma unroll
    for (int w = 0; w < NV; w++)
#pragma unroll
      for (int e = 0; e < VEC; e++) {
        const int el = (li + LPT * w) * VEC + e;
        qr[r][w][e] = (r < Gb && el < d) ? qs[r * d + el] : 0.f;
      }
  for (int base = warp * TPW; base < clen; base += STEP * kDecUnroll) {
    uint4 u[kDecUnroll][NV];
#pragma unroll
    for (int x = 0; x < kDecUnroll; x++) load_row(u[x], base + x * STEP + tl, 0);
#pragma unroll
    for (int x = 0; x < kDecUnroll; x++) {
      const int t = base + x * STEP + tl;
      float kf[NV][VEC];
#pragma unroll
      for (int w = 0; w < NV; w++) KVec<KT>::widen(u[x][w], kf[w]);
#pragma unroll
      for (int r = 0; r < GM; r++) {
        if (r >= Gb) break;  // block-uniform
        float part = 0.f;
#pragma unroll
        for (int w = 0; w < NV; w++)
#pragma unroll
          for (int e = 0; e < VEC; e++) part = fmaf(qr[r][w][e], kf[w][e], part);
#pragma unroll
        for (int off = LPT / 2; off > 0; off >>= 1) part += __shfl_xor_sync(kFull, part, off);
        if (li == 0 && t < clen) s[r * kDecodeChunk + t] = part * scale;
      }
    }
  }
  __syncthreads();

  // ---- softmax statistics of the chunk, row r by warp r % 4 ----
  for (int r = warp; r < Gb; r += kDecWarps) {
    float* sr = s + r * kDecodeChunk;
    float mx = -INFINITY;
    for (int t = lane; t < clen; t += 32) mx = fmaxf(mx, sr[t]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    float sum = 0.f;
    for (int t = lane; t < clen; t += 32) {
      const float p = expf(sr[t] - mx);
      sr[t] = p;
      sum += p;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(kFull, sum, off);
    if (lane == 0) {
      ml[2 * r] = mx;
      ml[2 * r + 1] = sum;
    }
  }
  __syncthreads();

  // ---- P.V ----
  float acc[GM][NV][VEC];
#pragma unroll
  for (int r = 0; r < GM; r++)
#pragma unroll
    for (int w = 0; w < NV; w++)
#pragma unroll
      for (int e = 0; e < VEC; e++) acc[r][w][e] = 0.f;
  const size_t voff = (size_t)P * d;
  for (int base = warp * TPW; base < clen; base += STEP * kDecUnroll) {
    uint4 u[kDecUnroll][NV];
#pragma unroll
    for (int x = 0; x < kDecUnroll; x++) load_row(u[x], base + x * STEP + tl, voff);
#pragma unroll
    for (int x = 0; x < kDecUnroll; x++) {
      const int t = base + x * STEP + tl;
      if (t >= clen) continue;  // no shuffles in this loop: divergence is fine
      float vf[NV][VEC];
#pragma unroll
      for (int w = 0; w < NV; w++) KVec<KT>::widen(u[x][w], vf[w]);
#pragma unroll
      for (int r = 0; r < GM; r++) {
        if (r >= Gb) break;
        const float p = s[r * kDecodeChunk + t];
#pragma unroll
        for (int w = 0; w < NV; w++)
#pragma unroll
          for (int e = 0; e < VEC; e++) acc[r][w][e] = fmaf(p, vf[w][e], acc[r][w][e]);
      }
    }
  }
  // token groups of the warp: lanes li, li + LPT, ... hold the same elements
#pragma unroll
  for (int r = 0; r < GM; r++)
#pragma unroll
    for (int w = 0; w < NV; w++)
#pragma unroll
      for (int e = 0; e < VEC; e++)
#pragma unroll
        for (int off = LPT; off < 32; off <<= 1) acc[r][w][e] += __shfl_xor_sync(kFull, acc[r][w][e], off);
  if (tl == 0) {
#pragma unroll
    for (int r = 0; r < GM; r++) {
      if (r >= Gb) break;
#pragma unroll
      for (int w = 0; w < NV; w++) {
        const int e0 = (li + LPT * w) * VEC;
        if (e0 < d) {
#pragma unroll
          for (int e = 0; e < VEC; e++) red[((size_t)warp * gs + r) * d + e0 + e] = acc[r][w][e];
        }
      }
    }
  }
  __syncthreads();
  // ws layout per item: o [G][d], then ml [G][2]
  float* wo = ws + (size_t)item * G * (d + 2);
  for (int idx = tid; idx < Gb * d; idx += blockDim.x) {
    float sum = red[idx];
#pragma unroll
    for (int w = 1; w < kDecWarps; w++) sum += red[(size_t)w * gs * d + idx];
    wo[(size_t)r0 * d + idx] = sum;
  }
  if (tid < Gb) {
    wo[(size_t)G * d + 2 * (r0 + tid)] = ml[2 * tid];
    wo[(size_t)G * d + 2 * (r0 + tid) + 1] = ml[2 * tid + 1];
  }
}

// Pass 2. grid (B * Hk), block 128: for query head r of KV head g and dim e, merges the head's chunks in order:
// M = max m_c, L = sum l_c * exp(m_c - M), O = sum o_c * exp(m_c - M); out = O / L. A head with no token gives 0,
// as the CPU does.
__global__ void attn_decode_combine_kernel(float* __restrict__ out, const float* __restrict__ ws,
                                           const DecodeHead* __restrict__ heads, int Hk, int G, int d) {
  const int hi = blockIdx.x, b = hi / Hk, g = hi % Hk;
  const DecodeHead hd = heads[hi];
  const int H = Hk * G;
  for (int idx = threadIdx.x; idx < G * d; idx += blockDim.x) {
    const int r = idx / d, e = idx % d;
    float res = 0.f;
    if (hd.nchunks > 0) {
      float M = -INFINITY;
      for (int c = 0; c < hd.nchunks; c++) M = fmaxf(M, ws[(size_t)(hd.item0 + c) * G * (d + 2) + (size_t)G * d + 2 * r]);
      float L = 0.f, O = 0.f;
      for (int c = 0; c < hd.nchunks; c++) {
        const float* wo = ws + (size_t)(hd.item0 + c) * G * (d + 2);
        const float f = expf(wo[(size_t)G * d + 2 * r] - M);
        L = fmaf(wo[(size_t)G * d + 2 * r + 1], f, L);
        O = fmaf(wo[(size_t)r * d + e], f, O);
      }
      res = O / L;
    }
    out[((size_t)b * H + (size_t)g * G + r) * d + e] = res;
  }
}

template <typename KT, int LPT, int NV, int GM>
void run_decode_split(const Stream& st, float* ws, const float* q, const KVStoreDesc& kv, const DecodeHead* heads,
                      const int32_t* items, int n_items, const int32_t* pages, int Hk, int G) {
  const int d = kv.d;
  const int gs = std::min(G, GM);
  const size_t smem = ((size_t)gs * d + (size_t)gs * kDecodeChunk + (size_t)kDecWarps * gs * d + 2 * (size_t)gs) *
                          sizeof(float) +
                      (kDecodeChunk + 1) * sizeof(int);
  auto kern = attn_decode_split_kernel<KT, LPT, NV, GM>;
  if (smem > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid(n_items, (G + GM - 1) / GM);
  kern<<<grid, kDecWarps * 32, smem, st.s>>>(ws, q, static_cast<const KT*>(kv.base), heads, items, pages, Hk, G, gs,
                                             d, kv.P, (int64_t)kv.page_elems(), 1.f / sqrtf((float)d));
  KVF_AFTER_LAUNCH(st, "attn_decode_split_kernel");
}

// Lanes per token: the smallest power of two >= the row's 16-byte vectors, at most 32 (then NV = 2 vectors each).
// Query heads per block: 4 when G <= 4 (half the registers, twice the resident blocks), else 8. The choice depends
// only on the model (G, d), so every head of every batch runs the same kernel.
template <typename KT, int GM>
void dispatch_decode_g(const Stream& st, float* ws, const float* q, const KVStoreDesc& kv, const DecodeHead* heads,
                       const int32_t* items, int n_items, const int32_t* pages, int Hk, int G) {
  const int nvec = kv.d / KVec<KT>::VEC;
  if (nvec <= 1) run_decode_split<KT, 1, 1, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else if (nvec <= 2) run_decode_split<KT, 2, 1, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else if (nvec <= 4) run_decode_split<KT, 4, 1, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else if (nvec <= 8) run_decode_split<KT, 8, 1, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else if (nvec <= 16) run_decode_split<KT, 16, 1, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else if (nvec <= 32) run_decode_split<KT, 32, 1, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else run_decode_split<KT, 32, 2, GM>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
}
template <typename KT>
void dispatch_decode(const Stream& st, float* ws, const float* q, const KVStoreDesc& kv, const DecodeHead* heads,
                     const int32_t* items, int n_items, const int32_t* pages, int Hk, int G) {
  if (G <= 4) dispatch_decode_g<KT, 4>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  else dispatch_decode_g<KT, kDecodeGroup>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
}

}  // namespace

void launch_attn_prefill(const Stream& st, float* out, const float* q, const float* k, const float* v, int32_t n,
                         int32_t H, int32_t Hk, int32_t d, int max_smem) {
  if (n <= 0) return;
  if (d < 1 || d > 256) fail(ErrorKind::BadArgument, "attn_prefill: the CUDA kernel supports head dim 1..256, got " +
                                                         std::to_string(d));
  const int nd = (d + 15) / 16;
  if (nd <= 1) run_prefill<1>(st, out, q, k, v, n, H, Hk, d, max_smem);
  else if (nd <= 2) run_prefill<2>(st, out, q, k, v, n, H, Hk, d, max_smem);
  else if (nd <= 4) run_prefill<4>(st, out, q, k, v, n, H, Hk, d, max_smem);
  else if (nd <= 8) run_prefill<8>(st, out, q, k, v, n, H, Hk, d, max_smem);
  else run_prefill<16>(st, out, q, k, v, n, H, Hk, d, max_smem);
}

bool decode_supports(int32_t d, DType kv_dtype) {
  if (kv_dtype == DType::F16) return d >= 8 && d <= 256 && d % 8 == 0;
  if (kv_dtype == DType::F32) return d >= 4 && d <= 256 && d % 4 == 0;
  return false;
}

void launch_attn_decode(const Stream& st, float* out, const float* q, int32_t B, int32_t H, int32_t Hk,
                        const KVStoreDesc& kv, const DecodeHead* heads, const int32_t* items, int32_t n_items,
                        const int32_t* pages, float* ws) {
  if (B <= 0) return;
  const int G = H / Hk;
  if (n_items > 0) {
    if (kv.dtype == DType::F16) dispatch_decode<__half>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
    else dispatch_decode<float>(st, ws, q, kv, heads, items, n_items, pages, Hk, G);
  }
  attn_decode_combine_kernel<<<B * Hk, 128, 0, st.s>>>(out, ws, heads, Hk, G, kv.d);
  KVF_AFTER_LAUNCH(st, "attn_decode_combine_kernel");
}

}  // namespace cuda
}  // namespace kvf
