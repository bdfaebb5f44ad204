// Ada-KV compression math: budget validation, budgets, the pyramid schedule, scoring and allocation.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "compress.h"

using kvf::BudgetSpec;
using kvf::GqaReduce;
using kvf::Method;
using kvf::Pooling;

namespace {

// Runs stmt, expects a BadArgument error whose message contains `needle` (the field name).
#define EXPECT_BAD_BUDGET(spec, needle)                                                                  \
  do {                                                                                                   \
    bool _thrown = false;                                                                                \
    try {                                                                                                \
      kvf::validate_budget(spec);                                                                        \
    } catch (const kvf::Error& e) {                                                                      \
      _thrown = true;                                                                                    \
      EXPECT(e.kind == kvf::ErrorKind::BadArgument);                                                     \
      if (std::string(e.what()).find(needle) == std::string::npos)                                       \
        throw kvt::Failure{std::string("message '") + e.what() + "' does not name '" + (needle) + "'"}; \
    }                                                                                                    \
    EXPECT(_thrown);                                                                                     \
  } while (0)

std::vector<std::vector<int32_t>> run_allocate(const std::vector<float>& S, int32_t Hk, int32_t m, int32_t Bp,
                                               float alpha, bool ada) {
  std::vector<std::vector<int32_t>> kept;
  kvf::allocate(S.data(), Hk, m, Bp, alpha, ada, kept);
  return kept;
}

size_t total_kept(const std::vector<std::vector<int32_t>>& kept) {
  size_t s = 0;
  for (auto& k : kept) s += k.size();
  return s;
}

}  // namespace

TEST_CASE("compress: the default budget is valid and is ADA_SNAPKV with 1024 tokens per head") {
  BudgetSpec b;
  kvf::validate_budget(b);
  EXPECT(b.method == Method::AdaSnapKV);
  EXPECT_EQ(b.tokens_per_head, 1024);
  EXPECT(std::string(kvf::method_name(Method::AdaPyramidKV)) == "ADA_PYRAMIDKV");
  EXPECT(std::string(kvf::method_name(Method::Full)) == "FULL");
}

TEST_CASE("compress: rejects each bad budget with an error naming the field") {
  { BudgetSpec b; b.tokens_per_head = 32; EXPECT_BAD_BUDGET(b, "budget.tokens_per_head must be >= window + 1 = 33, got 32"); }
  { BudgetSpec b; b.tokens_per_head = 0; b.keep_ratio = 1.5f; EXPECT_BAD_BUDGET(b, "budget.keep_ratio must be in (0, 1], got 1.5"); }
  { BudgetSpec b; b.tokens_per_head = 0; b.keep_ratio = -0.25f; EXPECT_BAD_BUDGET(b, "budget.keep_ratio"); }
  { BudgetSpec b; b.tokens_per_head = 0; b.keep_ratio = NAN; EXPECT_BAD_BUDGET(b, "budget.keep_ratio"); }
  { BudgetSpec b; b.keep_ratio = 0.5f; EXPECT_BAD_BUDGET(b, "got both"); }
  { BudgetSpec b; b.tokens_per_head = 0; EXPECT_BAD_BUDGET(b, "got neither"); }
  { BudgetSpec b; b.floor_alpha = 1.01f; EXPECT_BAD_BUDGET(b, "budget.floor_alpha must be in [0, 1]"); }
  { BudgetSpec b; b.floor_alpha = -0.1f; EXPECT_BAD_BUDGET(b, "budget.floor_alpha"); }
  { BudgetSpec b; b.pool_kernel = 6; EXPECT_BAD_BUDGET(b, "budget.pool_kernel must be odd"); }
  { BudgetSpec b; b.pool_kernel = 0; EXPECT_BAD_BUDGET(b, "budget.pool_kernel"); }
  { BudgetSpec b; b.pyramid_beta = 1.0f; EXPECT_BAD_BUDGET(b, "budget.pyramid_beta must be a finite number > 1"); }
  { BudgetSpec b; b.pyramid_beta = 0.5f; EXPECT_BAD_BUDGET(b, "budget.pyramid_beta"); }
  { BudgetSpec b; b.method = (Method)9; EXPECT_BAD_BUDGET(b, "budget.method must be one of"); }
  { BudgetSpec b; b.method = (Method)0; EXPECT_BAD_BUDGET(b, "budget.method"); }
  { BudgetSpec b; b.pooling = (Pooling)3; EXPECT_BAD_BUDGET(b, "budget.pooling"); }
  { BudgetSpec b; b.gqa_reduce = (GqaReduce)0; EXPECT_BAD_BUDGET(b, "budget.gqa_reduce"); }
  { BudgetSpec b; b.window = 0; EXPECT_BAD_BUDGET(b, "budget.window must be >= 1"); }
  { BudgetSpec b; b.decode_max_tokens_per_head = -1; EXPECT_BAD_BUDGET(b, "budget.decode_max_tokens_per_head"); }
  { BudgetSpec b; b.decode_max_tokens_per_head = 20; EXPECT_BAD_BUDGET(b, "budget.decode_max_tokens_per_head"); }
}

