// The CPU backend: the reference every other backend is compared with. fp32 accumulation; weights read in their
// file dtype (F16/BF16 converted 8 lanes at a time, never widened in memory); K/V pages f16 or f32.
//
// Batch invariance: every output element is one dot product computed in one fixed order (8-lane partial sums
// over k in steps of 8, a fixed horizontal reduction, then a scalar tail), whatever T is, whatever tile or thread
// computes it. Threads split output columns, never a reduction.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KVF_AVX2 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"
#include "sampling.h"

namespace kvf {

const char* op_name(Op op) {
  switch (op) {
    case Op::Embed: return "embed";
    case Op::RmsNorm: return "rmsnorm";
    case Op::MatMul: return "matmul";
    case Op::Rope: return "rope";
    case Op::SiluMul: return "silu_mul";
    case Op::Add: return "add";
    case Op::AttnPrefill: return "attn_prefill";
    case Op::AttnDecode: return "attn_decode";
    case Op::KvWrite: return "kv_write";
    case Op::KvCopy: return "kv_copy";
    case Op::KvGather: return "kv_gather";
    case Op::SnapkvScores: return "snapkv_scores";
    case Op::SnapkvSelect: return "snapkv_select";
    case Op::Sample: return "sample";
    case Op::Count: break;
  }
  return "?";
}

RopeParams make_rope(const ModelConfig& cfg) {
  RopeParams rp;
  rp.d = cfg.d;
  rp.inv_freq.resize(cfg.d / 2);
  for (int i = 0; i < cfg.d / 2; i++) {
    double f = 1.0 / std::pow(cfg.rope_theta, (2.0 * i) / cfg.d);
    if (cfg.rope_scaling_type == "llama3") {
      // transformers' _compute_llama3_parameters: long wavelengths scaled by 1/factor, short kept, smooth between.
      const double lo_wl = cfg.rope_original_max_pos / cfg.rope_low_freq_factor;
      const double hi_wl = cfg.rope_original_max_pos / cfg.rope_high_freq_factor;
      const double wl = 2.0 * M_PI / f;
      if (wl > lo_wl) {
        f = f / cfg.rope_factor;
      } else if (wl >= hi_wl) {
        double smooth = (cfg.rope_original_max_pos / wl - cfg.rope_low_freq_factor) /
                        (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor);
        f = (1.0 - smooth) * f / cfg.rope_factor + smooth * f;
      }
    }
    rp.inv_freq[i] = (float)f;
  }
  return rp;
}

namespace {

// ---- 8-lane dot-product primitives (one fixed order per element) ----
#ifdef KVF_AVX2
inline __m256 load8(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F32: return _mm256_loadu_ps(static_cast<const float*>(p) + i);
    case DType::F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(p) + i)));
    case DType::BF16: {
      __m128i h = _mm_loadu_si128((const __m128i*)(static_cast<const uint16_t*>(p) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
  return _mm256_setzero_ps();
}
inline float hsum8(__m256 v) {  // fixed order: (0+4, 1+5, 2+6, 3+7), then pairs
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehl_ps(s, s);
  __m128 s2 = _mm_add_ps(s, sh);
  __m128 s3 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s3);
}
#endif

// Dot products of NR weight rows with TR activation rows; out[t][r] for t < TR, r < NR.
template <int TR, int NR>
inline void dot_tile(const float* const* x, const void* W, DType wt, size_t K, const size_t* wrow, float out[TR][NR]) {
  const size_t K8 = K & ~(size_t)7;
#ifdef KVF_AVX2
  __m256 acc[TR][NR];
  for (int t = 0; t < TR; t++)
    for (int r = 0; r < NR; r++) acc[t][r] = _mm256_setzero_ps();
  for (size_t k = 0; k < K8; k += 8) {
    __m256 w[NR];
    for (int r = 0; r < NR; r++) w[r] = load8(W, wt, wrow[r] * K + k);
    for (int t = 0; t < TR; t++) {
      __m256 xv = _mm256_loadu_ps(x[t] + k);
      for (int r = 0; r < NR; r++) acc[t][r] = _mm256_fmadd_ps(w[r], xv, acc[t][r]);
    }
  }
  for (int t = 0; t < TR; t++)
    for (int r = 0; r < NR; r++) out[t][r] = hsum8(acc[t][r]);
#else
  float acc[TR][NR][8] = {};
  for (size_t k = 0; k < K8; k += 8)
    for (int r = 0; r < NR; r++)
      for (int j = 0; j < 8; j++) {
        float w = load_as_f32(W, wt, wrow[r] * K + k + j);
        for (int t = 0; t < TR; t++) acc[t][r][j] = std::fma(w, x[t][k + j], acc[t][r][j]);
      }
  for (int t = 0; t < TR; t++)
    for (int r = 0; r < NR; r++) {
      float* a = acc[t][r];
      out[t][r] = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    }
#endif
  for (size_t k = K8; k < K; k++)
    for (int r = 0; r < NR; r++) {
      float w = load_as_f32(W, wt, wrow[r] * K + k);
      for (int t = 0; t < TR; t++) out[t][r] += w * x[t][k];
    }
}

template <int NR>
inline void matmul_cols(float* out, const float* x, int32_t T, const Weight& W, const float* bias, int32_t n0) {
  const size_t K = (size_t)W.cols, N = (size_t)W.rows;
  size_t wrow[NR];
  for (int r = 0; r < NR; r++) wrow[r] = (size_t)n0 + r;
  int32_t t = 0;
  for (; t + 2 <= T; t += 2) {
    const float* xs[2] = {x + (size_t)t * K, x + (size_t)(t + 1) * K};
    float o[2][NR];
    dot_tile<2, NR>(xs, W.data, W.dtype, K, wrow, o);
    for (int i = 0; i < 2; i++)
      for (int r = 0; r < NR; r++) out[(size_t)(t + i) * N + n0 + r] = o[i][r] + (bias ? bias[n0 + r] : 0.f);
  }
  for (; t < T; t++) {
    const float* xs[1] = {x + (size_t)t * K};
    float o[1][NR];
    dot_tile<1, NR>(xs, W.data, W.dtype, K, wrow, o);
    for (int r = 0; r < NR; r++) out[(size_t)t * N + n0 + r] = o[0][r] + (bias ? bias[n0 + r] : 0.f);
  }
}

inline float kv_load(const void* base, DType t, size_t i) {
  return t == DType::F32 ? static_cast<const float*>(base)[i] : f16_to_f32(static_cast<const uint16_t*>(base)[i]);
}
// One K or V row of d elements, widened to fp32 (8 halves per instruction with F16C).
inline void kv_load_row(const void* base, DType t, size_t off, float* out, int32_t d) {
  if (t == DType::F32) {
    std::memcpy(out, static_cast<const float*>(base) + off, (size_t)d * sizeof(float));
    return;
  }
  const uint16_t* h = static_cast<const uint16_t*>(base) + off;
  int32_t e = 0;
#ifdef KVF_AVX2
  for (; e + 8 <= d; e += 8) _mm256_storeu_ps(out + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + e))));
