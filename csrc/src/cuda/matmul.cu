// Matrix products out[M, N] = x[M, K] @ W[N, K]^T (+ bias[N]) with fp32 accumulation. Reference: cpu_ops.cc matmul.
//
// Tensor-core path (F16/BF16 weights, K % 8 == 0):
//   1. split_kernel converts the fp32 activations to the weight's 16-bit type: plane 0 = round(x); with `split`,
//      plane 1 = round(x - plane 0), so hi + lo carries about 22 bits (F16) or 16 bits (BF16) of x. The weights are
//      used exactly as stored. Without split the activations are rounded once (NMSE ~1e-7 for F16, ~1e-5 for BF16).
//   2. mma_gemm_kernel: a block computes a BM x BN tile of out; its warps (WM x WN) each own a (BM/WM) x (BN/WN)
//      sub-tile made of 16x8 mma.sync.m16n8k16 tiles. K is walked in BK-wide stages through shared memory, loaded
//      with cp.async in a STAGES-deep pipeline; fragments come from shared memory with ldmatrix (rows padded by 8
//      halves, so the 8 row addresses of one ldmatrix phase hit distinct banks).
//
// Batch invariance: every output element has exactly one fp32 accumulator (no split-K), fed the k16 chunks of K
// in ascending order (plane 0 then plane 1 for each chunk), by the same mma instruction whatever the tile shape.
// An mma's result for element (i, j) depends only on row i of A, column j of B and that accumulator, so the value
// does not depend on M, on BM/BN, or on which block computes it. Small M uses a smaller tile (more blocks for
// decode) with the identical per-element sequence. The GPU check tests this bit for bit.
//
// SIMT path (F32 weights, or K % 8 != 0): simt_gemm_kernel, 64 x 64 tiles, each thread 4 x 4 outputs, one fmaf
// chain per element over k ascending: batch-invariant for the same reason.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels.cuh"

