#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "decode_cap.h"

namespace kvf {

struct Engine::Sequence {
  int64_t id = 0;
  std::vector<int32_t> prompt;      // [n]
  std::vector<int32_t> generated;   // tokens produced so far (resume tokens included)
  std::deque<int32_t> forced;       // resume tokens not yet replayed
  SamplingSpec sampling;
  BudgetSpec budget;
  SeqCache cache;
  std::vector<int32_t> layer_budget;  // [L] prefix budget B'_l per layer; empty = keep every prompt token
  std::vector<int32_t> append_pages;  // pages reserved for this step's decode append
  float* hidden = nullptr;            // [n, D] residual stream of a prefill split across steps (backend memory)
  int32_t layers_done = 0;            // prefill progress
  bool prefilling = true;
  int32_t positions = 0;              // positions computed into the cache
  int32_t peak_pages = 0;
  Finish finish = Finish::None;
  // decode cap: the last w query vectors of every layer, slot = position % w: [L, w, H, d] (backend memory, so a
  // step never waits to copy queries out; allocated at the first query)
  float* qring = nullptr;
  int32_t recompressions = 0;
  bool capped() const { return budget.decode_max_tokens_per_head > 0 && budget.method != Method::Full; }
};

// One step's rows: decode rows [0, Bd) first, then one block of n rows per prefilling sequence.
struct Engine::Work {
  struct Block {
    Sequence* s;
    int32_t row0, n, l0, l1;  // rows [row0, row0 + n), layers [l0, l1) this step
  };
  std::vector<Sequence*> dec;
  std::vector<int32_t> dec_tok;
  std::vector<Block> pre;
  std::vector<int32_t> pos;  // [T] position of each row
  int32_t T = 0;
  bool want_attn = false;
  std::vector<float> dec_attn;  // [Bd, L, H*d] when want_attn
  // backend buffers, sized for T rows
  float *x = nullptr, *xn = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr, *o = nullptr,
        *gate = nullptr, *up = nullptr;
};


Engine::Engine(std::shared_ptr<Model> model, const EngineOptions& opts)
    : model_(std::move(model)), opts_(opts), pool_([&] {
        const auto& c = model_->cfg;
        if (opts.page_size <= 0 || opts.page_size > 4096)
          bad_argument("page_size must be in [1, 4096], got " + std::to_string(opts.page_size));
        if (opts.kv_dtype == DType::BF16) bad_argument("kv dtype must be f16 or f32");
        const int64_t page_bytes = (int64_t)2 * opts.page_size * c.d * (int64_t)dtype_size(opts.kv_dtype);
        int64_t pages = opts.num_pages > 0 ? opts.num_pages : opts.kv_memory_bytes / page_bytes;
        if (pages <= 0)
          bad_argument("the KV pool holds no page: kv memory " + std::to_string(opts.kv_memory_bytes) +
                       " bytes is below one page of " + std::to_string(page_bytes) + " bytes");
        if (pages > INT32_MAX) bad_argument("the KV pool is too large: " + std::to_string(pages) + " pages");
        return (int32_t)pages;
      }()) {
  const auto& c = model_->cfg;
  if (opts_.backend == "cpu") {
    backend_ = make_cpu_backend(opts_.threads);
  }
#ifdef KVF_CUDA
  else if (opts_.backend == "cuda") {
    backend_ = make_cuda_backend(0);
  }
#endif
  else {
    bad_argument("unknown or unavailable backend '" + opts_.backend + "'");
  }
  rope_ = make_rope(c);
  kv_.dtype = opts_.kv_dtype;
  kv_.P = opts_.page_size;
  kv_.d = c.d;
  kv_.num_pages = pool_.total();
  kv_.base = backend_->alloc((size_t)kv_.num_pages * kv_.page_bytes());  // once, for the engine's lifetime
  auto up = [&](const std::vector<float>& h) -> float* {
    if (h.empty()) return nullptr;
    float* p = static_cast<float*>(backend_->alloc(h.size() * sizeof(float)));
    backend_->upload(p, h.data(), h.size() * sizeof(float));
    return p;
  };
  for (const auto& lw : model_->layers) {
    attn_norm_.push_back(up(lw.attn_norm));
    mlp_norm_.push_back(up(lw.mlp_norm));
    bq_.push_back(up(lw.bq));
    bk_.push_back(up(lw.bk));
    bv_.push_back(up(lw.bv));
  }
  final_norm_ = up(model_->final_norm);
}

Engine::~Engine() {
  for (auto& kv : seqs_) free_buffers(*kv.second);
  for (Scratch& sc : scratch_)
    if (sc.p) backend_->free(sc.p);
  for (auto* vec : {&attn_norm_, &mlp_norm_, &bq_, &bk_, &bv_})
    for (float* p : *vec)
      if (p) backend_->free(p);
  if (final_norm_) backend_->free(final_norm_);
  if (kv_.base) backend_->free(kv_.base);
}

Engine::Sequence& Engine::get(int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) bad_argument("unknown sequence id " + std::to_string(id));
  return *it->second;
}
const Engine::Sequence& Engine::get(int64_t id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) bad_argument("unknown sequence id " + std::to_string(id));
  return *it->second;
}