#endif
  for (; e < d; e++) out[e] = f16_to_f32(h[e]);
}
inline void kv_store(void* base, DType t, size_t i, float v) {
  if (t == DType::F32) static_cast<float*>(base)[i] = v;
  else static_cast<uint16_t*>(base)[i] = f32_to_f16(v);
}

// Fixed-order dot of two fp32 vectors (8 lanes, then the same horizontal sum as matmul).
inline float dot_f32(const float* a, const float* b, int32_t n) {
  int32_t i = 0;
  float s;
#ifdef KVF_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  s = hsum8(acc);
#else
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++) lanes[j] = std::fma(a[i + j], b[i + j], lanes[j]);
  s = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
#endif
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

// o[0..d) += p * v[0..d)
inline void axpy_f32(float* o, float p, const float* v, int32_t d) {
  int32_t e = 0;
#ifdef KVF_AVX2
  const __m256 pv = _mm256_set1_ps(p);
  for (; e + 8 <= d; e += 8) _mm256_storeu_ps(o + e, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + e), _mm256_loadu_ps(o + e)));
#endif
  for (; e < d; e++) o[e] += p * v[e];
}

// Softmax in place over s[0..n) of s[j] * scale, in the one order every CPU attention path uses (scale, max,
// exp(x - max) summed in order, times 1/sum), so prefill and decode, blocked or not, agree bit for bit.
static void softmax_scaled(float* s, int32_t n, float scale) {
  float mx = -INFINITY;
  for (int32_t j = 0; j < n; j++) {
    s[j] *= scale;
    mx = std::max(mx, s[j]);
  }
  float sum = 0;
  for (int32_t j = 0; j < n; j++) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
  const float inv = 1.f / sum;
  for (int32_t j = 0; j < n; j++) s[j] *= inv;
}

