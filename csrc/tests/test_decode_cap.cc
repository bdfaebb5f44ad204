#include <cmath>
#include <cstring>
#include <map>

#include "check.h"
#include "decode_cap.h"
#include "engine.h"
#include "synth_weights.h"

using namespace kvf;

namespace {
std::vector<int32_t> toks(int n, uint32_t seed, int V) {
  std::vector<int32_t> t(n);
  uint32_t x = 2463534242u ^ (seed * 2654435761u);
  for (auto& v : t) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    v = (int32_t)(x % (uint32_t)V);
  }
  return t;
}
BudgetSpec budget(Method m, int B, int D) {
  BudgetSpec b;
  b.method = m;
  b.tokens_per_head = m == Method::Full ? 0 : B;
  b.window = 8;
  b.decode_max_tokens_per_head = D;
  return b;
}
SamplingSpec sampling(float temp, uint64_t seed, int max_new) {
  SamplingSpec s;
  s.temperature = temp;
  s.seed = seed;
  s.max_new_tokens = max_new;
  s.ignore_eos = true;
  return s;
}
std::vector<int32_t> generate(Engine& e, const std::vector<int32_t>& prompt, const SamplingSpec& s, const BudgetSpec& b,
                              const std::vector<int32_t>& forced, int64_t* keep_id = nullptr) {
  int64_t id = e.add_sequence(prompt, s, b, forced);
  std::vector<int32_t> out;
  for (;;) {
    auto r = e.step({{id, 0}}, false);
    if (r.seqs[0].token >= 0) out.push_back(r.seqs[0].token);
    if (r.seqs[0].finish != Finish::None) break;
  }
  if (keep_id) *keep_id = id;
  else e.release(id);
  return out;
}
}  // namespace

TEST_CASE("decode cap: allocate_ragged keeps exact totals over heads of different lengths") {
  std::vector<std::vector<float>> S = {{5, 1, 4}, {3, 9, 2, 8, 7}, {6}};
  std::vector<std::vector<int32_t>> kept;
  allocate_ragged(S, 2, 0.5f, true, kept);  // f = 1 each, then 3 more by score: 9? no (taken) -> 8, 7, 6? taken
  // safeguard: head0 {0 (5)}, head1 {1 (9)}, head2 {0 (6)}; remaining 6 - 3 = 3: 8 (h1 j3), 7 (h1 j4), 4 (h0 j2)
  EXPECT_EQ((int)kept[0].size(), 2);
  EXPECT_EQ(kept[0][0], 0);
  EXPECT_EQ(kept[0][1], 2);
  EXPECT_EQ((int)kept[1].size(), 3);
  EXPECT_EQ(kept[1][0], 1);
  EXPECT_EQ(kept[1][1], 3);
  EXPECT_EQ(kept[1][2], 4);
  EXPECT_EQ((int)kept[2].size(), 1);
  allocate_ragged(S, 2, 0.5f, false, kept);  // uniform: top 2 each (head 2 has only 1)
  EXPECT_EQ((int)(kept[0].size() + kept[1].size() + kept[2].size()), 5);
}

TEST_CASE("decode cap: plan_compaction moves tail tokens into holes and frees whole pages") {
  std::vector<int32_t> pages = {10, 11, 12};
  std::vector<int32_t> pos;
  for (int i = 0; i < 10; i++) pos.push_back(100 + i);
  auto pl = plan_compaction(pages, pos, {1, 2, 7, 9}, 4);
  EXPECT_EQ((int)pl.new_pages.size(), 1);
  EXPECT_EQ((int)pl.free_pages.size(), 2);
  EXPECT_EQ(pl.new_pos[0], 101);
  EXPECT_EQ(pl.new_pos[3], 109);
  EXPECT_EQ((int)pl.src_page.size(), 4);  // every kept token moves down by at least one
  EXPECT_EQ(pl.src_page[2], 11);          // index 7 -> page 11 slot 3
  EXPECT_EQ(pl.src_slot[2], 3);
  EXPECT_EQ(pl.dst_page[2], 10);
  EXPECT_EQ(pl.dst_slot[2], 2);
}

TEST_CASE("decode cap: no layer's mean per-head length exceeds D + P, pages stay bounded and return") {
  auto model = make_random_model(tiny_config(), DType::F32, 11);
  EngineOptions o;
  o.num_pages = 4096;
  o.kv_dtype = DType::F32;
  Engine e(model, o);
  for (Method m : {Method::SnapKV, Method::AdaSnapKV, Method::PyramidKV, Method::AdaPyramidKV}) {
    const int D = 40, P = 16;
    int64_t id = e.add_sequence(toks(60, 3, 512), sampling(0, 0, 120), budget(m, 32, D), {});
    int max_pages = 0;
    for (int st = 0; st < 120; st++) {
      auto r = e.step({{id, 0}}, false);
      EXPECT(!r.seqs[0].out_of_pages);
      for (int l = 0; l < 2; l++) {
        int sum = 0;
        for (int g = 0; g < 2; g++) sum += (int)e.head_positions(id, l, g).size();
        EXPECT(sum <= (D + P) * 2);
      }
      max_pages = std::max(max_pages, e.seq_stats(id).pages);
    }
    SeqStats st = e.seq_stats(id);
    EXPECT(st.recompressions > 0);
    // each layer holds a mean of at most D + P tokens per head: at most ceil((D+P)/P) + 1 pages per head
    EXPECT(max_pages <= 2 * 2 * ((D + P + P - 1) / P + 1));
    EXPECT_EQ(st.positions, 60 + 119);
    e.release(id);
    EXPECT_EQ(e.pool_stats().free_pages, e.pool_stats().total_pages);
  }
}