int64_t Engine::add_sequence(const std::vector<int32_t>& prompt, const SamplingSpec& sampling,
                             const BudgetSpec& budget, const std::vector<int32_t>& forced) {
  const auto& c = model_->cfg;
  if (prompt.empty()) bad_argument("prompt is empty");
  for (size_t i = 0; i < prompt.size(); i++)
    if (prompt[i] < 0 || prompt[i] >= c.V)
      bad_argument("prompt token " + std::to_string(prompt[i]) + " at index " + std::to_string(i) +
                   " is outside the vocabulary [0, " + std::to_string(c.V) + ")");
  for (size_t i = 0; i < forced.size(); i++)
    if (forced[i] < 0 || forced[i] >= c.V)
      bad_argument("resume token " + std::to_string(forced[i]) + " is outside the vocabulary");
  validate_sampling(sampling, c.V);
  validate_budget(budget);
  if ((int64_t)forced.size() > sampling.max_new_tokens)
    bad_argument("more resume tokens (" + std::to_string(forced.size()) + ") than max_new_tokens (" +
                 std::to_string(sampling.max_new_tokens) + ")");
  if ((int64_t)prompt.size() + sampling.max_new_tokens > c.max_pos)
    bad_argument("prompt (" + std::to_string(prompt.size()) + " tokens) + max_new_tokens (" +
                 std::to_string(sampling.max_new_tokens) + ") exceeds the model's context of " +
                 std::to_string(c.max_pos) + " tokens");
  auto s = std::make_unique<Sequence>();
  s->id = next_id_++;
  s->prompt = prompt;
  s->forced.assign(forced.begin(), forced.end());
  s->sampling = sampling;
  s->budget = budget;
  s->cache = SeqCache(c.L, c.Hk, opts_.page_size);
  const int32_t n = (int32_t)prompt.size();
  if (compresses(budget, n)) s->layer_budget = layer_prefix_budgets(budget, c.L, n);
  const int64_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

void Engine::release(int64_t id) {
  Sequence& s = get(id);
  s.cache.release(pool_);
  for (int32_t p : s.append_pages) pool_.free(p);
  free_buffers(s);
  seqs_.erase(id);
}

// A slot is reused when it holds the request and is at most 4x larger (or at most 64 MiB): steady decode steps
// allocate nothing, and the scratch of one long prefill is not kept for the decode steps after it. New allocations
// are rounded up to a power of two so a growing batch reallocates O(log) times.
float* Engine::scratch(ScratchSlot slot, size_t floats) {
  Scratch& sc = scratch_[slot];
  const size_t need = std::max<size_t>(floats, 1) * sizeof(float);
  if (sc.p && sc.bytes >= need && sc.bytes <= std::max(4 * need, (size_t)64 << 20)) return static_cast<float*>(sc.p);
  if (sc.p) backend_->free(sc.p);
  sc.p = nullptr;
  size_t bytes = 256;
  while (bytes < need) bytes *= 2;
  sc.p = backend_->alloc(bytes);
  sc.bytes = bytes;
  return static_cast<float*>(sc.p);
}

void Engine::free_buffers(Sequence& s) {
  if (s.hidden) backend_->free(s.hidden);
  if (s.qring) backend_->free(s.qring);
  s.hidden = nullptr;
  s.qring = nullptr;
}

void Engine::note_pages(Sequence& s) { s.peak_pages = std::max(s.peak_pages, s.cache.pages_held()); }

void Engine::fail_sequence(Sequence& s, StepSeqResult& r) {
  s.cache.release(pool_);
  for (int32_t p : s.append_pages) pool_.free(p);
  s.append_pages.clear();
  free_buffers(s);
  s.finish = Finish::Failed;
  r.out_of_pages = true;
  r.finish = Finish::Failed;
}

// Prefill attention of one sequence over its layer scratch, then the choice of kept tokens per KV head and
// their write into fresh pages. k, v: [n, Hk, d] post-RoPE; q: [n, H, d].
void Engine::prefill_attention_and_cache(int32_t l, Sequence& s, float* q, float* k, float* v, float* attn,
                                         int32_t n) {
  const auto& c = model_->cfg;
  backend_->attn_prefill(attn, q, k, v, n, c.H, c.Hk, c.d);
  if (s.finish == Finish::Failed) return;
  if (s.capped()) {  // the window's queries start the decode-cap ring
    const int32_t i0 = std::max(0, n - s.budget.window);
    push_queries(s, l, i0, n - i0, q + (size_t)i0 * c.H * c.d);
  }
  std::vector<std::vector<int32_t>> kept((size_t)c.Hk);
  if (s.layer_budget.empty()) {
    for (auto& kh : kept) {
      kh.resize(n);
      for (int32_t i = 0; i < n; i++) kh[i] = i;
    }
  } else {
    const int32_t w = s.budget.window, mp = n - w;
    std::vector<int32_t> qpos(w), kpos(n);
    for (int32_t i = 0; i < w; i++) qpos[i] = mp + i;
    for (int32_t j = 0; j < n; j++) kpos[j] = j;
    // q and k are backend memory (the layer scratch): the backend scores them and allocates; only the kept
    // positions come back to the host, where the page tables are.
    backend_->snapkv_select(q + (size_t)mp * c.H * c.d, qpos.data(), w, k, kpos.data(), n, mp, c.H, c.Hk, c.d,
                            s.budget.pooling, s.budget.gqa_reduce, s.budget.pool_kernel, s.layer_budget[l],
                            s.budget.floor_alpha, method_is_ada(s.budget.method), kept);
    for (auto& kh : kept)
      for (int32_t i = 0; i < w; i++) kh.push_back(mp + i);
  }
  const int32_t P = opts_.page_size;
  int32_t need = 0;
  for (auto& kh : kept) need += ((int32_t)kh.size() + P - 1) / P;
  std::vector<int32_t> pages;
  if (!pool_.alloc_n(need, pages)) {
    s.finish = Finish::Failed;  // reported by the step; pages released there
    return;
  }
  size_t pi = 0;
  std::vector<int32_t> dst_page, dst_slot;
  for (int32_t g = 0; g < c.Hk; g++) {
    HeadCache& hc = s.cache.at(l, g);
    KVF_CHECK(hc.len() == 0, "prefill into a non-empty head cache");
    const auto& kh = kept[g];
    const int32_t np = ((int32_t)kh.size() + P - 1) / P;
    for (int32_t p = 0; p < np; p++) hc.pages.push_back(pages[pi++]);
    dst_page.resize(kh.size());
    dst_slot.resize(kh.size());
    for (size_t i = 0; i < kh.size(); i++) {
      dst_page[i] = hc.pages[i / P];
      dst_slot[i] = (int32_t)(i % P);
    }
    hc.pos = kh;
    backend_->kv_write(kv_, k + (size_t)g * c.d, v + (size_t)g * c.d, (int64_t)c.Hk * c.d, kh.data(),
                       dst_page.data(), dst_slot.data(), (int32_t)kh.size());
  }
  note_pages(s);
}

void Engine::run_layer(int32_t l, Work& w) {
  const auto& c = model_->cfg;
  const LayerWeights& lw = model_->layers[l];
  const int32_t D = c.D, Hd = c.H * c.d, Hkd = c.Hk * c.d, F = c.F;
  // active rows: decode rows, then the blocks whose layer range holds l; adjacent ones merged into ranges
  std::vector<std::pair<int32_t, int32_t>> ranges;
  auto push = [&](int32_t a, int32_t b) {
    if (a == b) return;
    if (!ranges.empty() && ranges.back().second == a) ranges.back().second = b;
    else ranges.push_back({a, b});
  };
  push(0, (int32_t)w.dec.size());
  for (auto& blk : w.pre)
    if (blk.l0 <= l && l < blk.l1 && blk.s->finish != Finish::Failed) push(blk.row0, blk.row0 + blk.n);

  for (auto [r0, r1] : ranges) {
    const int32_t T = r1 - r0;
    float* x = w.x + (size_t)r0 * D;
    float* xn = w.xn + (size_t)r0 * D;
    float* q = w.q + (size_t)r0 * Hd;
    float* k = w.k + (size_t)r0 * Hkd;
    float* v = w.v + (size_t)r0 * Hkd;
    backend_->rmsnorm(xn, x, attn_norm_[l], T, D, c.rms_eps);
    backend_->matmul(q, xn, T, lw.wq, bq_[l]);
    backend_->matmul(k, xn, T, lw.wk, bk_[l]);
    backend_->matmul(v, xn, T, lw.wv, bv_[l]);
    backend_->rope(q, w.pos.data() + r0, T, c.H, rope_);
    backend_->rope(k, w.pos.data() + r0, T, c.Hk, rope_);
  }
  for (size_t b = 0; b < w.dec.size(); b++)  // decode-cap rings
    if (w.dec[b]->capped()) push_queries(*w.dec[b], l, w.pos[b], 1, w.q + b * (size_t)Hd);

  // decode rows: append this token's K/V to each head's pages, then attend over each head's own length
  const int32_t Bd = (int32_t)w.dec.size();
  if (Bd > 0) {
    const int32_t P = opts_.page_size;
    std::vector<PagedHead> heads((size_t)Bd * c.Hk);
    // one write for the whole batch: token (b, g) is row b * Hk + g of w.k / w.v viewed as [Bd * Hk, d]
    std::vector<int32_t> src_row((size_t)Bd * c.Hk), dst_page((size_t)Bd * c.Hk), dst_slot((size_t)Bd * c.Hk);
    for (int32_t b = 0; b < Bd; b++) {
      Sequence& s = *w.dec[b];
      for (int32_t g = 0; g < c.Hk; g++) {
        HeadCache& hc = s.cache.at(l, g);
        const int32_t slot = hc.len() % P;
        if (slot == 0 && hc.len() == (int32_t)hc.pages.size() * P) {
          KVF_CHECK(!s.append_pages.empty(), "decode append without a reserved page");
          hc.pages.push_back(s.append_pages.back());
          s.append_pages.pop_back();
        }
        const size_t i = (size_t)b * c.Hk + g;
        src_row[i] = (int32_t)i;
        dst_page[i] = hc.pages[hc.len() / P];
        dst_slot[i] = slot;
        hc.pos.push_back(w.pos[b]);
        heads[i] = PagedHead{hc.pages.data(), hc.len()};
      }
      note_pages(s);
    }
    backend_->kv_write(kv_, w.k, w.v, c.d, src_row.data(), dst_page.data(), dst_slot.data(), Bd * c.Hk);
    backend_->attn_decode(w.attn, w.q, Bd, c.H, c.Hk, heads.data(), kv_);
    if (w.want_attn) {
      const size_t row = (size_t)c.H * c.d;
      for (int32_t b = 0; b < Bd; b++)
        backend_->download(w.dec_attn.data() + ((size_t)b * c.L + l) * row, w.attn + (size_t)b * row, row * sizeof(float));
    }
  }
  for (auto& blk : w.pre) {
    if (!(blk.l0 <= l && l < blk.l1) || blk.s->finish == Finish::Failed) continue;
    prefill_attention_and_cache(l, *blk.s, w.q + (size_t)blk.row0 * Hd, w.k + (size_t)blk.row0 * Hkd,
                                w.v + (size_t)blk.row0 * Hkd, w.attn + (size_t)blk.row0 * Hd, blk.n);
  }

  for (auto [r0, r1] : ranges) {
    const int32_t T = r1 - r0;
    float* x = w.x + (size_t)r0 * D;
    float* xn = w.xn + (size_t)r0 * D;
    float* o = w.o + (size_t)r0 * D;
    backend_->matmul(o, w.attn + (size_t)r0 * Hd, T, lw.wo, nullptr);
    backend_->add(x, o, (int64_t)T * D);
    backend_->rmsnorm(xn, x, mlp_norm_[l], T, D, c.rms_eps);
    float* gate = w.gate + (size_t)r0 * F;
    float* upb = w.up + (size_t)r0 * F;
    backend_->matmul(gate, xn, T, lw.w_gate, nullptr);
    backend_->matmul(upb, xn, T, lw.w_up, nullptr);
    backend_->silu_mul(gate, gate, upb, (int64_t)T * F);
    backend_->matmul(o, gate, T, lw.w_down, nullptr);
    backend_->add(x, o, (int64_t)T * D);
  }
}

// The row's draw for the backend's sample op: inactive while a forced resume token is due (no draw is needed).
SampleRow Engine::sample_row(const Sequence& s) const {
  SampleRow row;
  row.temperature = s.sampling.temperature;
  row.top_p = s.sampling.top_p;
  row.top_k = s.sampling.top_k;
  row.seed = s.sampling.seed;
  row.position = s.prompt.size() + s.generated.size();
  row.active = s.forced.empty();
  return row;
}

// sampled: the backend's token for this row (ignored while a forced resume token is due); logits_host: the row's
// logits when the caller asked for them (else null).
void Engine::finish_token(Sequence& s, StepSeqResult& r, int32_t sampled, const float* logits_host) {
  const auto& c = model_->cfg;
  if (logits_host) r.logits.assign(logits_host, logits_host + c.V);
  int32_t tok;
  if (!s.forced.empty()) {
    tok = s.forced.front();
    s.forced.pop_front();
    r.forced = true;
  } else {
    KVF_CHECK(sampled >= 0 && sampled < c.V, "the backend's sample op returned a token outside the vocabulary");
    tok = sampled;
  }
  s.generated.push_back(tok);
  r.token = tok;
  if (!s.sampling.ignore_eos && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), tok) != c.eos_token_ids.end())
    s.finish = Finish::Eos;
  else if (std::find(s.sampling.stop_ids.begin(), s.sampling.stop_ids.end(), tok) != s.sampling.stop_ids.end())
    s.finish = Finish::Stop;
  else if ((int32_t)s.generated.size() >= s.sampling.max_new_tokens)
    s.finish = Finish::Length;
  if (!s.forced.empty() && s.finish != Finish::None) s.finish = Finish::None;  // the replay must go on
  r.finish = s.finish;
}