TEST_CASE("compress: accepts boundary budgets") {
  { BudgetSpec b; b.tokens_per_head = 33; kvf::validate_budget(b); }
  { BudgetSpec b; b.tokens_per_head = 0; b.keep_ratio = 1.0f; kvf::validate_budget(b); }
  { BudgetSpec b; b.floor_alpha = 0.f; kvf::validate_budget(b); b.floor_alpha = 1.f; kvf::validate_budget(b); }
  { BudgetSpec b; b.pool_kernel = 1; kvf::validate_budget(b); }
  { BudgetSpec b; b.decode_max_tokens_per_head = 33; kvf::validate_budget(b); }
  // FULL ignores the size fields: a tiny tokens_per_head is not an error there
  { BudgetSpec b; b.method = Method::Full; b.tokens_per_head = 5; kvf::validate_budget(b); }
}

TEST_CASE("compress: budget_tokens from tokens_per_head, keep_ratio (rounded up, floored at w + 1, capped at n) and FULL") {
  BudgetSpec b;
  b.tokens_per_head = 100;
  b.window = 4;
  EXPECT_EQ(kvf::budget_tokens(b, 1000), 100);
  EXPECT_EQ(kvf::budget_tokens(b, 50), 100);
  EXPECT(!kvf::compresses(b, 100));
  EXPECT(kvf::compresses(b, 101));
  b.tokens_per_head = 0;
  b.keep_ratio = 0.25f;
  EXPECT_EQ(kvf::budget_tokens(b, 101), 26);   // ceil(25.25)
  EXPECT_EQ(kvf::budget_tokens(b, 100), 25);   // exact
  b.keep_ratio = 0.3f;                         // 0.3f * 100 = 30.0000012 in double: still means 30
  EXPECT_EQ(kvf::budget_tokens(b, 100), 30);
  b.keep_ratio = 0.1f;
  EXPECT_EQ(kvf::budget_tokens(b, 10), 5);     // ceil(1) = 1, floored at w + 1 = 5
  EXPECT_EQ(kvf::budget_tokens(b, 3), 3);      // capped at n
  EXPECT(!kvf::compresses(b, 3));
  b.keep_ratio = 1.0f;
  EXPECT(!kvf::compresses(b, 1000));           // keeping everything compresses nothing
  b.method = Method::Full;
  EXPECT_EQ(kvf::budget_tokens(b, 777), 777);
  EXPECT(!kvf::compresses(b, 777));
}

TEST_CASE("compress: uniform methods give every layer B - w") {
  BudgetSpec b;
  b.method = Method::SnapKV;
  b.tokens_per_head = 64;
  b.window = 8;
  auto v = kvf::layer_prefix_budgets(b, 5, 1000);
  EXPECT_EQ(v.size(), (size_t)5);
  for (int32_t x : v) EXPECT_EQ(x, 56);
  b.method = Method::AdaSnapKV;
  for (int32_t x : kvf::layer_prefix_budgets(b, 3, 65)) EXPECT_EQ(x, 56);
  EXPECT_THROWS(kvf::layer_prefix_budgets(b, 3, 64));  // n <= B: nothing to compress
}

TEST_CASE("compress: pyramid schedule sums exactly to L * B' and decreases from the first layer") {
  BudgetSpec b;
  b.method = Method::PyramidKV;
  b.window = 4;
  std::mt19937 rng(7);
  for (int it = 0; it < 2000; it++) {
    b.tokens_per_head = 5 + (int32_t)(rng() % 300);
    b.pyramid_beta = 1.05f + (float)(rng() % 4000) / 100.f;
    int32_t L = 1 + (int32_t)(rng() % 40);
    int32_t n = b.tokens_per_head + 1 + (int32_t)(rng() % 600);
    auto v = kvf::layer_prefix_budgets(b, L, n);
    int64_t Bp = b.tokens_per_head - b.window;
    int64_t sum = std::accumulate(v.begin(), v.end(), int64_t(0));
    EXPECT_EQ(sum, (int64_t)L * Bp);
    for (int32_t l = 0; l < L; l++) {
      EXPECT(v[l] >= 0 && v[l] <= n - b.window);
      if (l > 0) EXPECT(v[l] <= v[l - 1]);
    }
  }
}

