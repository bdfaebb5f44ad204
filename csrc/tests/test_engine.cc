#include <cstring>

#include "check.h"
#include "engine.h"
#include "synth_weights.h"

using namespace kvf;

namespace {
std::vector<int32_t> tokens(int n, int seed, int V) {
  std::vector<int32_t> t(n);
  uint32_t x = 2463534242u + seed;
  for (auto& v : t) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    v = (int32_t)(x % (uint32_t)V);
  }
  return t;
}
BudgetSpec full() { BudgetSpec b; b.method = Method::Full; b.tokens_per_head = 0; return b; }

// Runs prompts to completion of `steps` decode steps, alone or together, returning each step's logits.
std::vector<std::vector<std::vector<float>>> run(Engine& e, const std::vector<std::vector<int32_t>>& prompts,
                                                 bool batched, int steps, const BudgetSpec& b) {
  SamplingSpec s;
  s.temperature = 0;
  s.max_new_tokens = steps + 1;
  s.ignore_eos = true;
  std::vector<std::vector<std::vector<float>>> out(prompts.size());
  auto drive = [&](std::vector<size_t> which) {
    std::vector<int64_t> ids;
    for (size_t i : which) ids.push_back(e.add_sequence(prompts[i], s, b, {}));
    for (int st = 0; st <= steps; st++) {
      std::vector<StepSeq> batch;
      for (int64_t id : ids) batch.push_back({id, 0});
      StepResult r = e.step(batch, true);
      for (size_t j = 0; j < which.size(); j++)
        for (auto& sr : r.seqs)
          if (sr.id == ids[j]) out[which[j]].push_back(sr.logits);
    }
    for (int64_t id : ids) e.release(id);
  };
  if (batched) {
    std::vector<size_t> all;
    for (size_t i = 0; i < prompts.size(); i++) all.push_back(i);
    drive(all);
  } else {
    for (size_t i = 0; i < prompts.size(); i++) drive({i});
  }
  return out;
}
}  // namespace

TEST_CASE("engine: batched and solo runs give bit-identical logits (f16 weights, f16 pages)") {
  auto model = make_random_model(tiny_config(), DType::F16, 7);
  EngineOptions o;
  o.num_pages = 4096;
  Engine e(model, o);
  std::vector<std::vector<int32_t>> prompts = {tokens(37, 1, 512), tokens(5, 2, 512), tokens(70, 3, 512)};
  auto solo = run(e, prompts, false, 6, full());
  auto both = run(e, prompts, true, 6, full());
  for (size_t i = 0; i < prompts.size(); i++) {
    EXPECT_EQ(solo[i].size(), both[i].size());
    for (size_t s = 0; s < solo[i].size(); s++)
      EXPECT(std::memcmp(solo[i][s].data(), both[i][s].data(), solo[i][s].size() * sizeof(float)) == 0);
  }
  EXPECT_EQ(e.pool_stats().free_pages, e.pool_stats().total_pages);
}

TEST_CASE("engine: a prefill split by layers across steps gives the same logits as one step") {
  auto model = make_random_model(tiny_config(), DType::F32, 3);
  EngineOptions o;
  o.num_pages = 1024;
  o.kv_dtype = DType::F32;
  Engine e(model, o);
  SamplingSpec s;
  s.temperature = 0;
  auto p = tokens(50, 9, 512);
  int64_t a = e.add_sequence(p, s, full(), {});
  auto ra = e.step({{a, 0}}, true);
  int64_t b = e.add_sequence(p, s, full(), {});
  auto r1 = e.step({{b, 1}}, true);
  EXPECT_EQ(r1.seqs[0].token, -1);
  EXPECT(!r1.seqs[0].prefill_done);
  auto r2 = e.step({{b, 1}}, true);
  EXPECT(r2.seqs[0].prefill_done);
  EXPECT(std::memcmp(ra.seqs[0].logits.data(), r2.seqs[0].logits.data(), ra.seqs[0].logits.size() * 4) == 0);
  e.release(a);
  e.release(b);
  EXPECT_EQ(e.pool_stats().free_pages, e.pool_stats().total_pages);
}

TEST_CASE("engine: FULL holds every position in every head; pages = sum ceil(len / P)") {
  auto model = make_random_model(tiny_config(), DType::F32, 4);
  EngineOptions o;
  o.num_pages = 256;
  Engine e(model, o);
  SamplingSpec s;
  s.temperature = 0;
  s.ignore_eos = true;
  int64_t id = e.add_sequence(tokens(33, 1, 512), s, full(), {});
  e.step({{id, 0}}, false);
  e.step({{id, 0}}, false);  // one decode: 34 positions
  SeqStats st = e.seq_stats(id);
  EXPECT_EQ(st.positions, 34);
  EXPECT_EQ((int)st.kept_tokens, 2 * 2 * 34);
  EXPECT_EQ((int)st.full_tokens, 2 * 2 * 34);
  EXPECT_EQ(st.min_head_tokens, 34);
  EXPECT_EQ(st.pages, 2 * 2 * 3);
  EXPECT_EQ(e.pool_stats().free_pages, 256 - 12);
  e.release(id);
  EXPECT_EQ(e.pool_stats().free_pages, 256);
}

TEST_CASE("engine: out of pages is reported, not thrown; the pool stays consistent") {
  auto model = make_random_model(tiny_config(), DType::F32, 5);
  EngineOptions o;
  o.num_pages = 8;  // 2 layers x 2 heads: a 64-token prompt needs 16 pages
  Engine e(model, o);
  SamplingSpec s;
  int64_t id = e.add_sequence(tokens(64, 1, 512), s, full(), {});
  auto r = e.step({{id, 0}}, false);
  EXPECT(r.seqs[0].out_of_pages);
  EXPECT_EQ(e.pool_stats().free_pages, 8);
  e.release(id);
  EXPECT_EQ(e.pool_stats().free_pages, 8);
}

TEST_CASE("engine: bad arguments name the problem") {
  auto model = make_random_model(tiny_config(), DType::F32, 5);
  EngineOptions o;
  o.num_pages = 8;
  Engine e(model, o);
  SamplingSpec s;
  auto expect_bad = [&](std::vector<int32_t> p, SamplingSpec sp, const char* needle) {
    bool ok = false;
    try { e.add_sequence(p, sp, full(), {}); } catch (const Error& err) {
      ok = err.kind == ErrorKind::BadArgument && std::strstr(err.what(), needle) != nullptr;
    }
    EXPECT(ok);
  };
  expect_bad({}, s, "prompt is empty");
  expect_bad({1, 999}, s, "outside the vocabulary");
  SamplingSpec t = s;
  t.temperature = -1;
  expect_bad({1}, t, "temperature");
  t = s;
  t.top_p = 0;
  expect_bad({1}, t, "top_p");
  t = s;
  t.max_new_tokens = 9000;
  expect_bad({1}, t, "exceeds the model's context");
}
