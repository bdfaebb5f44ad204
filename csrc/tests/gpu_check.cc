// The GPU check (STYLE.md 3): every CUDA op against the CPU op (the reference) on the same seeded random inputs,
// compared by normalised error NMSE = sum((cuda - cpu)^2) / sum(cpu^2) with a threshold per op; then timings
// (matrix products in TFLOP/s, decode attention in GB/s against a device-to-device copy measured in the same run)
// and an end-to-end engine run on both backends. Makes its own inputs and weights (no files). CUDA outputs are
// poisoned with NaN before every op, so an op that writes nothing fails. Exit code 0 only when every row passes.
//
// Usage: kvf_gpu_check [--no-timing] [--no-e2e-bench]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "compress.h"
#include "cuda/cuda_backend.h"
#include "device.h"
#include "engine.h"
#include "ops.h"
#include "synth_weights.h"

using namespace kvf;

namespace {

// ---- seeded inputs ----
// the seeded stream of synth_weights.h; normal() widened to float where inputs are made
using Rng = SeededRng;

std::vector<float> randn(Rng& r, size_t n, float scale = 1.f) {
  std::vector<float> v(n);
  for (auto& x : v) x = (float)r.normal() * scale;
  return v;
}

// ---- the result table ----
struct Row {
  std::string op, shape;
  double err, thr;
  bool pass;
  std::string note;
};
std::vector<Row> g_rows;

double nmse(const float* a, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(a[i])) return INFINITY;  // NaN poison left in place, or an overflow
    const double e = (double)a[i] - ref[i];
    num += e * e;
    den += (double)ref[i] * ref[i];
  }
  return den > 0 ? num / den : (num == 0 ? 0 : INFINITY);
}

void record(const std::string& op, const std::string& shape, double err, double thr, const std::string& note = "") {
  const bool pass = err <= thr;  // NaN/inf fail
  g_rows.push_back({op, shape, err, thr, pass, note});
  std::printf("%-26s %-44s %11.3e %10.1e  %s %s\n", op.c_str(), shape.c_str(), err, thr, pass ? "PASS" : "FAIL",
              note.c_str());
  std::fflush(stdout);
}
void record_bool(const std::string& op, const std::string& shape, bool ok, const std::string& note) {
  g_rows.push_back({op, shape, ok ? 0.0 : 1.0, 0.0, ok, note});
  std::printf("%-26s %-44s %11s %10s  %s %s\n", op.c_str(), shape.c_str(), ok ? "identical" : "DIFFERENT", "exact",
              ok ? "PASS" : "FAIL", note.c_str());
  std::fflush(stdout);
}

std::string shape_str(std::initializer_list<std::pair<const char*, long long>> kv) {
  std::string s;
  for (auto& p : kv) s += (s.empty() ? "" : " ") + std::string(p.first) + "=" + std::to_string(p.second);
  return s;
}

// Device buffers of one backend, freed at scope exit; outputs start as NaN.
struct Dev {
  Backend& be;
  std::vector<void*> ptrs;
  explicit Dev(Backend& b) : be(b) {}
  ~Dev() {
    for (void* p : ptrs) be.free(p);
  }
  void* raw(size_t bytes) {
    void* p = be.alloc(bytes);
    ptrs.push_back(p);
    return p;
  }
  float* up(const std::vector<float>& h) {
    float* p = static_cast<float*>(raw(h.size() * sizeof(float)));
    be.upload(p, h.data(), h.size() * sizeof(float));
    return p;
  }
  float* poisoned(size_t n) {
    std::vector<float> nan(n, std::numeric_limits<float>::quiet_NaN());
    return up(nan);
  }
  std::vector<float> down(const float* p, size_t n) {
    std::vector<float> h(n);
    be.download(h.data(), p, n * sizeof(float));
    return h;
  }
};

// Host weight storage: the CUDA backend keys its device copy of a weight by host address, so every weight handed
// to it stays alive (and unchanged) until the end of the run.
std::deque<std::vector<uint8_t>> g_weight_store;
Weight make_weight(Rng& r, int rows, int cols, DType dt, float scale) {
  g_weight_store.emplace_back((size_t)rows * cols * dtype_size(dt));
  uint8_t* p = g_weight_store.back().data();
  for (size_t i = 0; i < (size_t)rows * cols; i++) {
    const float v = (float)r.normal() * scale;
    if (dt == DType::F32) std::memcpy(p + 4 * i, &v, 4);
    else {
      const uint16_t h = dt == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
      std::memcpy(p + 2 * i, &h, 2);
    }
  }
  Weight w;
  w.data = p;
  w.dtype = dt;
  w.rows = rows;
  w.cols = cols;
  return w;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ============================================================================================================
// Op checks
// ============================================================================================================
void check_embed(Backend& cpu, Backend& gpu, Rng& r) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    const int V = 1000, D = 320, T = 37;
    Weight emb = make_weight(r, V, D, dt, 1.f);
    std::vector<int32_t> ids(T);
    for (auto& x : ids) x = r.below(V);
    std::vector<float> ref((size_t)T * D);
    cpu.embed(ref.data(), ids.data(), T, emb);
    Dev g(gpu);
    float* out = g.poisoned(ref.size());
    gpu.embed(out, ids.data(), T, emb);
    auto got = g.down(out, ref.size());
    record("embed", std::string(dtype_name(dt)) + " " + shape_str({{"V", V}, {"D", D}, {"T", T}}),
           nmse(got.data(), ref.data(), ref.size()), 0.0);
  }
}

void check_rmsnorm(Backend& cpu, Backend& gpu, Rng& r) {
  for (int D : {4096, 100}) {
    const int T = 33;
    auto x = randn(r, (size_t)T * D, 3.f), w = randn(r, D, 0.2f);
    for (auto& v : w) v += 1.f;
    std::vector<float> ref(x.size());
    cpu.rmsnorm(ref.data(), x.data(), w.data(), T, D, 1e-5f);
    Dev g(gpu);
    float* out = g.poisoned(x.size());
    gpu.rmsnorm(out, g.up(x), g.up(w), T, D, 1e-5f);
    auto got = g.down(out, x.size());
    record("rmsnorm", shape_str({{"T", T}, {"D", D}}), nmse(got.data(), ref.data(), ref.size()), 1e-12);
  }
}