TEST_CASE("decode cap: FULL and D = 0 are unchanged by the cap") {
  auto model = make_random_model(tiny_config(), DType::F32, 12);
  EngineOptions o;
  o.num_pages = 4096;
  Engine e(model, o);
  auto p = toks(30, 4, 512);
  auto a = generate(e, p, sampling(0, 0, 40), budget(Method::Full, 0, 0), {});
  auto b = generate(e, p, sampling(0, 0, 40), budget(Method::Full, 0, 20), {});
  EXPECT(a == b);
  int64_t id;
  generate(e, p, sampling(0, 0, 40), budget(Method::AdaSnapKV, 16, 0), {}, &id);
  EXPECT_EQ(e.seq_stats(id).recompressions, 0);
  e.release(id);
}

TEST_CASE("decode cap: compaction keeps each surviving token's K, V and position; attention over it is exact") {
  auto model = make_random_model(tiny_config(), DType::F32, 13);
  EngineOptions o;
  o.num_pages = 4096;
  o.kv_dtype = DType::F32;
  Engine e(model, o);
  const int D = 24, P = 16;
  int64_t id = e.add_sequence(toks(20, 5, 512), sampling(0, 0, 200), budget(Method::AdaSnapKV, 16, D), {});
  e.step({{id, 0}}, false);
  // decode until just before the first recompression, snapshotting (pos -> K, V) of layer 1, head 0
  std::map<int32_t, std::pair<std::vector<float>, std::vector<float>>> snap;
  int rec0 = e.seq_stats(id).recompressions;
  for (int st = 0; st < 100 && e.seq_stats(id).recompressions == rec0; st++) {
    std::vector<float> k, v;
    e.head_kv(id, 1, 0, k, v);
    auto pos = e.head_positions(id, 1, 0);
    snap.clear();
    for (size_t i = 0; i < pos.size(); i++)
      snap[pos[i]] = {std::vector<float>(k.begin() + i * 16, k.begin() + (i + 1) * 16),
                      std::vector<float>(v.begin() + i * 16, v.begin() + (i + 1) * 16)};
    e.step({{id, 0}}, false);
  }
  EXPECT(e.seq_stats(id).recompressions > rec0);
  std::vector<float> k, v;
  e.head_kv(id, 1, 0, k, v);
  auto pos = e.head_positions(id, 1, 0);
  EXPECT(pos.size() < snap.size() + 1);
  const int32_t newest = pos.back();
  for (size_t i = 0; i < pos.size(); i++) {
    if (pos[i] == newest) continue;  // appended by the step that recompressed
    EXPECT(i == 0 || pos[i] > pos[i - 1]);
    auto it = snap.find(pos[i]);
    EXPECT(it != snap.end());
    EXPECT(std::memcmp(it->second.first.data(), k.data() + i * 16, 16 * 4) == 0);
    EXPECT(std::memcmp(it->second.second.data(), v.data() + i * 16, 16 * 4) == 0);
  }
  // attention through the paged, compacted cache vs a dense computation over the kept set
  std::vector<float> q(4 * 16);
  for (size_t i = 0; i < q.size(); i++) q[i] = std::sin(0.37f * i);
  const int len = (int)pos.size();
  std::vector<float> dense(2 * 16, 0.f);  // query heads 0, 1 share KV head 0
  for (int r = 0; r < 2; r++) {
    std::vector<double> s(len);
    double mx = -1e30, sum = 0;
    for (int j = 0; j < len; j++) {
      double d = 0;
      for (int t = 0; t < 16; t++) d += (double)q[r * 16 + t] * k[j * 16 + t];
      s[j] = d / 4.0;
      mx = std::max(mx, s[j]);
    }
    for (int j = 0; j < len; j++) sum += (s[j] = std::exp(s[j] - mx));
    for (int j = 0; j < len; j++)
      for (int t = 0; t < 16; t++) dense[r * 16 + t] += (float)(s[j] / sum) * v[j * 16 + t];
  }
  (void)P;
  // the engine's paged decode attention over the compacted head (query heads 0 and 1 read KV head 0)
  std::vector<float> paged(4 * 16, 0.f);
  auto pages0 = e.head_pages(id, 1, 0), pages1 = e.head_pages(id, 1, 1);
  std::vector<PagedHead> heads = {{pages0.data(), len}, {pages1.data(), (int32_t)e.head_positions(id, 1, 1).size()}};
  e.backend().attn_decode(paged.data(), q.data(), 1, 4, 2, heads.data(), e.kv_store());
  for (int t = 0; t < 32; t++) EXPECT_NEAR(paged[t], dense[t], 1e-5);
  e.release(id);
  EXPECT_EQ(e.pool_stats().free_pages, e.pool_stats().total_pages);
}

TEST_CASE("resume: every method, greedy and seeded sampling, continues with exactly the uninterrupted tokens") {
  auto model = make_random_model(tiny_config(), DType::F16, 14);
  EngineOptions o;
  o.num_pages = 4096;
  Engine e(model, o);
  auto p = toks(48, 6, 512);
  for (Method m : {Method::Full, Method::SnapKV, Method::PyramidKV, Method::AdaSnapKV, Method::AdaPyramidKV})
    for (float temp : {0.f, 0.9f}) {
      auto b = budget(m, 24, m == Method::Full ? 0 : 30);
      auto s = sampling(temp, 1234567, 60);
      auto full_run = generate(e, p, s, b, {});
      EXPECT_EQ((int)full_run.size(), 60);
      for (int k : {1, 17, 45}) {
        std::vector<int32_t> forced(full_run.begin(), full_run.begin() + k);
        auto resumed = generate(e, p, s, b, forced);
        EXPECT(resumed == full_run);
      }
    }
  EXPECT_EQ(e.pool_stats().free_pages, e.pool_stats().total_pages);
}