TEST_CASE("compress: pyramid schedule worked by hand (L = 4, B' = 100, beta = 20)") {
  // min = 5, max = 195, step (195 - 5) / 3 = 63.33: targets 195, 131.67, 68.33, 5 -> floors sum 399, the one
  // remaining token goes to the largest remainder (layer 1).
  BudgetSpec b;
  b.method = Method::AdaPyramidKV;
  b.tokens_per_head = 104;
  b.window = 4;
  auto v = kvf::layer_prefix_budgets(b, 4, 10000);
  EXPECT_EQ(v[0], 195);
  EXPECT_EQ(v[1], 132);
  EXPECT_EQ(v[2], 68);
  EXPECT_EQ(v[3], 5);
  // Equal remainders go to the lower layer: B' = 3, beta = 2, L = 3: min 1.5, max 4.5 -> 4.5, 3, 1.5 -> floors
  // 4, 3, 1 (sum 8), one token left, remainders .5 at layers 0 and 2 -> layer 0.
  b.tokens_per_head = 7;
  b.pyramid_beta = 2.f;
  v = kvf::layer_prefix_budgets(b, 3, 10000);
  EXPECT_EQ(v[0], 5);
  EXPECT_EQ(v[1], 3);
  EXPECT_EQ(v[2], 1);
}

TEST_CASE("compress: pyramid cap rule caps the first layer at n - w and raises the last to keep the mean") {
  // B' = 100, beta = 20: uncapped max = 195 > n - w = 150, so max = 150, min = 2 * 100 - 150 = 50.
  // L = 3: 150, 100, 50.
  BudgetSpec b;
  b.method = Method::PyramidKV;
  b.tokens_per_head = 104;
  b.window = 4;
  auto v = kvf::layer_prefix_budgets(b, 3, 154);
  EXPECT_EQ(v[0], 150);
  EXPECT_EQ(v[1], 100);
  EXPECT_EQ(v[2], 50);
  // n = B + 1: the prefix is B' + 1, every layer between B' - 1 and B' + 1
  v = kvf::layer_prefix_budgets(b, 5, 105);
  int32_t s = 0;
  for (int32_t x : v) {
    EXPECT(x >= 99 && x <= 101);
    s += x;
  }
  EXPECT_EQ(s, 500);
  EXPECT_EQ(v[0], 101);
}

TEST_CASE("compress: allocate keeps exactly Hk * Bp for every alpha, sorted ascending per head") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> U(0.f, 1.f);
  for (int it = 0; it < 300; it++) {
    int32_t Hk = 1 + (int32_t)(rng() % 8), m = 1 + (int32_t)(rng() % 200);
    int32_t Bp = (int32_t)(rng() % (m + 1));
    std::vector<float> S((size_t)Hk * m);
    for (auto& s : S) s = U(rng) * U(rng) * U(rng);  // skewed, like attention
    for (float alpha : {0.f, 0.2f, 0.5f, 1.f}) {
      for (bool ada : {false, true}) {
        auto kept = run_allocate(S, Hk, m, Bp, alpha, ada);
        EXPECT_EQ(total_kept(kept), (size_t)Hk * Bp);
        int32_t f = ada ? (int32_t)std::floor(alpha * Bp + 1e-6) : Bp;
        for (auto& k : kept) {
          EXPECT((int32_t)k.size() >= f);
          for (size_t i = 1; i < k.size(); i++) EXPECT(k[i - 1] < k[i]);
          for (int32_t j : k) EXPECT(j >= 0 && j < m);
        }
      }
    }
  }
}

TEST_CASE("compress: allocate with alpha 0 is the plain flattened top-k, alpha 1 is uniform per-head top-k") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> U(0.f, 1.f);
  const int32_t Hk = 4, m = 60, Bp = 13;
  std::vector<float> S((size_t)Hk * m);
  for (auto& s : S) s = U(rng);  // distinct with probability ~1
  // plain flattened top-k by full sort
  std::vector<int32_t> idx((size_t)Hk * m);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return S[a] > S[b] || (S[a] == S[b] && a < b); });
  std::vector<std::vector<int32_t>> want((size_t)Hk);
  for (int32_t i = 0; i < Hk * Bp; i++) want[idx[i] / m].push_back(idx[i] % m);
  for (auto& w : want) std::sort(w.begin(), w.end());
  EXPECT(run_allocate(S, Hk, m, Bp, 0.f, true) == want);

  // per-head top-k by full sort
  std::vector<std::vector<int32_t>> uni((size_t)Hk);
  for (int32_t h = 0; h < Hk; h++) {
    std::vector<int32_t> p((size_t)m);
    std::iota(p.begin(), p.end(), 0);
    std::sort(p.begin(), p.end(), [&](int32_t a, int32_t b) { return S[h * m + a] > S[h * m + b]; });
    uni[h].assign(p.begin(), p.begin() + Bp);
    std::sort(uni[h].begin(), uni[h].end());
  }
  EXPECT(run_allocate(S, Hk, m, Bp, 1.f, true) == uni);
  EXPECT(run_allocate(S, Hk, m, Bp, 0.3f, false) == uni);
}