StepResult Engine::step(const std::vector<StepSeq>& batch, bool want_logits, bool want_attn) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto& c = model_->cfg;
  StepResult res;
  Work w;
  std::vector<StepSeqResult> dec_res, pre_res;
  // plan: decode rows first (each reserves the pages its append needs, all or nothing), then prefill blocks
  std::vector<const StepSeq*> seen;
  for (const StepSeq& ss : batch) {
    Sequence& s = get(ss.id);
    for (const StepSeq* o : seen)
      if (o->id == ss.id) bad_argument("sequence " + std::to_string(ss.id) + " appears twice in one step");
    seen.push_back(&ss);
    if (s.finish != Finish::None) bad_argument("sequence " + std::to_string(ss.id) + " has finished");
    if (s.prefilling) continue;
    StepSeqResult r;
    r.id = s.id;
    KVF_CHECK(s.append_pages.empty(), "stale append reservation");
    if (!pool_.alloc_n(s.cache.pages_for_append(), s.append_pages)) {
      r.out_of_pages = true;  // not advanced; the scheduler waits or preempts
      res.seqs.push_back(r);
      continue;
    }
    w.dec.push_back(&s);
    w.dec_tok.push_back(s.generated.back());
    w.pos.push_back(s.positions);
    dec_res.push_back(r);
  }
  int32_t row = (int32_t)w.dec.size();
  for (const StepSeq& ss : batch) {
    Sequence& s = get(ss.id);
    if (!s.prefilling) continue;
    const int32_t n = (int32_t)s.prompt.size();
    const int32_t l1 = ss.max_layers > 0 ? std::min(c.L, s.layers_done + ss.max_layers) : c.L;
    w.pre.push_back({&s, row, n, s.layers_done, l1});
    for (int32_t i = 0; i < n; i++) w.pos.push_back(i);
    row += n;
    StepSeqResult r;
    r.id = s.id;
    pre_res.push_back(r);
  }
  w.T = row;
  w.want_attn = want_attn;
  if (want_attn) w.dec_attn.assign(w.dec.size() * c.L * c.H * c.d, 0.f);
  res.decode_rows = (int32_t)w.dec.size();
  res.prefill_rows = w.T - res.decode_rows;
  if (w.T > 0) {
    const size_t T = (size_t)w.T;
    w.x = scratch(kX, T * c.D);
    w.xn = scratch(kXn, T * c.D);
    w.q = scratch(kQ, T * c.H * c.d);
    w.k = scratch(kK, T * c.Hk * c.d);
    w.v = scratch(kV, T * c.Hk * c.d);
    w.attn = scratch(kAttn, T * c.H * c.d);
    w.o = scratch(kO, T * c.D);
    w.gate = scratch(kGate, T * c.F);
    w.up = scratch(kUp, T * c.F);
    if (!w.dec.empty()) backend_->embed(w.x, w.dec_tok.data(), (int32_t)w.dec.size(), model_->embed);
    for (auto& blk : w.pre) {
      float* xb = w.x + (size_t)blk.row0 * c.D;
      if (blk.l0 == 0) backend_->embed(xb, blk.s->prompt.data(), blk.n, model_->embed);
      else backend_->copy(xb, blk.s->hidden, (size_t)blk.n * c.D * sizeof(float));
    }
    int32_t lmax = w.dec.empty() ? 0 : c.L;
    int32_t lmin = w.dec.empty() ? c.L : 0;
    for (auto& blk : w.pre) {
      lmax = std::max(lmax, blk.l1);
      lmin = std::min(lmin, blk.l0);
    }
    for (int32_t l = lmin; l < lmax; l++) run_layer(l, w);

    // rows that produce a token: every decode row, and the last row of each prefill that reached the top
    std::vector<int32_t> out_rows;
    std::vector<StepSeqResult*> out_res;
    std::vector<Sequence*> out_seq;
    for (size_t b = 0; b < w.dec.size(); b++) {
      if (want_attn) {
        const size_t n = (size_t)c.L * c.H * c.d;
        dec_res[b].attn.assign(w.dec_attn.begin() + b * n, w.dec_attn.begin() + (b + 1) * n);
      }
      out_rows.push_back((int32_t)b);
      out_res.push_back(&dec_res[b]);
      out_seq.push_back(w.dec[b]);
    }
    for (size_t i = 0; i < w.pre.size(); i++) {
      auto& blk = w.pre[i];
      Sequence& s = *blk.s;
      if (s.finish == Finish::Failed) {
        fail_sequence(s, pre_res[i]);
        continue;
      }
      s.layers_done = blk.l1;
      if (blk.l1 == c.L) {
        if (s.hidden) {
          backend_->free(s.hidden);
          s.hidden = nullptr;
        }
        s.prefilling = false;
        s.positions = blk.n;
        pre_res[i].prefill_done = true;
        out_rows.push_back(blk.row0 + blk.n - 1);
        out_res.push_back(&pre_res[i]);
        out_seq.push_back(&s);
      } else {
        if (!s.hidden) s.hidden = static_cast<float*>(backend_->alloc((size_t)blk.n * c.D * sizeof(float)));
        backend_->copy(s.hidden, w.x + (size_t)blk.row0 * c.D, (size_t)blk.n * c.D * sizeof(float));
      }
    }
    for (Sequence* s : w.dec) {
      s->positions++;
      if (s->capped()) apply_decode_cap(*s);
    }
    if (!out_rows.empty()) {
      const int32_t R = (int32_t)out_rows.size();
      float* xr = scratch(kXr, (size_t)R * c.D);
      for (int32_t i = 0; i < R;) {  // one copy per run of consecutive rows (all decode rows are one run)
        int32_t j = i + 1;
        while (j < R && out_rows[j] == out_rows[j - 1] + 1) j++;
        backend_->copy(xr + (size_t)i * c.D, w.x + (size_t)out_rows[i] * c.D, (size_t)(j - i) * c.D * sizeof(float));
        i = j;
      }
      float* xrn = scratch(kXrn, (size_t)R * c.D);
      backend_->rmsnorm(xrn, xr, final_norm_, R, c.D, c.rms_eps);
      float* logits_dev = scratch(kLogits, (size_t)R * c.V);
      backend_->matmul(logits_dev, xrn, R, model_->lm_head, nullptr);
      // tokens are picked where the logits are; only R ids come back (the logits too when asked for)
      std::vector<SampleRow> rows((size_t)R);
      for (int32_t i = 0; i < R; i++) rows[i] = sample_row(*out_seq[i]);
      std::vector<int32_t> toks((size_t)R);
      backend_->sample(logits_dev, R, c.V, rows.data(), c.final_logit_softcap, toks.data());
      std::vector<float> logits;
      if (want_logits) {
        logits.resize((size_t)R * c.V);
        backend_->download(logits.data(), logits_dev, logits.size() * sizeof(float));
      }
      for (int32_t i = 0; i < R; i++)
        finish_token(*out_seq[i], *out_res[i], toks[i], want_logits ? logits.data() + (size_t)i * c.V : nullptr);
    }
  }
  // pages reserved for appends but not used (a head whose page had room) go back
  for (Sequence* s : w.dec) {
    for (int32_t p : s->append_pages) pool_.free(p);
    s->append_pages.clear();
  }
  for (auto& r : dec_res) res.seqs.push_back(std::move(r));
  for (auto& r : pre_res) res.seqs.push_back(std::move(r));
  res.sequences = (int32_t)(w.dec.size() + w.pre.size());
  res.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

