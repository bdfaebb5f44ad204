// CPU attention kernels against a float64 recomputation, and their independence from the thread count.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "ops.h"
#include "sampling.h"
#include "synth_weights.h"

namespace {

// causal GQA attention in float64: out[i][h] = softmax_j<=i(q_i,h . k_j,g / sqrt(d)) v_j,g
std::vector<double> prefill_f64(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                int n, int H, int Hk, int d) {
  std::vector<double> out((size_t)n * H * d, 0.0);
  const int G = H / Hk;
  for (int i = 0; i < n; i++)
    for (int h = 0; h < H; h++) {
      const int g = h / G;
      std::vector<double> s(i + 1);
      double mx = -INFINITY;
      for (int j = 0; j <= i; j++) {
        double acc = 0;
        for (int e = 0; e < d; e++) acc += (double)q[((size_t)i * H + h) * d + e] * k[((size_t)j * Hk + g) * d + e];
        s[j] = acc / std::sqrt((double)d);
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j <= i; j++) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
      for (int j = 0; j <= i; j++)
        for (int e = 0; e < d; e++) out[((size_t)i * H + h) * d + e] += s[j] / sum * v[((size_t)j * Hk + g) * d + e];
    }
  return out;
}

std::vector<float> randn(size_t count, std::mt19937& rng, float sd) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> x(count);
  for (auto& e : x) e = nd(rng);
  return x;
}

}  // namespace

TEST_CASE("attn_prefill matches float64 for every head dim path and block remainder") {
  std::mt19937 rng(1234);
  struct Shape { int n, H, Hk, d; };
  // d % 8 == 0 takes the blocked AVX2 kernel (where built with AVX2), d = 12 the generic one; n covers partial query
  // blocks (n % 4 != 0) and partial 16-key blocks
  const Shape shapes[] = {{1, 2, 1, 8}, {5, 4, 2, 16}, {37, 6, 2, 24}, {130, 4, 1, 64}, {67, 8, 4, 128}, {19, 4, 2, 12}};
  auto cpu = kvf::make_cpu_backend(2);
  for (const Shape& c : shapes) {
    auto q = randn((size_t)c.n * c.H * c.d, rng, 1.f), k = randn((size_t)c.n * c.Hk * c.d, rng, 1.f);
    auto v = randn((size_t)c.n * c.Hk * c.d, rng, 1.f);
    std::vector<float> out((size_t)c.n * c.H * c.d, NAN);
    cpu->attn_prefill(out.data(), q.data(), k.data(), v.data(), c.n, c.H, c.Hk, c.d);
    auto ref = prefill_f64(q, k, v, c.n, c.H, c.Hk, c.d);
    double worst = 0;
    for (size_t i = 0; i < out.size(); i++) worst = std::max(worst, std::fabs(out[i] - ref[i]));
    EXPECT_NEAR(worst, 0.0, 2e-5);
  }
}