// Thresholds: split activations carry ~22 (F16) / ~16 (BF16) bits, so what differs from the CPU is the summation
// order and rounding inside the tensor cores (expected NMSE 1e-12..1e-10) and, for BF16, the lo part's rounding
// (~2^-17 relative, NMSE ~2e-11); a single rounding of the activations to F16 / BF16 gives NMSE ~ (2^-11)^2 / 3 = 8e-8
// and (2^-8)^2 / 3 = 5e-6.
void check_matmul(Backend& cpu, Backend& gpu_split, Backend& gpu_plain, Rng& r) {
  struct Case {
    DType dt;
    int T, K, N;
    bool bias;
  };
  const std::vector<Case> cases = {{DType::F16, 1, 4096, 1024, false}, {DType::F16, 77, 1024, 1000, true},
                                   {DType::F16, 300, 768, 2304, false}, {DType::BF16, 1, 4096, 1024, false},
                                   {DType::BF16, 77, 1024, 1000, true}, {DType::BF16, 300, 768, 2304, false},
                                   {DType::F32, 77, 1024, 1000, true},  {DType::F16, 45, 100, 260, true}};
  for (const Case& c : cases) {
    Weight W = make_weight(r, c.N, c.K, c.dt, 1.f / std::sqrt((float)c.K));
    auto x = randn(r, (size_t)c.T * c.K);
    std::vector<float> bias = c.bias ? randn(r, c.N) : std::vector<float>();
    std::vector<float> ref((size_t)c.T * c.N);
    cpu.matmul(ref.data(), x.data(), c.T, W, c.bias ? bias.data() : nullptr);
    const bool tc = c.dt != DType::F32 && c.K % 8 == 0;
    for (int mode = 0; mode < (tc ? 2 : 1); mode++) {
      Backend& gpu = mode == 0 ? gpu_split : gpu_plain;
      Dev g(gpu);
      float* out = g.poisoned(ref.size());
      gpu.matmul(out, g.up(x), c.T, W, c.bias ? g.up(bias) : nullptr);
      auto got = g.down(out, ref.size());
      double thr;
      std::string path;
      if (!tc) {
        thr = 1e-10;
        path = "simt fp32";
      } else if (mode == 0) {
        thr = 1e-8;  // >= 8x below a single F16 rounding; leaves room for the tensor cores' accumulation rounding
        path = "mma split";
      } else {
        thr = c.dt == DType::F16 ? 1e-6 : 5e-5;
        path = "mma plain";
      }
      record("matmul " + path,
             std::string(dtype_name(c.dt)) + " " + shape_str({{"T", c.T}, {"K", c.K}, {"N", c.N}}) +
                 (c.bias ? " +bias" : ""),
             nmse(got.data(), ref.data(), ref.size()), thr);
    }
  }
}

// Batch invariance: rows computed with T = 1, 9, 64 (small tile), 65 (large tile) and from the middle of the batch
// must equal the same rows of a T = 150 product bit for bit.
void check_matmul_invariance(Backend& gpu, Rng& r, DType dt, const char* label) {
  const int T = 150, K = 1024, N = 640;
  Weight W = make_weight(r, N, K, dt, 1.f / 32.f);
  auto x = randn(r, (size_t)T * K);
  Dev g(gpu);
  float* xd = g.up(x);
  float* full = g.poisoned((size_t)T * N);
  gpu.matmul(full, xd, T, W, nullptr);
  auto ref = g.down(full, (size_t)T * N);
  bool ok = true;
  std::string bad;
  for (auto [r0, t] : std::vector<std::pair<int, int>>{{0, 1}, {0, 9}, {0, 64}, {0, 65}, {100, 10}, {149, 1}}) {
    float* part = g.poisoned((size_t)t * N);
    gpu.matmul(part, xd + (size_t)r0 * K, t, W, nullptr);
    auto got = g.down(part, (size_t)t * N);
    if (std::memcmp(got.data(), ref.data() + (size_t)r0 * N, got.size() * sizeof(float)) != 0) {
      ok = false;
      bad += " rows[" + std::to_string(r0) + ",+" + std::to_string(t) + ")";
    }
  }
  record_bool(std::string("matmul batch invariance"), std::string(dtype_name(dt)) + " " + label +
                                                          " T=1,9,64,65,10 vs T=150",
              ok, bad);
}

void check_rope(Backend& cpu, Backend& gpu, Rng& r) {
  struct Case {
    int d, nh;
    double theta;
  };
  for (const Case& c : {Case{128, 8, 500000.0}, Case{16, 4, 10000.0}, Case{64, 12, 1e6}}) {
    ModelConfig cfg;
    cfg.d = c.d;
    cfg.rope_theta = c.theta;
    RopeParams rp = make_rope(cfg);
    const int T = 50;
    std::vector<int32_t> pos(T);
    for (auto& p : pos) p = r.below(32768);
    auto x = randn(r, (size_t)T * c.nh * c.d);
    auto ref = x;
    cpu.rope(ref.data(), pos.data(), T, c.nh, rp);
    Dev g(gpu);
    float* xd = g.up(x);
    gpu.rope(xd, pos.data(), T, c.nh, rp);
    auto got = g.down(xd, x.size());
    record("rope", shape_str({{"T", T}, {"nh", c.nh}, {"d", c.d}}) + " pos<32768", nmse(got.data(), ref.data(), ref.size()),
           1e-12);
    // the backend keeps the last positions on the device: the same positions again (k after q), then new ones
    // with one position changed, must each rotate by their own positions
    for (int round = 0; round < 2; round++) {
      if (round == 1) pos[T / 2] += 7;
      auto y = randn(r, (size_t)T * c.nh * c.d);
      auto yref = y;
      cpu.rope(yref.data(), pos.data(), T, c.nh, rp);
      float* yd = g.up(y);
      gpu.rope(yd, pos.data(), T, c.nh, rp);
      auto ygot = g.down(yd, y.size());
      record("rope", shape_str({{"T", T}, {"nh", c.nh}, {"d", c.d}}) + (round == 0 ? " same pos again" : " one pos changed"),
             nmse(ygot.data(), yref.data(), yref.size()), 1e-12);
    }
  }
}

void check_elementwise(Backend& cpu, Backend& gpu, Rng& r) {
  const int64_t n = (1 << 20) + 3;
  auto a = randn(r, n, 4.f), b = randn(r, n);
  {
    std::vector<float> ref(n);
    cpu.silu_mul(ref.data(), a.data(), b.data(), n);
    Dev g(gpu);
    float* out = g.poisoned(n);
    gpu.silu_mul(out, g.up(a), g.up(b), n);
    auto got = g.down(out, n);
    record("silu_mul", shape_str({{"n", n}}), nmse(got.data(), ref.data(), n), 1e-12);
  }
  {
    auto ref = a;
    cpu.add(ref.data(), b.data(), n);
    Dev g(gpu);
    float* xd = g.up(a);
    gpu.add(xd, g.up(b), n);
    auto got = g.down(xd, n);
    record("add", shape_str({{"n", n}}), nmse(got.data(), ref.data(), n), 0.0);
  }
}