#ifdef KVF_AVX2
// Eight 8-lane accumulators (one per key) reduced to one vector whose lane j is the sum of a[j]'s lanes, in a
// fixed order ((0+1)+(2+3)) + ((4+5)+(6+7)).
inline __m256 reduce8x8(const __m256 a[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
// exp for x <= 0 (softmax arguments), Cephes-style: 2^n * p(r) with r = x - n ln 2; about 1 ulp on [-87, 0].
inline __m256 exp8_nonpos(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}
// o[0..8*NC) += sum over keys j < nk of p[j] * v_j[cols], j in order, the columns held in registers; v_j = v + j*stride.
template <int NC>
inline void pv_cols(float* o, const float* p, const float* v, int32_t nk, size_t stride) {
  __m256 acc[NC];
  for (int c = 0; c < NC; c++) acc[c] = _mm256_loadu_ps(o + 8 * c);
  for (int32_t j = 0; j < nk; j++) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* vr = v + (size_t)j * stride;
    for (int c = 0; c < NC; c++) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + 8 * c), acc[c]);
  }
  for (int c = 0; c < NC; c++) _mm256_storeu_ps(o + 8 * c, acc[c]);
}
// o[0..8*nc) += sum over keys j < nk of p[j] * v_j[0..8*nc): pv_cols over the columns, at most 8 vectors at a time.
inline void pv_row(float* o, const float* p, const float* v, int32_t nk, size_t stride, int32_t nc) {
  int32_t c = 0;
  for (; c + 8 <= nc; c += 8) pv_cols<8>(o + 8 * c, p, v + 8 * c, nk, stride);
  switch (nc - c) {
    case 7: pv_cols<7>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    case 6: pv_cols<6>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    case 5: pv_cols<5>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    case 4: pv_cols<4>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    case 3: pv_cols<3>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    case 2: pv_cols<2>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    case 1: pv_cols<1>(o + 8 * c, p, v + 8 * c, nk, stride); break;
    default: break;
  }
}
#endif

// Parallel regions open only for work of at least this many multiply-adds (about 20-50 us on one core). Smaller
// ops run on the calling thread: opening a region costs a wake-up of the team (futex and IPI, tens of us on a VM),
// and a model as small as `tiny` would otherwise keep the whole team spinning between its many tiny regions and
// steal every core from the processes beside it (Redis, the router, the worker's event loop). The clause only
// chooses how many threads share the same iterations: each element's arithmetic, and so batch invariance, is
// unchanged.
constexpr double kParMinWork = double(1 << 18);