// Copies the query rows of positions [p0, p0 + count) (backend memory, [count, H, d]) into the layer's ring slots
// p % w: at most two copies (the ring wraps once), no synchronisation.
void Engine::push_queries(Sequence& s, int32_t l, int32_t p0, int32_t count, const float* q_rows) {
  const auto& c = model_->cfg;
  const int32_t w = s.budget.window;
  const size_t row = (size_t)c.H * c.d;
  if (count <= 0) return;
  KVF_CHECK(count <= w, "more queries than the decode-cap ring holds");
  if (!s.qring) s.qring = static_cast<float*>(backend_->alloc((size_t)c.L * w * row * sizeof(float)));
  ring_copy(s, l, p0, count, const_cast<float*>(q_rows), true);
}

// Copies the query rows of positions [p0, p0 + count) (count <= w) between a dense buffer rows [count, H, d] and
// layer l's ring slots p % w, into the ring or out of it: one copy per contiguous run, at most two (one wrap).
void Engine::ring_copy(Sequence& s, int32_t l, int32_t p0, int32_t count, float* rows, bool into_ring) {
  const auto& c = model_->cfg;
  const int32_t w = s.budget.window;
  const size_t row = (size_t)c.H * c.d;
  float* ring = s.qring + (size_t)l * w * row;
  for (int32_t i = 0; i < count;) {
    const int32_t slot = (p0 + i) % w, run = std::min(count - i, w - slot);
    float *r = ring + (size_t)slot * row, *d = rows + (size_t)i * row;
    backend_->copy(into_ring ? r : d, into_ring ? d : r, (size_t)run * row * sizeof(float));
    i += run;
  }
}