void check_prefill(Backend& cpu, Backend& gpu, Rng& r) {
  struct Case {
    int n, H, Hk, d;
  };
  for (const Case& c : {Case{300, 8, 2, 64}, Case{77, 4, 4, 128}, Case{130, 4, 2, 16}, Case{65, 12, 4, 80},
                        Case{200, 4, 1, 256}}) {
    auto q = randn(r, (size_t)c.n * c.H * c.d, 2.f), k = randn(r, (size_t)c.n * c.Hk * c.d),
         v = randn(r, (size_t)c.n * c.Hk * c.d);
    std::vector<float> ref(q.size());
    cpu.attn_prefill(ref.data(), q.data(), k.data(), v.data(), c.n, c.H, c.Hk, c.d);
    Dev g(gpu);
    float* out = g.poisoned(q.size());
    gpu.attn_prefill(out, g.up(q), g.up(k), g.up(v), c.n, c.H, c.Hk, c.d);
    auto got = g.down(out, q.size());
    record("attn_prefill", shape_str({{"n", c.n}, {"H", c.H}, {"Hk", c.Hk}, {"d", c.d}}),
           nmse(got.data(), ref.data(), ref.size()), 1e-9);
  }
}

// A page store with the same random content on both backends.
struct Store {
  KVStoreDesc cpu, gpu;
  std::vector<uint8_t> host;  // the CPU store's memory
  Backend* gb;
  Store(Backend& g, Rng& r, DType dt, int P, int d, int64_t pages) : gb(&g) {
    cpu.dtype = gpu.dtype = dt;
    cpu.P = gpu.P = P;
    cpu.d = gpu.d = d;
    cpu.num_pages = gpu.num_pages = pages;
    const size_t elems = (size_t)pages * cpu.page_elems();
    host.resize(elems * dtype_size(dt));
    for (size_t i = 0; i < elems; i++) {
      const float v = (float)r.normal();
      if (dt == DType::F32) std::memcpy(host.data() + 4 * i, &v, 4);
      else {
        const uint16_t h = f32_to_f16(v);
        std::memcpy(host.data() + 2 * i, &h, 2);
      }
    }
    cpu.base = host.data();
    gpu.base = g.alloc(host.size());
    g.upload(gpu.base, host.data(), host.size());
  }
  ~Store() { gb->free(gpu.base); }
  // Both stores byte-identical?
  bool same() {
    std::vector<uint8_t> d(host.size());
    gb->download(d.data(), gpu.base, d.size());
    return std::memcmp(d.data(), host.data(), d.size()) == 0;
  }
};

// Page lists: every head gets ceil(len / P) distinct pages drawn from a shuffled pool.
std::vector<std::vector<int32_t>> assign_pages(Rng& r, const std::vector<int32_t>& lens, int P, int64_t pages) {
  std::vector<int32_t> perm((size_t)pages);
  std::iota(perm.begin(), perm.end(), 0);
  for (size_t i = perm.size(); i > 1; i--) std::swap(perm[i - 1], perm[(size_t)r.below((int32_t)i)]);
  std::vector<std::vector<int32_t>> out;
  size_t next = 0;
  for (int32_t len : lens) {
    std::vector<int32_t> pl;
    for (int32_t p = 0; p < (len + P - 1) / P; p++) pl.push_back(perm.at(next++));
    out.push_back(pl);
  }
  return out;
}

void check_decode(Backend& cpu, Backend& gpu, Rng& r) {
  struct Case {
    int B, H, Hk, d, P;
    std::vector<int32_t> lens;  // cycled over the B * Hk heads
  };
  const std::vector<Case> cases = {
      {5, 8, 2, 128, 16, {1, 15, 16, 17, 255, 256, 257, 700, 3000, 8192}},
      {3, 12, 4, 64, 16, {1000, 3, 512, 513, 64, 2049}},
      {2, 4, 2, 16, 16, {37, 1, 300, 5}},
      {2, 32, 2, 64, 16, {600, 90, 1, 1500}},  // G = 16: two blocks of 8 query heads per chunk
      {3, 8, 4, 64, 7, {100, 7, 8, 6, 1000, 257}},  // odd page size
      {2, 8, 8, 256, 16, {300, 40}}};
  for (DType dt : {DType::F16, DType::F32}) {
    for (const Case& c : cases) {
      const int nh = c.B * c.Hk;
      std::vector<int32_t> lens(nh);
      int64_t need = 0;
      for (int i = 0; i < nh; i++) {
        lens[i] = c.lens[i % c.lens.size()];
        need += (lens[i] + c.P - 1) / c.P;
      }
      Store st(gpu, r, dt, c.P, c.d, need + 5);
      auto plists = assign_pages(r, lens, c.P, need + 5);
      std::vector<PagedHead> heads(nh);
      for (int i = 0; i < nh; i++) heads[i] = PagedHead{plists[i].data(), lens[i]};
      auto q = randn(r, (size_t)c.B * c.H * c.d, 2.f);
      std::vector<float> ref(q.size());
      cpu.attn_decode(ref.data(), q.data(), c.B, c.H, c.Hk, heads.data(), st.cpu);
      Dev g(gpu);
      float* qd = g.up(q);
      float* out = g.poisoned(q.size());
      gpu.attn_decode(out, qd, c.B, c.H, c.Hk, heads.data(), st.gpu);
      auto got = g.down(out, q.size());
      const int maxlen = *std::max_element(lens.begin(), lens.end());
      record("attn_decode", std::string(dt == DType::F16 ? "f16" : "f32") + " pages " +
                                shape_str({{"B", c.B}, {"H", c.H}, {"Hk", c.Hk}, {"d", c.d}, {"P", c.P}, {"maxlen", maxlen}}),
             nmse(got.data(), ref.data(), ref.size()), 1e-9);
      // batch invariance: each row alone gives the batched row bit for bit
      bool ok = true;
      for (int b = 0; b < c.B; b++) {
        float* one = g.poisoned((size_t)c.H * c.d);
        gpu.attn_decode(one, qd + (size_t)b * c.H * c.d, 1, c.H, c.Hk, heads.data() + (size_t)b * c.Hk, st.gpu);
        auto o = g.down(one, (size_t)c.H * c.d);
        if (std::memcmp(o.data(), got.data() + (size_t)b * c.H * c.d, o.size() * sizeof(float)) != 0) ok = false;
      }
      if (dt == DType::F16 && &c == &cases[0])
        record_bool("attn_decode batch inv.", "each row alone vs the batch of 5", ok, "");
      else if (!ok)
        record_bool("attn_decode batch inv.", "each row alone vs the batch", ok, "");
    }
  }
}