class CpuBackend final : public Backend {
 public:
  // threads: 0 = OpenMP's default. Passed to every parallel region (num_threads), because steps run on whichever
  // libuv thread picks them up and omp_set_num_threads would only bind the thread that called it.
  explicit CpuBackend(int32_t threads) {
#ifdef _OPENMP
    nt_ = threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
#endif
  }
  const char* name() const override { return "cpu"; }
  bool supports(Op op) const override { return op != Op::Count; }

  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) & ~(size_t)63));
    if (!p) fail(ErrorKind::Internal, "host allocation of " + std::to_string(bytes) + " bytes failed");
    return p;
  }
  void free(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void sync() override {}

  void embed(float* out, const int32_t* ids, int32_t T, const Weight& emb) override {
    const size_t D = (size_t)emb.cols;
    for (int32_t t = 0; t < T; t++)
      for (size_t i = 0; i < D; i++) out[t * D + i] = load_as_f32(emb.data, emb.dtype, (size_t)ids[t] * D + i);
  }

  void rmsnorm(float* out, const float* x, const float* w, int32_t T, int32_t D, float eps) override {
    for (int32_t t = 0; t < T; t++) {
      const float* xr = x + (size_t)t * D;
      double ss = 0;
      for (int32_t i = 0; i < D; i++) ss += (double)xr[i] * xr[i];
      const float inv = (float)(1.0 / std::sqrt(ss / D + eps));
      for (int32_t i = 0; i < D; i++) out[(size_t)t * D + i] = xr[i] * inv * w[i];
    }
  }

  void matmul(float* out, const float* x, int32_t T, const Weight& W, const float* bias) override {
    // Column tiles of 8 rows for a decode-sized T (more independent FMA chains while streaming W), 4 otherwise.
    // Tile width never changes an element's arithmetic (one accumulator per (t, n), same order), so the choice by T
    // keeps batch invariance.
    const int32_t N = W.rows;
    const bool par = (double)T * N * W.cols >= kParMinWork;
    if (T <= 2) {
      const int32_t NB = N / 8;
#pragma omp parallel for schedule(static) num_threads(nt_) if (par)
      for (int32_t b = 0; b < NB; b++) matmul_cols<8>(out, x, T, W, bias, b * 8);
      for (int32_t n = NB * 8; n < N; n++) matmul_cols<1>(out, x, T, W, bias, n);
      return;
    }
    const int32_t NB = N / 4;
#pragma omp parallel for schedule(static) num_threads(nt_) if (par)
    for (int32_t b = 0; b < NB; b++) matmul_cols<4>(out, x, T, W, bias, b * 4);
    for (int32_t n = NB * 4; n < N; n++) matmul_cols<1>(out, x, T, W, bias, n);
  }

  void rope(float* x, const int32_t* pos, int32_t T, int32_t nh, const RopeParams& rp) override {
    const int32_t d = rp.d, half = d / 2;
    std::vector<float> cs((size_t)half), sn((size_t)half);
    for (int32_t t = 0; t < T; t++) {
      for (int32_t i = 0; i < half; i++) {
        // HF computes the angle in fp32 (pos * inv_freq); we do it in double from the fp32 inv_freq, then round.
        double a = (double)pos[t] * (double)rp.inv_freq[i];
        cs[i] = (float)std::cos(a);
        sn[i] = (float)std::sin(a);
      }
      for (int32_t h = 0; h < nh; h++) {
        float* v = x + ((size_t)t * nh + h) * d;
        for (int32_t i = 0; i < half; i++) {
          float x1 = v[i], x2 = v[i + half];
          v[i] = x1 * cs[i] - x2 * sn[i];
          v[i + half] = x2 * cs[i] + x1 * sn[i];
        }
      }
    }
  }

  void silu_mul(float* out, const float* gate, const float* up, int64_t n) override {
    for (int64_t i = 0; i < n; i++) {
      float g = gate[i];
      out[i] = g / (1.f + std::exp(-g)) * up[i];
    }
  }

  void add(float* x, const float* y, int64_t n) override {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
  }

  // Prefill keys [n][Hk][d] as kt[g][e][j], j zero padded to np: a query's scores for 8 (or 16) keys are then d
  // broadcast FMAs with no horizontal sums.
  std::vector<float> keys_transposed(const float* k, int32_t n, int32_t Hk, int32_t d, int32_t np) const {
    std::vector<float> kt((size_t)Hk * d * np, 0.f);
#pragma omp parallel for num_threads(nt_) collapse(2) if ((double)Hk * d * n >= kParMinWork)
    for (int32_t g = 0; g < Hk; g++)
      for (int32_t e = 0; e < d; e++) {
        float* row = kt.data() + ((size_t)g * d + e) * np;
        for (int32_t j = 0; j < n; j++) row[j] = k[((size_t)j * Hk + g) * d + e];
      }
    return kt;
  }

  void attn_prefill(float* out, const float* q, const float* k, const float* v, int32_t n, int32_t H, int32_t Hk,
                    int32_t d) override {
#ifdef KVF_AVX2
    if (d % 8 == 0) return attn_prefill_avx2(out, q, k, v, n, H, Hk, d);
#endif
    attn_prefill_generic(out, q, k, v, n, H, Hk, d);
  }

#ifdef KVF_AVX2
  // Causal prefill attention in blocks of QB query rows of one head: the rows' scores for 16 keys at a time come
  // from 2*QB independent FMA chains that share each load of the transposed keys (the one-row version was bound by
  // one dependent chain and one key load per FMA); each row's output columns then stay in registers while the
  // weighted V rows stream past (pv_row). Per element the arithmetic is that of attn_prefill_generic: each score one
  // fixed-order fma chain over e, the same softmax, each output column one fma chain over keys in order; so the
  // result is bit for bit the same, whatever the blocking and the threads.
  void attn_prefill_avx2(float* out, const float* q, const float* k, const float* v, int32_t n, int32_t H, int32_t Hk,
                         int32_t d) {
    constexpr int32_t QB = 4;
    const int32_t G = H / Hk, nc = d / 8;
    const float scale = 1.f / std::sqrt((float)d);
    const int32_t np = (n + 15) & ~15;  // keys transposed per KV head, kt[g][e][j], zero padded to 16
    const std::vector<float> kt = keys_transposed(k, n, Hk, d, np);
    const int32_t nqb = (n + QB - 1) / QB;
    const size_t vstride = (size_t)Hk * d;
#pragma omp parallel num_threads(nt_) if ((double)H * n * n * d >= kParMinWork)
    {
      std::vector<float> sbuf((size_t)QB * np);
#pragma omp for schedule(dynamic, 1) collapse(2)
      for (int32_t h = 0; h < H; h++)
        for (int32_t b = 0; b < nqb; b++) {
          const int32_t g = h / G, i0 = b * QB, nr = std::min(QB, n - i0), jmax = i0 + nr;
          const float* ktg = kt.data() + (size_t)g * d * np;
          const float* qr[QB];
          for (int32_t r = 0; r < QB; r++) qr[r] = q + ((size_t)(i0 + std::min(r, nr - 1)) * H + h) * d;
          for (int32_t j0 = 0; j0 < jmax; j0 += 16) {
            __m256 a0[QB], a1[QB];
            for (int32_t r = 0; r < QB; r++) { a0[r] = _mm256_setzero_ps(); a1[r] = _mm256_setzero_ps(); }
            for (int32_t e = 0; e < d; e++) {
              const float* kr = ktg + (size_t)e * np + j0;
              const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8);
              for (int32_t r = 0; r < QB; r++) {
                const __m256 qe = _mm256_set1_ps(qr[r][e]);
                a0[r] = _mm256_fmadd_ps(qe, k0, a0[r]);
                a1[r] = _mm256_fmadd_ps(qe, k1, a1[r]);
              }
            }
            for (int32_t r = 0; r < QB; r++) {
              _mm256_storeu_ps(sbuf.data() + (size_t)r * np + j0, a0[r]);
              _mm256_storeu_ps(sbuf.data() + (size_t)r * np + j0 + 8, a1[r]);
            }
          }
          for (int32_t r = 0; r < nr; r++) {
            const int32_t i = i0 + r, jn = i + 1;  // keys 0..i
            float* sr = sbuf.data() + (size_t)r * np;
            softmax_scaled(sr, jn, scale);
            // from zero, each column is the fma chain over keys in order that axpy_f32 builds in the generic version
            float* o = out + ((size_t)i * H + h) * d;
            std::fill(o, o + d, 0.f);
            pv_row(o, sr, v + (size_t)g * d, jn, vstride, nc);
          }
        }
    }
  }
