// Ada-KV compression math (see compress.h and ENGINE.md). Everything here is deterministic: fixed reduction
// orders, exact integer bookkeeping for budgets, and a total order on (score, head, position) for selection, so
// the engine, the TypeScript reference (tests/reference/adakv.ts) and a CUDA port choose the same tokens.
#include "compress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

namespace kvf {

namespace {

std::string fmt_num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// floor(r * n) / ceil(r * n) for a ratio r that arrived as a float (proto `float`): 0.3f is 0.30000001192..., so a
// plain ceil(0.3f * 100) would give 31, not the 30 the user meant. A product within the float's own representation
// error (n * 2^-24) of an integer is taken to be that integer. The reference implements the same rule.
double scaled_nearest_int(float r, int64_t n, bool* is_int) {
  double x = (double)r * (double)n;
  double k = std::nearbyint(x);
  *is_int = std::fabs(x - k) <= (double)n * 0x1p-24;
  return *is_int ? k : x;
}
int64_t ceil_scaled(float r, int64_t n) {
  bool is_int;
  double x = scaled_nearest_int(r, n, &is_int);
  return (int64_t)(is_int ? x : std::ceil(x));
}
int64_t floor_scaled(float r, int64_t n) {
  bool is_int;
  double x = scaled_nearest_int(r, n, &is_int);
  return (int64_t)(is_int ? x : std::floor(x));
}

// Maps a float to a uint32 whose unsigned order is the float order (-0 canonicalised to +0 so that it ties with
// +0, as float comparison does). NaN is rejected before this is called.
inline uint32_t ordered_bits(float s) {
  s += 0.0f;  // -0 + 0 = +0 under round-to-nearest
  uint32_t u;
  std::memcpy(&u, &s, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Selection key: ascending key order = score descending, then the low 32 bits ascending (head-major flat index,
// so lower head first, then lower position). This is the tie-breaking rule of compress.h as one integer compare.
inline uint64_t select_key(float s, uint32_t flat) { return (uint64_t)(~ordered_bits(s)) << 32 | flat; }

// Fixed-order dot products: 8 independent lanes over d held in one vector register (GCC/Clang vector extension:
// lane-wise IEEE ops, the same result with or without AVX), combined by a fixed tree, then the tail. The order
// depends only on d, never on the data, the blocking or the thread.
typedef float v8f __attribute__((vector_size(32)));
inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}
inline float combine8(v8f c) { return ((c[0] + c[4]) + (c[1] + c[5])) + ((c[2] + c[6]) + (c[3] + c[7])); }

inline float dot_f32(const float* a, const float* b, int32_t d) {
  v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
  int32_t t = 0;
  for (; t + 8 <= d; t += 8) acc += load8(a + t) * load8(b + t);
  float s = combine8(acc);
  for (; t < d; t++) s += a[t] * b[t];
  return s;
}

// Four keys against one query at once: four independent accumulator chains hide the FMA latency that bounds a
// single dot, and each load of the query serves four keys. Per key the arithmetic is exactly dot_f32's, so
// blocking never changes a score.
inline void dot4_f32(const float* a, const float* b0, const float* b1, const float* b2, const float* b3, int32_t d,
                     float* out) {
  v8f c0 = {0, 0, 0, 0, 0, 0, 0, 0}, c1 = c0, c2 = c0, c3 = c0;
  int32_t t = 0;
  for (; t + 8 <= d; t += 8) {
    v8f x = load8(a + t);
    c0 += x * load8(b0 + t);
    c1 += x * load8(b1 + t);
    c2 += x * load8(b2 + t);
    c3 += x * load8(b3 + t);
  }
  out[0] = combine8(c0);
  out[1] = combine8(c1);
  out[2] = combine8(c2);
  out[3] = combine8(c3);
  for (; t < d; t++) {
    out[0] += a[t] * b0[t];
    out[1] += a[t] * b1[t];
    out[2] += a[t] * b2[t];
    out[3] += a[t] * b3[t];
  }
}

// Fixed-order sum, 8 lanes by index mod 8 then a fixed tree (more accurate than one running sum over 32K terms).
inline float sum_f32(const float* a, int32_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int32_t t = 0;
  for (; t + 8 <= n; t += 8)
    for (int u = 0; u < 8; u++) acc[u] += a[t + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; t < n; t++) s += a[t];
  return s;
}

}  // namespace

const char* method_name(Method m) {
  switch (m) {
    case Method::Full: return "FULL";
    case Method::SnapKV: return "SNAPKV";
    case Method::PyramidKV: return "PYRAMIDKV";
    case Method::AdaSnapKV: return "ADA_SNAPKV";
    case Method::AdaPyramidKV: return "ADA_PYRAMIDKV";
  }
  return "UNKNOWN";
}

void validate_budget(const BudgetSpec& b) {
  int32_t mi = (int32_t)b.method;
  if (mi < (int32_t)Method::Full || mi > (int32_t)Method::AdaPyramidKV)
    bad_argument("budget.method must be one of FULL, SNAPKV, PYRAMIDKV, ADA_SNAPKV, ADA_PYRAMIDKV, got " +
                 std::to_string(mi));
  int32_t pi = (int32_t)b.pooling;
  if (pi != (int32_t)Pooling::Max && pi != (int32_t)Pooling::Avg)
    bad_argument("budget.pooling must be MAX or AVG, got " + std::to_string(pi));
  int32_t ri = (int32_t)b.gqa_reduce;
  if (ri != (int32_t)GqaReduce::Mean && ri != (int32_t)GqaReduce::Max)
    bad_argument("budget.gqa_reduce must be MEAN or MAXIMUM, got " + std::to_string(ri));
  if (b.window < 1) bad_argument("budget.window must be >= 1, got " + std::to_string(b.window));
  if (b.pool_kernel < 1 || b.pool_kernel % 2 == 0)
    bad_argument("budget.pool_kernel must be odd and >= 1, got " + std::to_string(b.pool_kernel));
  if (!(b.floor_alpha >= 0.f && b.floor_alpha <= 1.f))
    bad_argument("budget.floor_alpha must be in [0, 1], got " + fmt_num(b.floor_alpha));
  if (!(b.pyramid_beta > 1.f) || std::isinf(b.pyramid_beta))
    bad_argument("budget.pyramid_beta must be a finite number > 1, got " + fmt_num(b.pyramid_beta));
  if (b.tokens_per_head < 0)
    bad_argument("budget.tokens_per_head must be >= 0, got " + std::to_string(b.tokens_per_head));
  // keep_ratio 0 means unset; anything else (NaN included) must lie in (0, 1].
  if (b.keep_ratio != 0.f && !(b.keep_ratio > 0.f && b.keep_ratio <= 1.f))
    bad_argument("budget.keep_ratio must be in (0, 1], got " + fmt_num(b.keep_ratio));
  if (b.decode_max_tokens_per_head < 0)
    bad_argument("budget.decode_max_tokens_per_head must be >= 0, got " + std::to_string(b.decode_max_tokens_per_head));
  if (b.decode_max_tokens_per_head != 0 && b.decode_max_tokens_per_head < b.window + 1)
    bad_argument("budget.decode_max_tokens_per_head must be 0 (no cap) or >= window + 1 = " +
                 std::to_string(b.window + 1) + ", got " + std::to_string(b.decode_max_tokens_per_head));
  if (b.method == Method::Full) return;  // FULL keeps everything: the size fields are ignored
  bool has_tokens = b.tokens_per_head != 0, has_ratio = b.keep_ratio != 0.f;
  if (has_tokens && has_ratio)
    bad_argument("budget: set exactly one of tokens_per_head and keep_ratio, got both (tokens_per_head " +
                 std::to_string(b.tokens_per_head) + ", keep_ratio " + fmt_num(b.keep_ratio) + ")");
  if (!has_tokens && !has_ratio) bad_argument("budget: set exactly one of tokens_per_head and keep_ratio, got neither");
  if (has_tokens && b.tokens_per_head < b.window + 1)
    bad_argument("budget.tokens_per_head must be >= window + 1 = " + std::to_string(b.window + 1) + ", got " +
                 std::to_string(b.tokens_per_head));
}

int32_t budget_tokens(const BudgetSpec& b, int32_t n) {
  if (n < 0) bad_argument("prompt length must be >= 0, got " + std::to_string(n));
  if (b.method == Method::Full) return n;
  if (b.keep_ratio != 0.f) {
    int64_t k = std::max<int64_t>((int64_t)b.window + 1, ceil_scaled(b.keep_ratio, n));
    return (int32_t)std::min<int64_t>(n, k);
  }
  return b.tokens_per_head;
}

bool compresses(const BudgetSpec& b, int32_t n) { return b.method != Method::Full && n > budget_tokens(b, n); }

std::vector<int32_t> layer_prefix_budgets(const BudgetSpec& b, int32_t L, int32_t n) {
  if (L < 1) bad_argument("layer count must be >= 1, got " + std::to_string(L));
  if (!compresses(b, n))
    bad_argument("layer_prefix_budgets needs a compressed prompt (method not FULL and n > B), got n = " +
                 std::to_string(n) + ", B = " + std::to_string(budget_tokens(b, n)));
  const int64_t Bp = (int64_t)budget_tokens(b, n) - b.window;  // B' >= 1 since B >= w + 1
  const int64_t m = (int64_t)n - b.window;                      // prefix length; Bp < m since n > B
  std::vector<int32_t> out((size_t)L, (int32_t)Bp);
  if (!method_is_pyramid(b.method) || L == 1) return out;  // one layer: the linear schedule is just its mean

  double mn = (double)Bp / (double)b.pyramid_beta;
  double mx = 2.0 * (double)Bp - mn;
  if (mx > (double)m) {  // the cap rule: no layer can keep more than the prefix; raise min to keep the mean B'
    mx = (double)m;
    mn = 2.0 * (double)Bp - mx;
  }
  // Largest remainder on a 2^-20 grid: targets are snapped to multiples of 2^-20 tokens so that the integer part
  // and the remainder order are exact integers (FMA contraction or a different evaluation order elsewhere moves
  // x_l by ~1e-13, far below the grid). Sum of targets is L * B' exactly in real arithmetic (symmetric around B').
  const int64_t ONE = int64_t(1) << 20;
  std::vector<int64_t> whole((size_t)L), frac((size_t)L);
  int64_t sum = 0;
  for (int32_t l = 0; l < L; l++) {
    double x = mx - (mx - mn) * (double)l / (double)(L - 1);
    int64_t t = std::llround(x * (double)ONE);
    whole[l] = t / ONE;  // t >= 0
    frac[l] = t % ONE;
    sum += whole[l];
  }
  int64_t rem = (int64_t)L * Bp - sum;
  KVF_CHECK(rem >= 0 && rem <= L, "pyramid remainder out of range: " + std::to_string(rem));
  std::vector<int32_t> order((size_t)L);
  for (int32_t l = 0; l < L; l++) order[l] = l;
  // larger remainder first; equal remainders go to the lower layer
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) { return frac[a] > frac[c]; });
  for (int32_t l = 0; l < L; l++) out[l] = (int32_t)whole[l];
  for (int64_t i = 0; i < rem; i++) out[order[i]] += 1;
  for (int32_t l = 0; l < L; l++)
    KVF_CHECK(out[l] >= 0 && out[l] <= m, "pyramid budget outside [0, n - w] at layer " + std::to_string(l));
  return out;
}

void check_snapkv_args(int32_t w, const int32_t* kpos, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d,
                       Pooling pooling, GqaReduce reduce, int32_t kernel) {
  if (w < 1) bad_argument("snapkv_scores: window w must be >= 1, got " + std::to_string(w));
  if (H < 1 || Hk < 1 || H % Hk != 0)
    bad_argument("snapkv_scores: query heads H = " + std::to_string(H) + " must be a positive multiple of KV heads Hk = " +
                 std::to_string(Hk));
  if (d < 1) bad_argument("snapkv_scores: head dim d must be >= 1, got " + std::to_string(d));
  if (m < 0 || m_prefix < 0 || m_prefix > m)
    bad_argument("snapkv_scores: need 0 <= m_prefix <= m, got m_prefix = " + std::to_string(m_prefix) +
                 ", m = " + std::to_string(m));
  if (kernel < 1 || kernel % 2 == 0) bad_argument("snapkv_scores: pool kernel must be odd and >= 1, got " + std::to_string(kernel));
  if (pooling != Pooling::Max && pooling != Pooling::Avg) bad_argument("snapkv_scores: unknown pooling");
  if (reduce != GqaReduce::Mean && reduce != GqaReduce::Max) bad_argument("snapkv_scores: unknown GQA reduce");
  for (int32_t j = 1; j < m; j++)
    if (kpos[j] < kpos[j - 1]) bad_argument("snapkv_scores: key positions must be ascending (kpos[" + std::to_string(j) + "])");
}

void snapkv_scores(const float* q, const int32_t* qpos, int32_t w, const float* k, const int32_t* kpos, int32_t m,
                   int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling, GqaReduce reduce,
                   int32_t kernel, float* S) {
  check_snapkv_args(w, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel);
  if (m_prefix == 0) return;

  const int32_t G = H / Hk;
  const float scale = 1.0f / std::sqrt((float)d);
  // visible[i]: key j is visible to query i iff j < visible[i] (kpos ascending)
  std::vector<int32_t> visible((size_t)w);
  for (int32_t i = 0; i < w; i++) visible[i] = (int32_t)(std::upper_bound(kpos, kpos + m, qpos[i]) - kpos);

  std::vector<float> A((size_t)H * m_prefix, 0.f);  // [H, m_prefix] sum over window queries of softmax weights
  // One query head per iteration, each writing only its own row of A: the result does not depend on the threads.
  // Keys are visited in blocks of KB, and each block is used by all w queries of the head before the next block is
  // loaded, so K is streamed from memory once per query head rather than once per (query head, query).
  const int32_t max_vis = *std::max_element(visible.begin(), visible.end());
  const size_t kstride = (size_t)Hk * d;  // key j of KV head g is at k + j * kstride + g * d
  constexpr int32_t KB = 64;
  // small scorings run on the calling thread (see kParMinWork in cpu_ops.cc): w queries of each head against its keys
#pragma omp parallel if ((double)H * w * max_vis * d >= double(1 << 18))
  {
    std::vector<float> E((size_t)w * max_vis);  // [w, max_vis] logits, then exp(logit - max)
#pragma omp for schedule(static)
    for (int32_t h = 0; h < H; h++) {
      const int32_t g = h / G;
      const float* kg = k + (size_t)g * d;
      for (int32_t jb = 0; jb < max_vis; jb += KB) {
        for (int32_t i = 0; i < w; i++) {
          const int32_t je = std::min(jb + KB, visible[i]);
          const float* qi = q + ((size_t)i * H + h) * d;
          float* e = E.data() + (size_t)i * max_vis;
          int32_t j = jb;
          for (; j + 4 <= je; j += 4) {
            const float* k0 = kg + (size_t)j * kstride;
            dot4_f32(qi, k0, k0 + kstride, k0 + 2 * kstride, k0 + 3 * kstride, d, &e[j]);
          }
          for (; j < je; j++) e[j] = dot_f32(qi, kg + (size_t)j * kstride, d);
        }
      }
      float* Ah = A.data() + (size_t)h * m_prefix;
      for (int32_t i = 0; i < w; i++) {
        const int32_t vis = visible[i];
        if (vis == 0) continue;  // a query that sees no key gives every key weight 0
        float* e = E.data() + (size_t)i * max_vis;
        float mxl = -std::numeric_limits<float>::infinity();
        for (int32_t j = 0; j < vis; j++) {
          e[j] *= scale;
          mxl = std::max(mxl, e[j]);
        }
        for (int32_t j = 0; j < vis; j++) e[j] = std::exp(e[j] - mxl);
        const float inv = 1.0f / sum_f32(e, vis);
        const int32_t jn = std::min(vis, m_prefix);
        for (int32_t j = 0; j < jn; j++) Ah[j] += e[j] * inv;
      }
    }
  }

  // GQA reduce over the G query heads of each KV head (fixed order h = g*G .. g*G+G-1), then the mean over w.
  std::vector<float> R((size_t)Hk * m_prefix);  // [Hk, m_prefix]
  const float inv_w = 1.0f / (float)w;
  for (int32_t g = 0; g < Hk; g++) {
    float* Rg = R.data() + (size_t)g * m_prefix;
    const float* A0 = A.data() + (size_t)g * G * m_prefix;
    for (int32_t j = 0; j < m_prefix; j++) Rg[j] = A0[j];
    for (int32_t u = 1; u < G; u++) {
      const float* Au = A0 + (size_t)u * m_prefix;
      if (reduce == GqaReduce::Mean)
        for (int32_t j = 0; j < m_prefix; j++) Rg[j] += Au[j];
      else
        for (int32_t j = 0; j < m_prefix; j++) Rg[j] = std::max(Rg[j], Au[j]);
    }
    const float f = reduce == GqaReduce::Mean ? inv_w / (float)G : inv_w;
    for (int32_t j = 0; j < m_prefix; j++) Rg[j] *= f;
  }

  // Pooling along keys, stride 1, padding kernel/2. Max: padding is -inf, so only in-range values count.
  // Avg: the zero padding counts (divide by the kernel size everywhere, torch's count_include_pad).
  const int32_t r = kernel / 2;
  for (int32_t g = 0; g < Hk; g++) {
    const float* Rg = R.data() + (size_t)g * m_prefix;
    float* Sg = S + (size_t)g * m_prefix;
    for (int32_t j = 0; j < m_prefix; j++) {
      const int32_t lo = std::max(0, j - r), hi = std::min(m_prefix - 1, j + r);
      if (pooling == Pooling::Max) {
        float v = Rg[lo];
        for (int32_t t = lo + 1; t <= hi; t++) v = std::max(v, Rg[t]);
        Sg[j] = v;
      } else {
        float v = 0.f;
        for (int32_t t = lo; t <= hi; t++) v += Rg[t];
        Sg[j] = v / (float)kernel;
      }
    }
  }
}

void check_allocate_args(int32_t Hk, int32_t m, int32_t Bp, float alpha) {
  if (Hk < 1) bad_argument("allocate: KV heads Hk must be >= 1, got " + std::to_string(Hk));
  if (m < 0 || Bp < 0 || Bp > m)
    bad_argument("allocate: need 0 <= Bp <= m, got Bp = " + std::to_string(Bp) + ", m = " + std::to_string(m));
  if (!(alpha >= 0.f && alpha <= 1.f)) bad_argument("allocate: alpha must be in [0, 1], got " + fmt_num(alpha));
  if ((int64_t)Hk * m > (int64_t)UINT32_MAX) bad_argument("allocate: Hk * m too large");
}

void allocate(const float* S, int32_t Hk, int32_t m, int32_t Bp, float alpha, bool ada,
              std::vector<std::vector<int32_t>>& kept) {
  check_allocate_args(Hk, m, Bp, alpha);
  const size_t total = (size_t)Hk * m;
  for (size_t i = 0; i < total; i++)
    if (std::isnan(S[i])) bad_argument("allocate: score is NaN at head " + std::to_string(i / m) + ", position " + std::to_string(i % m));

  kept.assign((size_t)Hk, {});
  if (Bp == 0) return;
  const int32_t f = ada ? (int32_t)floor_scaled(alpha, Bp) : Bp;  // per-head safeguard (all of Bp when uniform)

  // Step 1: each head's own top f, by (score desc, position asc).
  std::vector<uint8_t> taken(total, 0);
  std::vector<uint64_t> keys((size_t)m);
  if (f > 0) {
    for (int32_t h = 0; h < Hk; h++) {
      const float* Sh = S + (size_t)h * m;
      for (int32_t j = 0; j < m; j++) keys[j] = select_key(Sh[j], (uint32_t)j);
      if (f < m) std::nth_element(keys.begin(), keys.begin() + f, keys.end());
      auto& kh = kept[h];
      kh.reserve((size_t)Bp);
      for (int32_t i = 0; i < f; i++) {
        int32_t j = (int32_t)(uint32_t)keys[i];
        kh.push_back(j);
        taken[(size_t)h * m + j] = 1;
      }
    }
  }
  // Step 2: the remaining Hk * (Bp - f) slots to the best remaining scores over all heads, by (score desc, head asc,
  // position asc). The head-major flat index orders head before position.
  const int64_t rest = (int64_t)Hk * (Bp - f);
  if (rest > 0) {
    std::vector<uint64_t> cand;
    cand.reserve(total - (size_t)Hk * f);
    for (size_t i = 0; i < total; i++)
      if (!taken[i]) cand.push_back(select_key(S[i], (uint32_t)i));
    KVF_CHECK((int64_t)cand.size() >= rest, "fewer candidates than slots");
    if ((size_t)rest < cand.size()) std::nth_element(cand.begin(), cand.begin() + rest, cand.end());
    for (int64_t i = 0; i < rest; i++) {
      uint32_t flat = (uint32_t)cand[i];
      kept[flat / m].push_back((int32_t)(flat % m));
    }
  }
  size_t sum = 0;
  for (auto& kh : kept) {
    std::sort(kh.begin(), kh.end());
    sum += kh.size();
  }
  KVF_CHECK(sum == (size_t)Hk * Bp, "allocation total differs from Hk * Bp");
}

int32_t safeguard_floor(float alpha, int32_t Bp) { return (int32_t)floor_scaled(alpha, Bp); }

}  // namespace kvf