void check_kv_ops(Backend& cpu, Backend& gpu, Rng& r) {
  for (DType dt : {DType::F16, DType::F32}) {
    const int P = 16, d = 64, Hk = 4;
    const int64_t pages = 64;
    const char* dn = dt == DType::F16 ? "f16" : "f32";
    // kv_write: 300 tokens from a [rows, Hk, d] scratch (head 2) into distinct random slots
    {
      Store st(gpu, r, dt, P, d, pages);
      const int rows = 400, count = 300;
      auto k = randn(r, (size_t)rows * Hk * d, 3.f), v = randn(r, (size_t)rows * Hk * d, 3.f);
      std::vector<int32_t> slots((size_t)pages * P);
      std::iota(slots.begin(), slots.end(), 0);
      for (size_t i = slots.size(); i > 1; i--) std::swap(slots[i - 1], slots[(size_t)r.below((int32_t)i)]);
      std::vector<int32_t> src(count), dp(count), ds(count);
      for (int i = 0; i < count; i++) {
        src[i] = r.below(rows);
        dp[i] = slots[i] / P;
        ds[i] = slots[i] % P;
      }
      cpu.kv_write(st.cpu, k.data() + 2 * d, v.data() + 2 * d, (int64_t)Hk * d, src.data(), dp.data(), ds.data(), count);
      Dev g(gpu);
      float* kd = g.up(k);
      float* vd = g.up(v);
      gpu.kv_write(st.gpu, kd + 2 * d, vd + 2 * d, (int64_t)Hk * d, src.data(), dp.data(), ds.data(), count);
      record_bool("kv_write", std::string(dn) + " pages, 300 tokens, row stride Hk*d", st.same(), "whole store");
    }
    // kv_copy: ordered moves with chains and a cycle (a -> b, b -> c, then c -> a reads the new c), and a
    // disjoint set that runs in parallel
    {
      Store st(gpu, r, dt, P, d, pages);
      std::vector<int32_t> sp = {3, 5, 7, 3, 10, 11}, ss = {0, 1, 2, 0, 15, 15}, dp = {5, 7, 3, 9, 10, 12},
                           ds = {1, 2, 0, 4, 14, 0};
      cpu.kv_copy(st.cpu, sp.data(), ss.data(), dp.data(), ds.data(), (int32_t)sp.size());
      gpu.kv_copy(st.gpu, sp.data(), ss.data(), dp.data(), ds.data(), (int32_t)sp.size());
      record_bool("kv_copy", std::string(dn) + " ordered moves with chains", st.same(), "whole store");
      std::vector<int32_t> sp2, ss2, dp2, ds2;
      for (int i = 0; i < 200; i++) {  // sources in pages 0-19, destinations in pages 30-59: disjoint
        sp2.push_back(r.below(20));
        ss2.push_back(r.below(P));
        dp2.push_back(30 + i / P);
        ds2.push_back(i % P);
      }
      cpu.kv_copy(st.cpu, sp2.data(), ss2.data(), dp2.data(), ds2.data(), 200);
      gpu.kv_copy(st.gpu, sp2.data(), ss2.data(), dp2.data(), ds2.data(), 200);
      record_bool("kv_copy", std::string(dn) + " 200 disjoint moves", st.same(), "whole store");
      // kv_read
      std::vector<int32_t> pg(500), sl(500);
      for (int i = 0; i < 500; i++) {
        pg[i] = r.below((int32_t)pages);
        sl[i] = r.below(P);
      }
      std::vector<float> kc(500 * d), vc(500 * d), kg(500 * d, NAN), vg(500 * d, NAN);
      cpu.kv_read(st.cpu, pg.data(), sl.data(), 500, kc.data(), vc.data());
      gpu.kv_read(st.gpu, pg.data(), sl.data(), 500, kg.data(), vg.data());
      record("kv_read", std::string(dn) + " 500 tokens (K)", nmse(kg.data(), kc.data(), kc.size()), 0.0);
      record("kv_read", std::string(dn) + " 500 tokens (V)", nmse(vg.data(), vc.data(), vc.size()), 0.0);
      // kv_gather: the same rows into device memory, keys only
      Dev gd(gpu);
      float* kd = gd.poisoned(kc.size());
      gpu.kv_gather(st.gpu, pg.data(), sl.data(), 500, kd, nullptr);
      auto kgd = gd.down(kd, kc.size());
      record("kv_gather", std::string(dn) + " 500 tokens (K only)", nmse(kgd.data(), kc.data(), kc.size()), 0.0);
    }
  }
}