#endif

  // One query row at a time (any head dim; the reference for the blocked AVX2 version).
  void attn_prefill_generic(float* out, const float* q, const float* k, const float* v, int32_t n, int32_t H, int32_t Hk,
                            int32_t d) {
    const int32_t G = H / Hk;
    const float scale = 1.f / std::sqrt((float)d);
    // Keys transposed per KV head, kt[g][e][j] (j padded to a multiple of 8 with zeros): a query's scores for 8 keys
    // are then d broadcast FMAs with no horizontal sums. Each score is still one fixed-order sum over e.
    const int32_t np = (n + 7) & ~7;
    const std::vector<float> kt = keys_transposed(k, n, Hk, d, np);
    // causal: about n*n/2 scores and as many weighted V rows per query head
    const bool par = (double)H * n * n * d >= kParMinWork;
#pragma omp parallel num_threads(nt_) if (par)
    {
      std::vector<float> s((size_t)np);
#pragma omp for schedule(dynamic, 4) collapse(2)
      for (int32_t h = 0; h < H; h++)
        for (int32_t i = 0; i < n; i++) {
          const int32_t g = h / G;
          const float* qi = q + ((size_t)i * H + h) * d;
          const float* ktg = kt.data() + (size_t)g * d * np;
          const int32_t jn = i + 1;  // keys 0..i
          int32_t j0 = 0;
#ifdef KVF_AVX2
          for (; j0 < jn; j0 += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (int32_t e = 0; e < d; e++)
              acc = _mm256_fmadd_ps(_mm256_set1_ps(qi[e]), _mm256_loadu_ps(ktg + (size_t)e * np + j0), acc);
            _mm256_storeu_ps(s.data() + j0, acc);
          }
#else
          for (; j0 < jn; j0++) {
            float acc = 0.f;
            for (int32_t e = 0; e < d; e++) acc = std::fma(qi[e], ktg[(size_t)e * np + j0], acc);
            s[j0] = acc;
          }
#endif
          softmax_scaled(s.data(), jn, scale);
          float* o = out + ((size_t)i * H + h) * d;
          for (int32_t e = 0; e < d; e++) o[e] = 0;
          for (int32_t j = 0; j < jn; j++) axpy_f32(o, s[j], v + ((size_t)j * Hk + g) * d, d);
        }
    }
  }

  // multiply-adds of one decode attention call: each query head scores and weights every token of its KV head
  static bool decode_par(int32_t B, int32_t H, int32_t Hk, const PagedHead* heads, int32_t d) {
    double tokens = 0;
    for (int32_t i = 0; i < B * Hk; i++) tokens += heads[i].len;
    return tokens * (H / Hk) * d * 2 >= kParMinWork;
  }

  void attn_decode(float* out, const float* q, int32_t B, int32_t H, int32_t Hk, const PagedHead* heads,
                   const KVStoreDesc& kv) override {
#ifdef KVF_AVX2
    if (kv.d % 8 == 0) return attn_decode_avx2(out, q, B, H, Hk, heads, kv);
#endif
    attn_decode_scalar(out, q, B, H, Hk, heads, kv);
  }