// Evicts layers whose mean per-head length passed D + P down to a mean of D (the newest w tokens of every head
// protected), then compacts. Uniform methods give every head D; Ada methods allocate as prefill does.
void Engine::apply_decode_cap(Sequence& s) {
  const auto& c = model_->cfg;
  const int32_t D = s.budget.decode_max_tokens_per_head, P = opts_.page_size, w = s.budget.window;
  for (int32_t l = 0; l < c.L; l++) {
    int64_t sum = 0;
    for (int32_t g = 0; g < c.Hk; g++) sum += s.cache.at(l, g).len();
    if (sum <= (int64_t)(D + P) * c.Hk) continue;
    // queries of the last wq positions, in position order: [wq, H, d] (at most two copies out of the ring)
    const int32_t wq = std::min(w, s.positions);
    const size_t row = (size_t)c.H * c.d;
    const int32_t G = c.H / c.Hk;
    KVF_CHECK(s.qring != nullptr, "decode cap without a query ring");
    float* qwin = scratch(kQwin, (size_t)wq * row);
    std::vector<int32_t> qpos(wq);
    for (int32_t i = 0; i < wq; i++) qpos[i] = s.positions - wq + i;
    ring_copy(s, l, qpos[0], wq, qwin, false);
    int32_t max_len = 0;
    for (int32_t g = 0; g < c.Hk; g++) max_len = std::max(max_len, s.cache.at(l, g).len());
    float* keys = scratch(kKeys, (size_t)max_len * c.d);  // one head's cached keys, gathered where the pages are
    std::vector<std::vector<float>> S(c.Hk);
    std::vector<int32_t> protect(c.Hk);
    for (int32_t g = 0; g < c.Hk; g++) {
      const HeadCache& hc = s.cache.at(l, g);
      const int32_t len = hc.len();
      protect[g] = std::min(w, len);
      const int32_t mp = len - protect[g];
      S[g].resize(mp);
      if (mp == 0) continue;
      std::vector<int32_t> page(len), slot(len);
      for (int32_t i = 0; i < len; i++) {
        page[i] = hc.pages[i / P];
        slot[i] = i % P;
      }
      backend_->kv_gather(kv_, page.data(), slot.data(), len, keys, nullptr);
      // KV head g's G query heads are columns [g * G * d, (g + 1) * G * d) of each window row
      backend_->snapkv_scores(qwin + (size_t)g * G * c.d, (int64_t)row, qpos.data(), wq, keys, hc.pos.data(), len, mp,
                              G, 1, c.d, s.budget.pooling, s.budget.gqa_reduce, s.budget.pool_kernel, S[g].data());
    }
    std::vector<std::vector<int32_t>> kept;
    allocate_ragged(S, std::max(0, D - w), s.budget.floor_alpha, method_is_ada(s.budget.method), kept);
    // plan every head first (no side effects), then apply
    std::vector<HeadCompaction> plans(c.Hk);
    for (int32_t g = 0; g < c.Hk; g++) {
      const HeadCache& hc = s.cache.at(l, g);
      for (int32_t i = hc.len() - protect[g]; i < hc.len(); i++) kept[g].push_back(i);
      plans[g] = plan_compaction(hc.pages, hc.pos, kept[g], P);
    }
    for (int32_t g = 0; g < c.Hk; g++) {
      HeadCompaction& pl = plans[g];
      HeadCache& hc = s.cache.at(l, g);
      if (!pl.src_page.empty())
        backend_->kv_copy(kv_, pl.src_page.data(), pl.src_slot.data(), pl.dst_page.data(), pl.dst_slot.data(),
                          (int32_t)pl.src_page.size());
      for (int32_t p : pl.free_pages) pool_.free(p);
      hc.pages = std::move(pl.new_pages);
      hc.pos = std::move(pl.new_pos);
    }
    s.recompressions++;
  }
}