void check_snapkv(Backend& cpu, Backend& gpu, Rng& r) {
  struct Case {
    int n, w, H, Hk, d, kernel;
    Pooling pool;
    GqaReduce red;
    bool gaps;  // decode-cap style: key positions with gaps, window queries at the newest positions
  };
  const std::vector<Case> cases = {{700, 32, 8, 2, 64, 7, Pooling::Max, GqaReduce::Mean, false},
                                   {1500, 32, 12, 4, 64, 7, Pooling::Avg, GqaReduce::Max, false},
                                   {300, 16, 4, 2, 16, 5, Pooling::Max, GqaReduce::Max, false},
                                   {900, 40, 8, 8, 128, 1, Pooling::Avg, GqaReduce::Mean, false},
                                   {600, 32, 6, 2, 64, 7, Pooling::Max, GqaReduce::Mean, true}};
  for (const Case& c : cases) {
    const int m = c.n, mp = c.n - c.w;
    std::vector<int32_t> kpos(m), qpos(c.w);
    int32_t p = 0;
    for (int j = 0; j < m; j++) {
      kpos[j] = p;
      p += c.gaps ? 1 + r.below(3) : 1;
    }
    for (int i = 0; i < c.w; i++) qpos[i] = kpos[m - c.w + i];
    auto q = randn(r, (size_t)c.w * c.H * c.d, 1.5f), k = randn(r, (size_t)m * c.Hk * c.d);
    std::vector<float> Sc((size_t)c.Hk * mp), Sg((size_t)c.Hk * mp, NAN);
    cpu.snapkv_scores(q.data(), (int64_t)c.H * c.d, qpos.data(), c.w, k.data(), kpos.data(), m, mp, c.H, c.Hk, c.d,
                      c.pool, c.red, c.kernel, Sc.data());
    Dev g(gpu);
    gpu.snapkv_scores(g.up(q), (int64_t)c.H * c.d, qpos.data(), c.w, g.up(k), kpos.data(), m, mp, c.H, c.Hk, c.d,
                      c.pool, c.red, c.kernel, Sg.data());
    const std::string shape = shape_str({{"n", c.n}, {"w", c.w}, {"H", c.H}, {"Hk", c.Hk}, {"d", c.d}, {"k", c.kernel}}) +
                              (c.pool == Pooling::Max ? " max" : " avg") + (c.red == GqaReduce::Mean ? "/mean" : "/max") +
                              (c.gaps ? " gaps" : "");
    record("snapkv_scores", shape, nmse(Sg.data(), Sc.data(), Sc.size()), 1e-9);
    {  // the decode cap's per-KV-head call: the last KV head's G query heads read with the row stride H * d
      const int G = c.H / c.Hk, gl = c.Hk - 1;
      std::vector<float> kh((size_t)m * c.d);
      for (int j = 0; j < m; j++)
        std::copy(k.begin() + ((size_t)j * c.Hk + gl) * c.d, k.begin() + ((size_t)j * c.Hk + gl + 1) * c.d,
                  kh.begin() + (size_t)j * c.d);
      std::vector<float> Hc((size_t)mp), Hg((size_t)mp, NAN);
      cpu.snapkv_scores(q.data() + (size_t)gl * G * c.d, (int64_t)c.H * c.d, qpos.data(), c.w, kh.data(), kpos.data(),
                        m, mp, G, 1, c.d, c.pool, c.red, c.kernel, Hc.data());
      gpu.snapkv_scores(g.up(q) + (size_t)gl * G * c.d, (int64_t)c.H * c.d, qpos.data(), c.w, g.up(kh), kpos.data(), m,
                        mp, G, 1, c.d, c.pool, c.red, c.kernel, Hg.data());
      record("snapkv_scores strided", shape + " head " + std::to_string(gl), nmse(Hg.data(), Hc.data(), Hc.size()), 1e-9);
    }
    // the allocation both paths feed: identical kept positions
    const int Bp = std::min(mp, 100);
    std::vector<std::vector<int32_t>> kc, kg;
    allocate(Sc.data(), c.Hk, mp, Bp, 0.2f, true, kc);
    bool finite = std::all_of(Sg.begin(), Sg.end(), [](float x) { return std::isfinite(x); });
    if (finite) allocate(Sg.data(), c.Hk, mp, Bp, 0.2f, true, kg);
    record_bool("snapkv kept positions", shape + " B'=100 ada", finite && kc == kg, "");
    if (&c == &cases.front()) {  // q = 0: uniform attention, equal scores on every head: the tie-break decides all
      std::vector<float> q0(q.size(), 0.f);
      std::vector<std::vector<int32_t>> tc, tg;
      const int Bp0 = std::min(mp, 90);
      cpu.snapkv_select(q0.data(), qpos.data(), c.w, k.data(), kpos.data(), m, mp, c.H, c.Hk, c.d, c.pool, c.red,
                        c.kernel, Bp0, 0.2f, true, tc);
      gpu.snapkv_select(g.up(q0), qpos.data(), c.w, g.up(k), kpos.data(), m, mp, c.H, c.Hk, c.d, c.pool, c.red,
                        c.kernel, Bp0, 0.2f, true, tg);
      record_bool("snapkv_select", shape + " q=0 (all ties) B'=90 ada", tc == tg, "lower head, then lower position");
    }
    // the allocation on the device (snapkv_select): the same positions as the CPU op for uniform, Ada with and
    // without the safeguard, and a budget that keeps everything (max pooling makes many exact ties)
    struct Sel {
      int Bp;
      float alpha;
      bool ada;
      const char* name;
    };
    for (const Sel& sel : {Sel{std::min(mp, 100), 0.2f, true, "ada a=0.2"}, Sel{std::min(mp, 64), 0.f, true, "ada a=0"},
                           Sel{std::min(mp, 77), 0.2f, false, "uniform"}, Sel{mp, 0.2f, true, "ada B'=m"}}) {
      std::vector<std::vector<int32_t>> sc, sg;
      cpu.snapkv_select(q.data(), qpos.data(), c.w, k.data(), kpos.data(), m, mp, c.H, c.Hk, c.d, c.pool, c.red,
                        c.kernel, sel.Bp, sel.alpha, sel.ada, sc);
      gpu.snapkv_select(g.up(q), qpos.data(), c.w, g.up(k), kpos.data(), m, mp, c.H, c.Hk, c.d, c.pool, c.red, c.kernel,
                        sel.Bp, sel.alpha, sel.ada, sg);
      record_bool("snapkv_select", shape + " B'=" + std::to_string(sel.Bp) + " " + sel.name, sc == sg,
                  "kept positions of every head");
      // the device allocation alone: allocate() on the device's own scores must give exactly its positions (a
      // difference above could also come from rounding in the scores; this one cannot)
      std::vector<std::vector<int32_t>> own;
      if (finite) allocate(Sg.data(), c.Hk, mp, sel.Bp, sel.alpha, sel.ada, own);
      record_bool("snapkv_select vs own scores", shape + " B'=" + std::to_string(sel.Bp) + " " + sel.name,
                  finite && own == sg, "allocate() on the CUDA scores");
    }
  }
}

// ============================================================================================================
// Timings
// ============================================================================================================
double time_it(Backend& be, int iters, const std::function<void()>& fn) {
  fn();  // warm-up (first use uploads weights, sets kernel attributes)
  be.sync();
  const double t0 = now_s();
  for (int i = 0; i < iters; i++) fn();
  be.sync();
  return (now_s() - t0) / iters;
}

void time_matmul(Backend& gpu_split, Backend& gpu_plain, Rng& r) {
  const int M = 4096, N = 4096, K = 4096;
  auto x = randn(r, (size_t)M * K);
  for (DType dt : {DType::F16, DType::BF16}) {
    Weight W = make_weight(r, N, K, dt, 1.f / 64.f);
    for (int mode = 0; mode < 2; mode++) {
      Backend& be = mode == 0 ? gpu_split : gpu_plain;
      Dev g(be);
      float* xd = g.up(x);
      float* out = g.poisoned((size_t)M * N);
      const double t = time_it(be, 10, [&] { be.matmul(out, xd, M, W, nullptr); });
      std::printf("timing  matmul %-4s %s 4096x4096x4096: %8.3f ms  %7.1f TFLOP/s%s\n", dtype_name(dt),
                  mode == 0 ? "split (engine default)" : "plain (1 rounding)  ", t * 1e3, 2.0 * M * N * K / t / 1e12,
                  dt == DType::F16 && mode == 0 ? "   (target >= 200 on H100/H200)" : "");
    }
  }
  // decode-shaped products: T = 32 rows against a 4096 x 4096 weight (bandwidth bound)
  {
    Weight W = make_weight(r, 4096, 4096, DType::F16, 1.f / 64.f);
    Dev g(gpu_split);
    float* xd = g.up(randn(r, (size_t)32 * 4096));
    float* out = g.poisoned((size_t)32 * 4096);
    const double t = time_it(gpu_split, 50, [&] { gpu_split.matmul(out, xd, 32, W, nullptr); });
    std::printf("timing  matmul F16  T=32 x 4096 x 4096 (decode shape): %8.3f us  %7.1f GB/s of weights\n", t * 1e6,
                4096.0 * 4096 * 2 / t / 1e9);
  }
}