namespace kvf {
namespace cuda {

namespace {

template <typename MT>
__device__ __forceinline__ MT from_f32(float v);
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

// planes[SPLIT][n]: plane 0 = round(x), plane 1 = round(x - plane 0) (exact in fp32). Grid-stride over n = M * K.
template <typename MT, int SPLIT>
__global__ void split_kernel(MT* planes, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    const MT hi = from_f32<MT>(v);
    planes[i] = hi;
    if (SPLIT == 2) planes[n + i] = from_f32<MT>(v - to_f32(hi));
  }
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16-byte global -> shared copy; src_bytes = 0 zero-fills the destination (rows past M or N, chunks past K).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// D = A(16x16, row) * B(16x8, col) + D, fp32 accumulators.
template <typename MT>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared memory of one stage: A planes [SPLIT][BM][LDS], then W [BN][LDS], LDS = BK + 8 halves per row.
template <int BM, int BN, int BK, int SPLIT>
struct GemmSmem {
  static constexpr int LDS = BK + 8;
  static constexpr int A_ELEMS = SPLIT * BM * LDS;
  static constexpr int STAGE_ELEMS = A_ELEMS + BN * LDS;
};

// out[M, N] tile (blockIdx.y * BM, blockIdx.x * BN). Threads: WM * WN warps; warp (wm, wn) owns rows
// [wm * WTM, +WTM) and columns [wn * WTN, +WTN) of the tile as MT x NT mma tiles of 16 x 8.
// A: planes [SPLIT][M][K] (16-bit), W: [N][K] (16-bit), both with K contiguous and rows 16-byte aligned.
template <typename MT, int BM, int BN, int BK, int WM, int WN, int STAGES, int SPLIT>
__global__ void __launch_bounds__(WM* WN * 32)
    mma_gemm_kernel(float* __restrict__ out, const MT* __restrict__ A, const MT* __restrict__ W,
                    const float* __restrict__ bias, int M, int N, int K) {
  constexpr int THREADS = WM * WN * 32;
  constexpr int WTM = BM / WM, WTN = BN / WN;
  constexpr int MTILES = WTM / 16, NTILES = WTN / 8;
  static_assert(WTM % 16 == 0 && WTN % 16 == 0 && BK % 16 == 0, "tile shapes");
  using S = GemmSmem<BM, BN, BK, SPLIT>;
  constexpr int LDS = S::LDS;
  constexpr int KCH = BK / 8;  // 16-byte chunks per tile row

  extern __shared__ __align__(16) unsigned char smem_raw[];
  MT* smem = reinterpret_cast<MT*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN, wn = warp % WN;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int KT = (K + BK - 1) / BK;
  const size_t plane = (size_t)M * K;

  // Queues the cp.async copies of k-tile kt into stage buffer `stage`. K % 8 == 0, so a 16-byte chunk is either
  // wholly inside K or wholly past it (then zero-filled, adding exact zeros to the accumulators).
  auto load_stage = [&](int stage, int kt) {
    MT* sA = smem + (size_t)stage * S::STAGE_ELEMS;
    MT* sW = sA + S::A_ELEMS;
    const int k0 = kt * BK;
    for (int c = tid; c < SPLIT * BM * KCH; c += THREADS) {
      const int p = c / (BM * KCH), r = (c / KCH) % BM, kc = c % KCH;
      const int gr = m0 + r, gk = k0 + kc * 8;
      const bool ok = gr < M && gk < K;
      const MT* src = ok ? A + p * plane + (size_t)gr * K + gk : A;
      cp_async16(sA + ((size_t)p * BM + r) * LDS + kc * 8, src, ok ? 16 : 0);
    }
    for (int c = tid; c < BN * KCH; c += THREADS) {
      const int r = c / KCH, kc = c % KCH;
      const int gn = n0 + r, gk = k0 + kc * 8;
      const bool ok = gn < N && gk < K;
      const MT* src = ok ? W + (size_t)gn * K + gk : W;
      cp_async16(sW + (size_t)r * LDS + kc * 8, src, ok ? 16 : 0);
    }
  };

  float acc[MTILES][NTILES][4];
#pragma unroll
  for (int i = 0; i < MTILES; i++)
#pragma unroll
    for (int j = 0; j < NTILES; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

  // Prologue: stages 0 .. STAGES-2 in flight. One commit per step (possibly empty) keeps the group count uniform.
#pragma unroll
  for (int s = 0; s < STAGES - 1; s++) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < KT; kt++) {
    cp_async_wait<STAGES - 2>();  // k-tile kt has landed (at most STAGES-2 younger groups pending)
    __syncthreads();              // ... for every thread's copies; and every warp is done with tile kt-1
    {
      const int nk = kt + STAGES - 1;  // refill the stage that tile kt-1 used
      if (nk < KT) load_stage(nk % STAGES, nk);
      cp_async_commit();
    }
    const MT* sA = smem + (size_t)(kt % STAGES) * S::STAGE_ELEMS;
    const MT* sW = sA + S::A_ELEMS;
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
      // B fragments: one ldmatrix.x4 gives two n8 tiles (k 0-7 and 8-15 of each). Lane address: n = lane%8 +
      // 8 * (lane/16), k = 8 * ((lane/8) % 2); registers 0,1 -> n-tile 2p, registers 2,3 -> n-tile 2p+1.
      uint32_t b[NTILES][2];
#pragma unroll
      for (int p = 0; p < NTILES / 2; p++) {
        uint32_t r[4];
        const int nrow = wn * WTN + p * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int kcol = kk * 16 + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(r, sW + (size_t)nrow * LDS + kcol);
        b[2 * p][0] = r[0];
        b[2 * p][1] = r[1];
        b[2 * p + 1][0] = r[2];
        b[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int sp = 0; sp < SPLIT; sp++) {
        // A fragments: lane address row = lane % 16, k = 8 * (lane / 16): registers = (rows 0-7, k 0-7),
        // (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15), the m16n8k16 A layout.
        uint32_t a[MTILES][4];
#pragma unroll
        for (int i = 0; i < MTILES; i++) {
          const int arow = wm * WTM + i * 16 + (lane & 15);
          const int kcol = kk * 16 + (lane >> 4) * 8;
          ldmatrix_x4(a[i], sA + ((size_t)sp * BM + arow) * LDS + kcol);
        }
#pragma unroll
        for (int i = 0; i < MTILES; i++)
#pragma unroll
          for (int j = 0; j < NTILES; j++) mma16816<MT>(acc[i][j], a[i], b[j][0], b[j][1]);
      }
    }
  }
  cp_async_wait<0>();  // drain the (empty) trailing groups before the block exits

  // Epilogue. Accumulator layout of a 16x8 tile: e0,e1 -> row lane/4, cols 2*(lane%4) + {0,1}; e2,e3 -> row + 8.
#pragma unroll
  for (int i = 0; i < MTILES; i++)
#pragma unroll
    for (int j = 0; j < NTILES; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int row = m0 + wm * WTM + i * 16 + (lane >> 2) + (e >= 2 ? 8 : 0);
        const int col = n0 + wn * WTN + j * 8 + (lane & 3) * 2 + (e & 1);
        if (row < M && col < N) out[(size_t)row * N + col] = acc[i][j][e] + (bias ? bias[col] : 0.f);
      }
}

// SIMT fp32 GEMM for F32 weights (or K % 8 != 0). grid (ceil(N/64), ceil(M/64)), block 256 = 16 x 16:
// thread (ty, tx) owns rows m0 + ty + 16 i and columns n0 + tx + 16 j (i, j < 4). K in tiles of 16 through shared
// memory (As[k][m], Ws[k][n]); one fmaf chain per element, k ascending.
template <int WDT>  // weight DType: 0 F32, 1 F16, 2 BF16
__global__ void __launch_bounds__(256) simt_gemm_kernel(float* __restrict__ out, const float* __restrict__ x,
                                                        const void* __restrict__ W, const float* __restrict__ bias,
                                                        int M, int N, int K) {
  __shared__ float As[16][64 + 1];
  __shared__ float Ws[16][64 + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < K; k0 += 16) {
    for (int c = threadIdx.x; c < 64 * 16; c += 256) {
      const int r = c / 16, kk = c % 16;
      const int gm = m0 + r, gn = n0 + r, gk = k0 + kk;
      As[kk][r] = (gm < M && gk < K) ? x[(size_t)gm * K + gk] : 0.f;
      float wv = 0.f;
      if (gn < N && gk < K) {
        const size_t wi = (size_t)gn * K + gk;
        if (WDT == 0) wv = static_cast<const float*>(W)[wi];
        else if (WDT == 1) wv = __half2float(static_cast<const __half*>(W)[wi]);
        else wv = __uint_as_float((uint32_t)static_cast<const uint16_t*>(W)[wi] << 16);
      }
      Ws[kk][r] = wv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) b[j] = Ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int row = m0 + ty + 16 * i, col = n0 + tx + 16 * j;
      if (row < M && col < N) out[(size_t)row * N + col] = acc[i][j] + (bias ? bias[col] : 0.f);
    }
}

template <typename MT, int BM, int BN, int BK, int WM, int WN, int STAGES, int SPLIT>
void run_mma(const Stream& st, float* out, const MT* A, const MT* W, const float* bias, int M, int N, int K,
             int max_smem) {
  using S = GemmSmem<BM, BN, BK, SPLIT>;
  const size_t smem = (size_t)STAGES * S::STAGE_ELEMS * sizeof(MT);
  auto kern = mma_gemm_kernel<MT, BM, BN, BK, WM, WN, STAGES, SPLIT>;
  if (smem > (size_t)max_smem)
    fail(ErrorKind::Internal, "matmul tile needs " + std::to_string(smem) + " bytes of shared memory, the device "
                              "allows " + std::to_string(max_smem));
  if (smem > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid((N + BN - 1) / BN, (M + BM - 1) / BM);
  if (grid.y > 65535) fail(ErrorKind::BadArgument, "matmul: too many rows for one launch: " + std::to_string(M));
  kern<<<grid, WM * WN * 32, smem, st.s>>>(out, A, W, bias, M, N, K);
  KVF_AFTER_LAUNCH(st, "mma_gemm_kernel");
}

// Small M (decode): 32 x 64 tiles, 4 warps side by side. Large M: 128 x 128 tiles, 8 warps (2 x 4). Both feed every
// accumulator the same k16 sequence (see the header comment), so switching at M = 64 keeps batch invariance.
template <typename MT, int SPLIT>
void run_mma_auto(const Stream& st, float* out, const MT* A, const MT* W, const float* bias, int M, int N, int K,
                  int max_smem) {
  if (M <= 64) run_mma<MT, 32, 64, 64, 1, 4, 4, SPLIT>(st, out, A, W, bias, M, N, K, max_smem);
  else run_mma<MT, 128, 128, 32, 2, 4, 3, SPLIT>(st, out, A, W, bias, M, N, K, max_smem);
}

template <typename MT>
void run_tensor_core(const Stream& st, float* out, const float* x, int M, const void* W, int N, int K,
                     const float* bias, bool split, GrowBuffer& planes, int max_smem) {
  const int64_t n = (int64_t)M * K;
  MT* A = static_cast<MT*>(planes.ensure((size_t)n * sizeof(MT) * (split ? 2 : 1), st));
  const int blocks = (int)std::min<int64_t>((n + 255) / 256, 65535);
  if (split) split_kernel<MT, 2><<<blocks, 256, 0, st.s>>>(A, x, n);
  else split_kernel<MT, 1><<<blocks, 256, 0, st.s>>>(A, x, n);
  KVF_AFTER_LAUNCH(st, "split_kernel");
  const MT* Wt = static_cast<const MT*>(W);
  if (split) run_mma_auto<MT, 2>(st, out, A, Wt, bias, M, N, K, max_smem);
  else run_mma_auto<MT, 1>(st, out, A, Wt, bias, M, N, K, max_smem);
}

}  // namespace

void launch_matmul(const Stream& st, float* out, const float* x, int32_t M, const void* W, DType wt, int32_t N,
                   int32_t K, const float* bias, bool split, GrowBuffer& planes, int max_smem) {
  if (M <= 0 || N <= 0) return;
  if (K % 8 == 0 && wt == DType::F16) {
    run_tensor_core<__half>(st, out, x, M, W, N, K, bias, split, planes, max_smem);
    return;
  }
  if (K % 8 == 0 && wt == DType::BF16) {
    run_tensor_core<__nv_bfloat16>(st, out, x, M, W, N, K, bias, split, planes, max_smem);
    return;
  }
  dim3 grid((N + 63) / 64, (M + 63) / 64);
  if (grid.y > 65535) fail(ErrorKind::BadArgument, "matmul: too many rows for one launch: " + std::to_string(M));
  switch (wt) {
    case DType::F32: simt_gemm_kernel<0><<<grid, 256, 0, st.s>>>(out, x, W, bias, M, N, K); break;
    case DType::F16: simt_gemm_kernel<1><<<grid, 256, 0, st.s>>>(out, x, W, bias, M, N, K); break;
    case DType::BF16: simt_gemm_kernel<2><<<grid, 256, 0, st.s>>>(out, x, W, bias, M, N, K); break;
  }
  KVF_AFTER_LAUNCH(st, "simt_gemm_kernel");
}

}  // namespace cuda
}  // namespace kvf