TEST_CASE("compress: allocate breaks ties by lower head, then lower position") {
  const int32_t Hk = 3, m = 10;
  std::vector<float> S((size_t)Hk * m, 0.5f);
  // all equal, alpha 0: the 12 slots fill head 0 (10), then head 1 positions 0 and 1
  auto kept = run_allocate(S, Hk, m, 4, 0.f, true);
  EXPECT_EQ(kept[0].size(), (size_t)10);
  EXPECT(kept[1] == std::vector<int32_t>({0, 1}));
  EXPECT(kept[2].empty());
  // alpha 0.5: f = 2 per head (positions 0, 1), then 6 remaining slots: head 0 positions 2..7
  kept = run_allocate(S, Hk, m, 4, 0.5f, true);
  EXPECT(kept[0] == std::vector<int32_t>({0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT(kept[1] == std::vector<int32_t>({0, 1}));
  EXPECT(kept[2] == std::vector<int32_t>({0, 1}));
  // uniform: lowest positions per head
  kept = run_allocate(S, Hk, m, 3, 0.f, false);
  for (auto& k : kept) EXPECT(k == std::vector<int32_t>({0, 1, 2}));
  // -0 ties with +0
  std::vector<float> Z = {0.f, -0.f, 0.f, 1.f};
  kept = run_allocate(Z, 1, 4, 2, 0.f, false);
  EXPECT(kept[0] == std::vector<int32_t>({0, 3}));
}

TEST_CASE("compress: allocate worked by hand on 2 heads") {
  // head 0: 9 1 8 2 ; head 1: 7 6 5 0 ; Bp = 2, alpha 0.5 -> f = 1
  // safeguard: head 0 keeps pos 0 (9), head 1 keeps pos 0 (7). Remaining 2 slots over {1,8,2 | 6,5,0}: 8 (h0 p2),
  // 6 (h1 p1). alpha 0: flattened top 4 of all: 9, 8, 7, 6 -> same. Uniform: h0 {0,2}, h1 {0,1}.
  std::vector<float> S = {9, 1, 8, 2, 7, 6, 5, 0};
  auto k = run_allocate(S, 2, 4, 2, 0.5f, true);
  EXPECT(k[0] == std::vector<int32_t>({0, 2}));
  EXPECT(k[1] == std::vector<int32_t>({0, 1}));
  // head 0: 9 8 7 6 ; head 1: 1 0 0 5 ; Bp = 2: alpha 0 gives head 0 all four; alpha 0.5 gives head 1 its 5.
  S = {9, 8, 7, 6, 1, 0, 0, 5};
  k = run_allocate(S, 2, 4, 2, 0.f, true);
  EXPECT(k[0] == std::vector<int32_t>({0, 1, 2, 3}));
  EXPECT(k[1].empty());
  k = run_allocate(S, 2, 4, 2, 0.5f, true);
  EXPECT(k[0] == std::vector<int32_t>({0, 1, 2}));
  EXPECT(k[1] == std::vector<int32_t>({3}));
}

TEST_CASE("compress: allocate rejects bad arguments") {
  std::vector<float> S = {1, 2, 3, 4};
  std::vector<std::vector<int32_t>> kept;
  EXPECT_THROWS(kvf::allocate(S.data(), 1, 4, 5, 0.2f, true, kept));
  EXPECT_THROWS(kvf::allocate(S.data(), 1, 4, 2, 1.5f, true, kept));
  S[2] = NAN;
  EXPECT_THROWS(kvf::allocate(S.data(), 1, 4, 2, 0.2f, true, kept));
}

TEST_CASE("compress: snapkv scores of a single head equal the window-mean softmax, max- and avg-pooled") {
  // d = 1, keys 0..4 with k = 0, so every visible key gets the same logit: query at position 4 sees 5 keys (1/5
  // each), query at position 3 sees 4 (1/4 each). Mean over w = 2: keys 0..3 get (1/5 + 1/4)/2 = 0.225, key 4
  // gets 0.1. m_prefix = 3 (keys 0..2 -> all 0.225). Pooling of a constant: max 0.225; avg with kernel 3 divides
  // edge sums of two values by 3.
  std::vector<float> q = {1.f, 1.f}, k(5, 0.f), S(3);
  std::vector<int32_t> qpos = {3, 4}, kpos = {0, 1, 2, 3, 4};
  kvf::snapkv_scores(q.data(), qpos.data(), 2, k.data(), kpos.data(), 5, 3, 1, 1, 1, Pooling::Max, GqaReduce::Mean, 3,
                     S.data());
  for (float s : S) EXPECT_NEAR(s, 0.225, 1e-7);
  kvf::snapkv_scores(q.data(), qpos.data(), 2, k.data(), kpos.data(), 5, 3, 1, 1, 1, Pooling::Avg, GqaReduce::Mean, 3,
                     S.data());
  EXPECT_NEAR(S[0], 0.225 * 2 / 3, 1e-7);
  EXPECT_NEAR(S[1], 0.225, 1e-7);
  EXPECT_NEAR(S[2], 0.225 * 2 / 3, 1e-7);
}

TEST_CASE("compress: snapkv scores reduce GQA groups by mean or max before pooling") {
  // H = 2 query heads on Hk = 1 KV head, d = 1, w = 1, 2 keys (k = 0, 1), query position 1 sees both.
  // head 0 q = 0: softmax (1/2, 1/2); head 1 q = ln 3 * sqrt(1): logits 0, ln 3 -> (1/4, 3/4).
  // m_prefix = 2, kernel 1: mean -> (3/8, 5/8), max -> (1/2, 3/4).
  std::vector<float> q = {0.f, std::log(3.f)}, k = {0.f, 1.f}, S(2);
  std::vector<int32_t> qpos = {1}, kpos = {0, 1};
  kvf::snapkv_scores(q.data(), qpos.data(), 1, k.data(), kpos.data(), 2, 2, 2, 1, 1, Pooling::Max, GqaReduce::Mean, 1,
                     S.data());
  EXPECT_NEAR(S[0], 0.375, 1e-6);
  EXPECT_NEAR(S[1], 0.625, 1e-6);
  kvf::snapkv_scores(q.data(), qpos.data(), 1, k.data(), kpos.data(), 2, 2, 2, 1, 1, Pooling::Max, GqaReduce::Max, 1,
                     S.data());
  EXPECT_NEAR(S[0], 0.5, 1e-6);
  EXPECT_NEAR(S[1], 0.75, 1e-6);
}

TEST_CASE("compress: snapkv scores are deterministic and a timing at n = 4096") {
  const int32_t n = 4096, w = 32, H = 32, Hk = 8, d = 128, mp = n - w;
  std::mt19937 rng(3);
  std::normal_distribution<float> N(0.f, 1.f);
  std::vector<float> q((size_t)w * H * d), k((size_t)n * Hk * d), S1((size_t)Hk * mp), S2((size_t)Hk * mp);
  for (auto& x : q) x = N(rng);
  for (auto& x : k) x = N(rng);
  std::vector<int32_t> qpos(w), kpos(n);
  for (int32_t i = 0; i < w; i++) qpos[i] = n - w + i;
  for (int32_t j = 0; j < n; j++) kpos[j] = j;
  auto t0 = std::chrono::steady_clock::now();
  kvf::snapkv_scores(q.data(), qpos.data(), w, k.data(), kpos.data(), n, mp, H, Hk, d, Pooling::Max, GqaReduce::Mean, 7,
                     S1.data());
  auto t1 = std::chrono::steady_clock::now();
  kvf::snapkv_scores(q.data(), qpos.data(), w, k.data(), kpos.data(), n, mp, H, Hk, d, Pooling::Max, GqaReduce::Mean, 7,
                     S2.data());
  EXPECT(S1 == S2);
  std::vector<std::vector<int32_t>> kept;
  auto t2 = std::chrono::steady_clock::now();
  kvf::allocate(S1.data(), Hk, mp, 1024 - w, 0.2f, true, kept);
  auto t3 = std::chrono::steady_clock::now();
  EXPECT_EQ(total_kept(kept), (size_t)Hk * (1024 - w));
  std::printf("     snapkv_scores n=%d H=%d Hk=%d d=%d: %.1f ms; allocate: %.2f ms\n", n, H, Hk, d,
              std::chrono::duration<double, std::milli>(t1 - t0).count(),
              std::chrono::duration<double, std::milli>(t3 - t2).count());
}