// The sample op per decode step: R = 32 rows of a 128256-token vocabulary (Llama 3), all greedy, then all top-p
// (the sorted path), tokens included (the op waits for them).
void time_sample(Backend& gpu, Rng& r) {
  const int R = 32, V = 128256;
  Dev g(gpu);
  float* ld = g.up(randn(r, (size_t)R * V, 3.f));
  std::vector<int32_t> tok((size_t)R);
  for (int kind = 0; kind < 2; kind++) {
    std::vector<SampleRow> rows((size_t)R);
    for (int i = 0; i < R; i++) {
      rows[i].position = (uint64_t)i;
      rows[i].temperature = kind == 0 ? 0.f : 0.8f;
      rows[i].top_p = kind == 0 ? 1.f : 0.9f;
    }
    const double t = time_it(gpu, 20, [&] { gpu.sample(ld, R, V, rows.data(), 0.f, tok.data()); });
    std::printf("timing  sample R=%d V=%d %-24s %8.1f us per call\n", R, V, kind == 0 ? "greedy" : "top-p 0.9 (sorted)",
                t * 1e6);
  }
}

double time_copy(Backend& gpu) {
  const size_t bytes = (size_t)1 << 30;
  Dev g(gpu);
  void* a = g.raw(bytes);
  void* b = g.raw(bytes);
  const double t = time_it(gpu, 10, [&] { gpu.copy(b, a, bytes); });
  const double bw = 2.0 * bytes / t / 1e9;
  std::printf("timing  device-to-device copy 1 GiB: %8.3f ms  %7.1f GB/s (read + write)\n", t * 1e3, bw);
  return bw;
}

void time_decode(Backend& gpu, Rng& r, double copy_bw) {
  struct Case {
    const char* name;
    int H, Hk, d;
  };
  for (const Case& c : {Case{"small preset (H=12 Hk=4 d=64)", 12, 4, 64}, Case{"8B-like (H=32 Hk=8 d=128)", 32, 8, 128}}) {
    const int B = 32, len = 8192, P = 16;
    const int nh = B * c.Hk;
    const int64_t pages = (int64_t)nh * (len / P);
    KVStoreDesc kv;
    kv.dtype = DType::F16;
    kv.P = P;
    kv.d = c.d;
    kv.num_pages = pages;
    const size_t bytes = (size_t)pages * kv.page_bytes();
    Dev g(gpu);
    kv.base = g.raw(bytes);
    {  // random content: 64 MiB of random halves, replicated on the device
      const size_t chunk = std::min(bytes, (size_t)64 << 20);
      std::vector<uint16_t> h(chunk / 2);
      for (auto& x : h) x = f32_to_f16(r.normal());
      gpu.upload(kv.base, h.data(), chunk);
      for (size_t off = chunk; off < bytes; off += chunk)
        gpu.copy(static_cast<char*>(kv.base) + off, kv.base, std::min(chunk, bytes - off));
    }
    std::vector<int32_t> lens(nh, len);
    auto plists = assign_pages(r, lens, P, pages);
    std::vector<PagedHead> heads(nh);
    for (int i = 0; i < nh; i++) heads[i] = PagedHead{plists[i].data(), len};
    float* q = g.up(randn(r, (size_t)B * c.H * c.d));
    float* out = g.poisoned((size_t)B * c.H * c.d);
    // op time (host planning, page-table upload and kernels, as the engine sees it), then the kernels alone
    const double t = time_it(gpu, 20, [&] { gpu.attn_decode(out, q, B, c.H, c.Hk, heads.data(), kv); });
    double tk = 1e30;
    for (int i = 0; i < 10; i++) {
      gpu.attn_decode(out, q, B, c.H, c.Hk, heads.data(), kv);
      tk = std::min(tk, cuda_last_decode_kernel_ms(gpu) * 1e-3);
    }
    const double bw = (double)bytes / t / 1e9, bwk = (double)bytes / tk / 1e9;
    std::printf("timing  attn_decode %-30s B=32 x %d KV heads x 8192 tokens, f16 (%.0f MB of K+V):\n"
                "          op %8.3f ms %7.1f GB/s = %3.0f%% of copy;  kernels %8.3f ms %7.1f GB/s = %3.0f%% of copy "
                "(target >= 70%%)\n",
                c.name, c.Hk, bytes / 1e6, t * 1e3, bw, 100.0 * bw / copy_bw, tk * 1e3, bwk, 100.0 * bwk / copy_bw);
  }
}

// ============================================================================================================
// End to end: the same seeded model and prompts through kvf::Engine on "cpu" and "cuda".
// ============================================================================================================
struct RunOut {
  std::vector<std::vector<std::vector<float>>> logits;  // [seq][step][V]
  std::vector<std::vector<int32_t>> tokens;             // [seq][step]
};

RunOut run_engine(const std::string& backend, std::shared_ptr<Model> model, const std::vector<std::vector<int32_t>>& prompts,
                  const BudgetSpec& budget, int steps, bool batched) {
  EngineOptions o;
  o.backend = backend;
  o.num_pages = 8192;
  o.kv_dtype = DType::F16;
  Engine e(model, o);
  SamplingSpec s;
  s.temperature = 0;
  s.max_new_tokens = steps + 1;
  s.ignore_eos = true;
  RunOut out;
  out.logits.resize(prompts.size());
  out.tokens.resize(prompts.size());
  auto drive = [&](const std::vector<size_t>& which) {
    std::vector<int64_t> ids;
    for (size_t i : which) ids.push_back(e.add_sequence(prompts[i], s, budget, {}));
    for (int st = 0; st <= steps; st++) {
      std::vector<StepSeq> batch;
      for (int64_t id : ids) batch.push_back({id, 0});
      StepResult res = e.step(batch, true);
      for (size_t j = 0; j < which.size(); j++)
        for (auto& sr : res.seqs)
          if (sr.id == ids[j]) {
            out.logits[which[j]].push_back(sr.logits);
            out.tokens[which[j]].push_back(sr.token);
          }
    }
    for (int64_t id : ids) e.release(id);
  };
  if (batched) {
    std::vector<size_t> all(prompts.size());
    std::iota(all.begin(), all.end(), 0);
    drive(all);
  } else {
    for (size_t i = 0; i < prompts.size(); i++) drive({i});
  }
  return out;
}