#ifdef KVF_AVX2
  // Keys in blocks of KB: a block's K rows (any page layout) widened once into an L1-sized fp32 scratch, then each
  // of the G query heads scores 8 keys at a time (8 independent FMA chains, one transposing reduction); the
  // softmax runs 8 lanes wide; V likewise, with each query head's output columns held in registers over a block.
  // Every score and output element is summed in one fixed order that depends only on (len, d): batch-invariant.
  void attn_decode_avx2(float* out, const float* q, int32_t B, int32_t H, int32_t Hk, const PagedHead* heads,
                        const KVStoreDesc& kv) {
    constexpr int32_t KB = 64;
    const int32_t G = H / Hk, d = kv.d, P = kv.P, nc = d / 8;
    const float scale = 1.f / std::sqrt((float)d);
#pragma omp parallel num_threads(nt_) if (decode_par(B, H, Hk, heads, d))
    {
      std::vector<float> s;
      float* blk = static_cast<float*>(std::aligned_alloc(64, (size_t)KB * d * sizeof(float)));
#pragma omp for schedule(dynamic, 1) collapse(2)
      for (int32_t b = 0; b < B; b++)
        for (int32_t g = 0; g < Hk; g++) {
          const PagedHead& ph = heads[(size_t)b * Hk + g];
          const int32_t len = ph.len, lp = (len + 7) & ~7;
          s.assign((size_t)G * lp, 0.f);
          // rows j0..j0+nk of K (part 0) or V (part P*d), widened into blk; rows PF ahead prefetched, because a
          // head's pages lie anywhere in the pool and the hardware prefetcher stops at each page's end
          const size_t es = dtype_size(kv.dtype), row_bytes = (size_t)d * es;
          auto widen = [&](int32_t j0, int32_t nk, size_t part) {
            constexpr int32_t PF = 32;
            for (int32_t j = 0; j < nk; j++) {
              const int32_t t = j0 + j;
              if (t + PF < len) {
                const int32_t tp = t + PF;
                const char* a = static_cast<const char*>(kv.base) +
                    ((size_t)ph.pages[tp / P] * kv.page_elems() + part + (size_t)(tp % P) * d) * es;
                for (size_t off = 0; off < row_bytes; off += 64) _mm_prefetch(a + off, _MM_HINT_T0);
              }
              const size_t base = (size_t)ph.pages[t / P] * kv.page_elems() + part + (size_t)(t % P) * d;
              kv_load_row(kv.base, kv.dtype, base, blk + (size_t)j * d, d);
            }
          };
          for (int32_t j0 = 0; j0 < len; j0 += KB) {
            const int32_t nk = std::min(KB, len - j0), nk8 = (nk + 7) & ~7;
            widen(j0, nk, 0);
            std::fill(blk + (size_t)nk * d, blk + (size_t)nk8 * d, 0.f);
            for (int32_t r = 0; r < G; r++) {
              const float* qr = q + ((size_t)b * H + g * G + r) * d;
              float* sr = s.data() + (size_t)r * lp + j0;
              for (int32_t jb = 0; jb < nk8; jb += 8) {
                __m256 acc[8];
                for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
                const float* kb = blk + (size_t)jb * d;
                for (int32_t c = 0; c < nc; c++) {
                  const __m256 qv = _mm256_loadu_ps(qr + 8 * c);
                  for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(kb + (size_t)i * d + 8 * c), qv, acc[i]);
                }
                _mm256_storeu_ps(sr + jb, _mm256_mul_ps(reduce8x8(acc), _mm256_set1_ps(scale)));
              }
            }
          }
          // softmax per query head: lanes past len are masked to 0 after the exp
          for (int32_t r = 0; r < G; r++) {
            float* sr = s.data() + (size_t)r * lp;
            __m256 mv = _mm256_set1_ps(-INFINITY);
            for (int32_t j = 0; j < lp; j += 8) {
              __m256 v = _mm256_loadu_ps(sr + j);
              if (j + 8 > len) v = _mm256_blendv_ps(v, _mm256_set1_ps(-INFINITY), tail_mask(len - j));
              mv = _mm256_max_ps(mv, v);
            }
            const __m256 mx = _mm256_set1_ps(hmax8(mv));
            __m256 sv = _mm256_setzero_ps();
            for (int32_t j = 0; j < lp; j += 8) {
              __m256 e = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mx));
              if (j + 8 > len) e = _mm256_blendv_ps(e, _mm256_setzero_ps(), tail_mask(len - j));
              _mm256_storeu_ps(sr + j, e);
              sv = _mm256_add_ps(sv, e);
            }
            const __m256 inv = _mm256_set1_ps(1.f / hsum8(sv));
            for (int32_t j = 0; j < lp; j += 8) _mm256_storeu_ps(sr + j, _mm256_mul_ps(_mm256_loadu_ps(sr + j), inv));
          }
          float* o = out + ((size_t)b * H + g * G) * d;
          std::fill(o, o + (size_t)G * d, 0.f);
          for (int32_t j0 = 0; j0 < len; j0 += KB) {
            const int32_t nk = std::min(KB, len - j0);
            widen(j0, nk, (size_t)P * d);
            for (int32_t r = 0; r < G; r++) {
              const float* pr = s.data() + (size_t)r * lp + j0;
              pv_row(o + (size_t)r * d, pr, blk, nk, (size_t)d, nc);
            }
          }
        }
      std::free(blk);
    }
  }
  static __m256 tail_mask(int32_t valid) {  // lanes >= valid set (all ones), lanes < valid clear
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_add_epi32(idx, _mm256_set1_epi32(1)), _mm256_set1_epi32(valid)));
  }
  static float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