SeqStats Engine::seq_stats(int64_t id) const {
  const Sequence& s = get(id);
  const auto& c = model_->cfg;
  SeqStats st;
  st.id = id;
  st.prompt_tokens = (int32_t)s.prompt.size();
  st.generated_tokens = (int32_t)s.generated.size();
  st.positions = s.prefilling ? 0 : s.positions;
  st.kept_tokens = s.cache.tokens_held();
  st.full_tokens = (int64_t)c.L * c.Hk * st.positions;
  int32_t mn = INT32_MAX, mx = 0;
  for (const auto& h : s.cache.heads) {
    mn = std::min(mn, h.len());
    mx = std::max(mx, h.len());
  }
  st.min_head_tokens = s.cache.heads.empty() ? 0 : mn;
  st.max_head_tokens = mx;
  st.pages = s.cache.pages_held();
  st.peak_pages = s.peak_pages;
  st.layers_done = s.layers_done;
  st.prefilling = s.prefilling;
  st.finish = s.finish;
  st.recompressions = s.recompressions;
  return st;
}

PoolStats Engine::pool_stats() const {
  PoolStats p;
  p.total_pages = pool_.total();
  p.free_pages = pool_.num_free();
  p.page_size = opts_.page_size;
  p.num_layers = model_->cfg.L;
  p.num_kv_heads = model_->cfg.Hk;
  p.head_dim = model_->cfg.d;
  p.page_bytes = (int64_t)kv_.page_bytes();
  p.sequences = (int32_t)seqs_.size();
  return p;
}