void check_engine(Rng& r) {
  for (DType wdt : {DType::F16, DType::BF16}) {
    auto model = make_random_model(tiny_config(), wdt, 11);
    std::vector<std::vector<int32_t>> prompts;
    for (int n : {37, 5, 300, 130}) {
      std::vector<int32_t> p(n);
      for (auto& t : p) t = r.below(512);
      prompts.push_back(p);
    }
    BudgetSpec full;
    full.method = Method::Full;
    full.tokens_per_head = 0;
    BudgetSpec ada;  // ADA_SNAPKV, 64 tokens per head: the 300- and 130-token prompts are compressed
    ada.method = Method::AdaSnapKV;
    ada.tokens_per_head = 64;
    for (int bi = 0; bi < 2; bi++) {
      const BudgetSpec& b = bi == 0 ? full : ada;
      const int steps = 8;
      RunOut c = run_engine("cpu", model, prompts, b, steps, true);
      RunOut g = run_engine("cuda", model, prompts, b, steps, true);
      RunOut gs = run_engine("cuda", model, prompts, b, steps, false);
      double worst = 0;
      bool tokens_same = true, invariant = true;
      for (size_t i = 0; i < prompts.size(); i++) {
        for (size_t st = 0; st < c.logits[i].size() && st < g.logits[i].size(); st++) {
          worst = std::max(worst, nmse(g.logits[i][st].data(), c.logits[i][st].data(), c.logits[i][st].size()));
          if (c.tokens[i][st] != g.tokens[i][st]) {
            tokens_same = false;
            break;  // later steps see different inputs
          }
        }
        if (g.logits[i] != gs.logits[i]) invariant = false;
      }
      const std::string shape = std::string("tiny ") + dtype_name(wdt) + " weights, f16 pages, " +
                                (bi == 0 ? "FULL" : "ADA_SNAPKV B=64") + ", 4 prompts";
      record("engine logits cuda vs cpu", shape, worst, 1e-6);
      record_bool("engine greedy tokens", shape + ", 9 tokens each", tokens_same, "");
      record_bool("engine cuda batch inv.", shape + ", batched vs solo", invariant, "");
    }
  }
}

// Issue 10's end-to-end number, small preset: decode tokens/s at 8K context, batch 1 and 32, FULL vs ADA_SNAPKV.
void bench_e2e(Rng& r) {
  ModelConfig cfg = tiny_config();
  cfg.L = 12;
  cfg.D = 768;
  cfg.H = 12;
  cfg.Hk = 4;
  cfg.d = 64;
  cfg.F = 2048;
  cfg.V = 16384;
  cfg.max_pos = 32768;
  cfg.rope_theta = 500000;
  auto model = make_random_model(cfg, DType::F16, 5);
  const int n = 8192, steps = 16;
  double prefill_ms[2][2] = {{0, 0}, {0, 0}}, tok_s[2][2] = {{0, 0}, {0, 0}};  // [FULL, ADA][B = 1, 32]
  for (int bi = 0; bi < 2; bi++) {
    BudgetSpec b;
    if (bi == 0) {
      b.method = Method::Full;
      b.tokens_per_head = 0;
    } else {
      b.method = Method::AdaSnapKV;
      b.tokens_per_head = 256;
    }
    for (int B : {1, 32}) {
      EngineOptions o;
      o.backend = "cuda";
      o.kv_memory_bytes = (int64_t)B * cfg.L * cfg.Hk * (n + 64) * cfg.d * 2 * 2 + ((int64_t)64 << 20);
      Engine e(model, o);
      SamplingSpec s;
      s.temperature = 0;
      s.max_new_tokens = steps + 1;
      s.ignore_eos = true;
      {  // warm-up: the first use copies the weights to the device and sizes the workspaces
        std::vector<int32_t> p(n);
        for (auto& t : p) t = r.below(cfg.V);
        const int64_t id = e.add_sequence(p, s, b, {});
        e.step({{id, 0}}, false);
        e.release(id);
      }
      std::vector<int64_t> ids;
      double prefill_s = 0;
      for (int i = 0; i < B; i++) {
        std::vector<int32_t> p(n);
        for (auto& t : p) t = r.below(cfg.V);
        ids.push_back(e.add_sequence(p, s, b, {}));
        const double t0 = now_s();
        e.step({{ids.back(), 0}}, false);
        prefill_s += now_s() - t0;
      }
      std::vector<StepSeq> batch;
      for (int64_t id : ids) batch.push_back({id, 0});
      e.step(batch, false);  // warm-up decode step
      const double t0 = now_s();
      for (int st = 1; st < steps; st++) e.step(batch, false);
      const double dt = now_s() - t0;
      std::printf("e2e     small preset %-15s 8K context B=%2d: prefill %7.1f ms/seq, decode %8.1f tokens/s (%.2f ms/step)\n",
                  bi == 0 ? "FULL" : "ADA_SNAPKV 256", B, prefill_s / B * 1e3, B * (steps - 1) / dt,
                  dt / (steps - 1) * 1e3);
      prefill_ms[bi][B == 32] = prefill_s / B * 1e3;
      tok_s[bi][B == 32] = B * (steps - 1) / dt;
      for (int64_t id : ids) e.release(id);
    }
  }
  std::printf("e2e     compression adds %.1f%% to an 8K prefill (ADA_SNAPKV 256 vs FULL, B=1; target < 5%%)\n",
              (prefill_ms[1][0] - prefill_ms[0][0]) / prefill_ms[0][0] * 100.0);
  std::printf("e2e     ADA_SNAPKV 256 decodes %.2fx FULL's tokens/s at 8K, B=32 (target >= 3x); B=1: %.2fx\n",
              tok_s[1][1] / tok_s[0][1], tok_s[1][0] / tok_s[0][0]);
}