#endif

  // Portable path (no AVX2, or a head dim that is not a multiple of 8): one dot product per (query head, key).
  void attn_decode_scalar(float* out, const float* q, int32_t B, int32_t H, int32_t Hk, const PagedHead* heads,
                          const KVStoreDesc& kv) {
    const int32_t G = H / Hk, d = kv.d, P = kv.P;
    const float scale = 1.f / std::sqrt((float)d);
#pragma omp parallel num_threads(nt_) if (decode_par(B, H, Hk, heads, d))
    {
      std::vector<float> s, krow((size_t)d);
#pragma omp for schedule(dynamic, 1) collapse(2)
      for (int32_t b = 0; b < B; b++)
        for (int32_t g = 0; g < Hk; g++) {
          const PagedHead& ph = heads[(size_t)b * Hk + g];
          const int32_t len = ph.len;
          s.assign((size_t)len * G, 0.f);
          // scores for the G query heads sharing this KV head; each key row converted once
          for (int32_t j = 0; j < len; j++) {
            const size_t base = (size_t)ph.pages[j / P] * kv.page_elems() + (size_t)(j % P) * d;
            kv_load_row(kv.base, kv.dtype, base, krow.data(), d);
            for (int32_t r = 0; r < G; r++)
              s[(size_t)r * len + j] = dot_f32(q + ((size_t)b * H + g * G + r) * d, krow.data(), d) * scale;
          }
          for (int32_t r = 0; r < G; r++) {
            softmax_scaled(s.data() + (size_t)r * len, len, 1.f);  // scores already scaled
          }
          float* o = out + ((size_t)b * H + g * G) * d;
          for (int32_t e = 0; e < G * d; e++) o[e] = 0;
          for (int32_t j = 0; j < len; j++) {
            const size_t base = (size_t)ph.pages[j / P] * kv.page_elems() + (size_t)P * d + (size_t)(j % P) * d;
            kv_load_row(kv.base, kv.dtype, base, krow.data(), d);  // V row
            for (int32_t r = 0; r < G; r++) axpy_f32(o + (size_t)r * d, s[(size_t)r * len + j], krow.data(), d);
          }
        }
    }
  }

  void kv_write(const KVStoreDesc& kv, const float* k, const float* v, int64_t row_stride, const int32_t* src_row,
                const int32_t* dst_page, const int32_t* dst_slot, int32_t count) override {
    const int32_t d = kv.d;
    for (int32_t i = 0; i < count; i++) {
      const size_t kb = (size_t)dst_page[i] * kv.page_elems() + (size_t)dst_slot[i] * d;
      const size_t vb = kb + (size_t)kv.P * d;
      const float* ks = k + (size_t)src_row[i] * row_stride;
      const float* vs = v + (size_t)src_row[i] * row_stride;
      for (int32_t e = 0; e < d; e++) {
        kv_store(kv.base, kv.dtype, kb + e, ks[e]);
        kv_store(kv.base, kv.dtype, vb + e, vs[e]);
      }
    }
  }

  void kv_copy(const KVStoreDesc& kv, const int32_t* sp, const int32_t* ss, const int32_t* dp, const int32_t* ds,
               int32_t count) override {
    const size_t es = dtype_size(kv.dtype), row = (size_t)kv.d * es;
    char* base = static_cast<char*>(kv.base);
    for (int32_t i = 0; i < count; i++) {
      const size_t src = ((size_t)sp[i] * kv.page_elems() + (size_t)ss[i] * kv.d) * es;
      const size_t dst = ((size_t)dp[i] * kv.page_elems() + (size_t)ds[i] * kv.d) * es;
      const size_t voff = (size_t)kv.P * kv.d * es;
      std::memmove(base + dst, base + src, row);
      std::memmove(base + dst + voff, base + src + voff, row);
    }
  }

  void kv_read(const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count, float* k_out,
               float* v_out) override {
    const int32_t d = kv.d;
    for (int32_t i = 0; i < count; i++) {
      const size_t kb = (size_t)page[i] * kv.page_elems() + (size_t)slot[i] * d;
      const size_t vb = kb + (size_t)kv.P * d;
      kv_load_row(kv.base, kv.dtype, kb, k_out + (size_t)i * d, d);
      if (v_out) kv_load_row(kv.base, kv.dtype, vb, v_out + (size_t)i * d, d);
    }
  }
  // host memory is this backend's memory
  void kv_gather(const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count, float* k_out,
                 float* v_out) override {
    kv_read(kv, page, slot, count, k_out, v_out);
  }

  // ---- snapkv_scores (added with the CUDA backend): the host function of compress.h is the reference ----
  void snapkv_scores(const float* q, int64_t q_stride, const int32_t* qpos, int32_t w, const float* k,
                     const int32_t* kpos, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d,
                     Pooling pooling, GqaReduce reduce, int32_t kernel, float* S) override {
    const size_t row = (size_t)H * d;
    if (q_stride == (int64_t)row || w <= 1) {
      kvf::snapkv_scores(q, qpos, w, k, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel, S);
      return;
    }
    if (q_stride < (int64_t)row) bad_argument("snapkv_scores: q_stride " + std::to_string(q_stride) + " < H * d");
    std::vector<float> qd((size_t)std::max(w, 0) * row);  // the window queries made dense
    for (int32_t i = 0; i < w; i++)
      std::copy(q + (size_t)i * q_stride, q + (size_t)i * q_stride + row, qd.data() + i * row);
    kvf::snapkv_scores(qd.data(), qpos, w, k, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel, S);
  }
  // ---- end snapkv_scores ----

  void snapkv_select(const float* q, const int32_t* qpos, int32_t w, const float* k, const int32_t* kpos, int32_t m,
                     int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling, GqaReduce reduce,
                     int32_t kernel, int32_t Bp, float alpha, bool ada, std::vector<std::vector<int32_t>>& kept) override {
    std::vector<float> S((size_t)Hk * std::max(m_prefix, 0));
    snapkv_scores(q, (int64_t)H * d, qpos, w, k, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel, S.data());
    allocate(S.data(), Hk, m_prefix, Bp, alpha, ada, kept);
  }

  // sample: sampling.h's sample_token on a copy of each active row (the logits stay unchanged)
  void sample(const float* logits, int32_t R, int32_t V, const SampleRow* rows, float softcap,
              int32_t* tokens) override {
    std::vector<float> scratch((size_t)V);
    for (int32_t r = 0; r < R; r++) {
      if (!rows[r].active) {
        tokens[r] = -1;
        continue;
      }
      const float* src = logits + (size_t)r * V;
      std::copy(src, src + V, scratch.data());
      SamplingSpec spec;
      spec.temperature = rows[r].temperature;
      spec.top_p = rows[r].top_p;
      spec.top_k = rows[r].top_k;
      spec.seed = rows[r].seed;
      tokens[r] = sample_token(scratch.data(), V, spec, rows[r].position, softcap);
    }
  }

 private:
  int nt_ = 1;  // threads per parallel region
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int32_t threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace kvf