TEST_CASE("attn_prefill is the same bit for bit on one thread and on several") {
  std::mt19937 rng(99);
  const int n = 203, H = 8, Hk = 2, d = 64;
  auto q = randn((size_t)n * H * d, rng, 2.f), k = randn((size_t)n * Hk * d, rng, 2.f), v = randn((size_t)n * Hk * d, rng, 1.f);
  std::vector<float> a((size_t)n * H * d), b((size_t)n * H * d);
  kvf::make_cpu_backend(1)->attn_prefill(a.data(), q.data(), k.data(), v.data(), n, H, Hk, d);
  kvf::make_cpu_backend(4)->attn_prefill(b.data(), q.data(), k.data(), v.data(), n, H, Hk, d);
  EXPECT(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST_CASE("the CPU sample op is sample_token per row: inactive rows give -1, the logits stay unchanged") {
  const int V = 300, R = 6;
  kvf::SeededRng r{77};
  std::vector<float> logits((size_t)R * V);
  for (auto& x : logits) x = (float)r.normal() * 2.f;
  const std::vector<float> orig = logits;
  std::vector<kvf::SampleRow> rows((size_t)R);
  rows[0].temperature = 0.f;
  rows[1].temperature = 0.9f;
  rows[2].temperature = 1.f, rows[2].top_k = 5;
  rows[3].temperature = 0.7f, rows[3].top_p = 0.8f;
  rows[4].active = false;
  rows[5].temperature = 1.2f, rows[5].top_k = 40, rows[5].top_p = 0.9f;
  for (int i = 0; i < R; i++) rows[i].seed = 11 + i, rows[i].position = 100 + i;
  auto be = kvf::make_cpu_backend(1);
  std::vector<int32_t> tok((size_t)R, -7);
  be->sample(logits.data(), R, V, rows.data(), 20.f, tok.data());
  EXPECT(logits == orig);
  EXPECT_EQ(tok[4], -1);
  for (int i = 0; i < R; i++) {
    if (!rows[i].active) continue;
    std::vector<float> row(orig.begin() + (size_t)i * V, orig.begin() + (size_t)(i + 1) * V);
    kvf::SamplingSpec spec;
    spec.temperature = rows[i].temperature;
    spec.top_k = rows[i].top_k;
    spec.top_p = rows[i].top_p;
    spec.seed = rows[i].seed;
    EXPECT_EQ(tok[i], kvf::sample_token(row.data(), V, spec, rows[i].position, 20.f));
  }
  // greedy is the soft-capped argmax
  int best = 0;
  for (int i = 1; i < V; i++)
    if (orig[i] > orig[best]) best = i;
  EXPECT_EQ(tok[0], best);
}

TEST_CASE("snapkv_scores with a row stride equals the dense call on the same heads; kv_gather without V") {
  const int w = 5, m = 40, mp = 35, H = 6, Hk = 2, d = 8, G = H / Hk;
  kvf::SeededRng r{5};
  std::vector<float> q((size_t)w * H * d), k((size_t)m * d);
  for (auto& x : q) x = (float)r.normal();
  for (auto& x : k) x = (float)r.normal();
  std::vector<int32_t> kpos(m), qpos(w);
  for (int j = 0; j < m; j++) kpos[j] = 2 * j;
  for (int i = 0; i < w; i++) qpos[i] = kpos[m - w + i];
  auto be = kvf::make_cpu_backend(1);
  for (int g = 0; g < Hk; g++) {
    std::vector<float> dense((size_t)w * G * d);
    for (int i = 0; i < w; i++)
      std::copy(q.begin() + (size_t)i * H * d + (size_t)g * G * d, q.begin() + (size_t)i * H * d + (size_t)(g + 1) * G * d,
                dense.begin() + (size_t)i * G * d);
    std::vector<float> a((size_t)mp), b((size_t)mp);
    be->snapkv_scores(q.data() + (size_t)g * G * d, (int64_t)H * d, qpos.data(), w, k.data(), kpos.data(), m, mp, G, 1,
                      d, kvf::Pooling::Max, kvf::GqaReduce::Mean, 7, a.data());
    kvf::snapkv_scores(dense.data(), qpos.data(), w, k.data(), kpos.data(), m, mp, G, 1, d, kvf::Pooling::Max,
                       kvf::GqaReduce::Mean, 7, b.data());
    EXPECT(a == b);
  }
  EXPECT_THROWS(be->snapkv_scores(q.data(), 3, qpos.data(), w, k.data(), kpos.data(), m, mp, G, 1, d,
                                  kvf::Pooling::Max, kvf::GqaReduce::Mean, 7, std::vector<float>(mp).data()));
  // kv_gather with v_out null reads the keys and leaves V alone
  kvf::KVStoreDesc kv;
  kv.dtype = kvf::DType::F32;
  kv.P = 4;
  kv.d = d;
  kv.num_pages = 3;
  std::vector<float> store(kv.page_elems() * 3);
  for (auto& x : store) x = (float)r.normal();
  kv.base = store.data();
  const std::vector<int32_t> page = {2, 0, 1}, slot = {3, 0, 2};
  std::vector<float> kg(3 * d, NAN), kr(3 * d), vr(3 * d);
  be->kv_gather(kv, page.data(), slot.data(), 3, kg.data(), nullptr);
  be->kv_read(kv, page.data(), slot.data(), 3, kr.data(), vr.data());
  EXPECT(kg == kr);
  EXPECT(kg[0] == store[2 * kv.page_elems() + 3 * d]);
}