// Sampling: tokens from the CUDA sample op against sampling.cc (the CPU op) on random logits, a mixture of rows in
// one call (greedy, temperature, top-k, top-p, both, inactive), with and without a soft-cap, and logits with many
// exact ties (the lower id must win everywhere). The logits must come back unchanged.
void check_sample(Backend& cpu, Backend& gpu, Rng& r) {
  struct Case {
    int V, R;
    float softcap;
    bool ties;  // logits rounded to multiples of 0.5: many exact ties
  };
  const std::vector<Case> cases = {{32000, 96, 0.f, false}, {32000, 64, 30.f, false}, {1000, 48, 0.f, true},
                                   {77, 40, 0.f, false},    {128256, 16, 0.f, false}, {5000, 48, 0.f, true},
                                   {3000, 48, 10.f, true},  {4096, 48, 0.f, false}};
  for (const Case& c : cases) {
    const bool masked = &c == &cases.back();  // a third of the logits -inf (masked tokens), row 0 entirely
    auto logits = randn(r, (size_t)c.R * c.V, 3.f);
    if (c.ties)
      for (auto& x : logits) x = std::round(x * 2.f) / 2.f;
    if (masked) {
      for (auto& x : logits)
        if (r.below(3) == 0) x = -INFINITY;
      std::fill(logits.begin(), logits.begin() + c.V, -INFINITY);
    }
    std::vector<SampleRow> rows((size_t)c.R);
    for (int i = 0; i < c.R; i++) {
      SampleRow& row = rows[i];
      row.seed = 1000 + (uint64_t)r.below(1 << 30);
      row.position = (uint64_t)r.below(1 << 20);
      switch (i % 8) {
        case 0: row.temperature = 0.f; break;                                        // greedy
        case 1: row.temperature = 0.8f; break;                                       // plain temperature
        case 2: row.temperature = 1.f; row.top_k = 50; break;                        // top-k
        case 3: row.temperature = 0.7f; row.top_p = 0.9f; break;                     // top-p
        case 4: row.temperature = 1.3f; row.top_k = 1000; row.top_p = 0.95f; break;  // both (k may exceed V)
        case 5: row.temperature = 0.f; row.active = false; break;                    // a forced token: no draw
        case 6: row.temperature = 1.f; row.top_p = 0.5f; break;
        default: row.temperature = 2.f; row.top_k = 1; break;                        // top-k 1: the argmax
      }
    }
    std::vector<int32_t> tc((size_t)c.R), tg((size_t)c.R, -7);
    cpu.sample(logits.data(), c.R, c.V, rows.data(), c.softcap, tc.data());
    Dev g(gpu);
    float* ld = g.up(logits);
    gpu.sample(ld, c.R, c.V, rows.data(), c.softcap, tg.data());
    int diff = 0;
    std::string first;
    for (int i = 0; i < c.R; i++)
      if (tc[i] != tg[i]) {
        if (!diff)
          first = "row " + std::to_string(i) + " (kind " + std::to_string(i % 8) + "): cpu " + std::to_string(tc[i]) +
                  ", cuda " + std::to_string(tg[i]);
        diff++;
      }
    const std::string shape = shape_str({{"V", c.V}, {"R", c.R}}) +
                              (c.softcap > 0 ? " softcap " + std::to_string((int)c.softcap) : "") +
                              (c.ties ? " ties" : "") + (masked ? " 1/3 -inf" : "");
    record_bool("sample", shape, diff == 0,
                diff ? std::to_string(diff) + " rows differ, first " + first : "8 row kinds, tokens identical");
    auto back = g.down(ld, logits.size());
    record("sample (logits unchanged)", shape, nmse(back.data(), logits.data(), logits.size()), 0.0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool timing = true, e2e_bench = true;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--no-timing")) timing = false;
    else if (!std::strcmp(argv[i], "--no-e2e-bench")) e2e_bench = false;
    else {
      std::fprintf(stderr, "usage: kvf_gpu_check [--no-timing] [--no-e2e-bench]\n");
      return 2;
    }
  }
  const DeviceInfo dev = query_device();
  if (!dev.cuda_usable) {
    std::fprintf(stderr, "kvf_gpu_check: no usable CUDA GPU (%s): nothing was checked\n",
                 dev.reason.empty() ? "unknown reason" : dev.reason.c_str());
    return 3;
  }
  std::printf("device: %s (compute capability %d.%d, %.1f GiB)\n", dev.name.c_str(), dev.cc_major, dev.cc_minor,
              dev.total_memory / 1073741824.0);
  const double t_start = now_s();
  try {
    auto cpu = make_cpu_backend(0);
    CudaOptions checked;  // correctness pass: a fault names its kernel
    checked.sync_after_launch = true;
    auto gpu = make_cuda_backend(0, checked);
    CudaOptions plain_opts = checked;
    plain_opts.matmul_split_activations = false;
    auto gpu_plain = make_cuda_backend(0, plain_opts);
    Rng r{20240611};

    std::printf("\n%-26s %-44s %11s %10s  %s\n", "op", "shape", "nmse", "threshold", "result");
    std::printf("%s\n", std::string(100, '-').c_str());
    check_embed(*cpu, *gpu, r);
    check_rmsnorm(*cpu, *gpu, r);
    check_matmul(*cpu, *gpu, *gpu_plain, r);
    check_matmul_invariance(*gpu, r, DType::F16, "split");
    check_matmul_invariance(*gpu, r, DType::BF16, "split");
    check_matmul_invariance(*gpu_plain, r, DType::F16, "plain");
    check_rope(*cpu, *gpu, r);
    check_elementwise(*cpu, *gpu, r);
    check_prefill(*cpu, *gpu, r);
    check_decode(*cpu, *gpu, r);
    check_kv_ops(*cpu, *gpu, r);
    check_snapkv(*cpu, *gpu, r);
    check_sample(*cpu, *gpu, r);
    check_engine(r);

    if (timing) {
      std::printf("\n");
      CudaOptions fast;  // timings: no synchronisation after launches
      fast.time_decode_kernels = true;
      auto tsplit = make_cuda_backend(0, fast);
      fast.matmul_split_activations = false;
      auto tplain = make_cuda_backend(0, fast);
      time_matmul(*tsplit, *tplain, r);
      const double copy_bw = time_copy(*tsplit);
      time_decode(*tsplit, r, copy_bw);
      time_sample(*tsplit, r);
    }
    if (e2e_bench) bench_e2e(r);
  } catch (const std::exception& e) {
    std::printf("\nFAIL: exception: %s\n", e.what());
    return 1;
  }
  int failed = 0;
  for (auto& row : g_rows)
    if (!row.pass) failed++;
  std::printf("\n%zu checks, %d failed (%.1f s)\n", g_rows.size(), failed, now_s() - t_start);
  if (failed)
    for (auto& row : g_rows)
      if (!row.pass) std::printf("  FAILED: %s  %s  %s\n", row.op.c_str(), row.shape.c_str(), row.note.c_str());
  return failed == 0 ? 0 : 1;
}