const HeadCache& Engine::head(int64_t id, int32_t layer, int32_t head) const {
  const Sequence& s = get(id);
  if (layer < 0 || layer >= model_->cfg.L || head < 0 || head >= model_->cfg.Hk)
    bad_argument("layer " + std::to_string(layer) + " / KV head " + std::to_string(head) + " out of range");
  return s.cache.at(layer, head);
}

std::vector<int32_t> Engine::head_positions(int64_t id, int32_t layer, int32_t h) const { return head(id, layer, h).pos; }

std::vector<int32_t> Engine::head_pages(int64_t id, int32_t layer, int32_t h) const { return head(id, layer, h).pages; }

void Engine::head_kv(int64_t id, int32_t layer, int32_t h, std::vector<float>& k, std::vector<float>& v) {
  const HeadCache& hc = head(id, layer, h);
  const int32_t len = hc.len(), P = opts_.page_size;
  std::vector<int32_t> page(len), slot(len);
  for (int32_t i = 0; i < len; i++) {
    page[i] = hc.pages[i / P];
    slot[i] = i % P;
  }
  k.resize((size_t)len * kv_.d);
  v.resize((size_t)len * kv_.d);
  backend_->kv_read(kv_, page.data(), slot.data(), len, k.data(), v.data());
}

}  // namespace kvf
