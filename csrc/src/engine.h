// The engine: a model, a page pool, the sequences, and the step that advances a batch of them.
//
// One step runs a batch: one decode token for each running sequence plus prefill work of new ones. A prefill
// may be split by layers across steps (ENGINE.md, "Batching"): its residual stream [n, D] waits between steps.
// Prefill compresses layer by layer: only one layer's full-length K/V exists at a time, and only the kept
// tokens are written to pages.
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "compress.h"
#include "model.h"
#include "ops.h"
#include "pagepool.h"
#include "sampling.h"

namespace kvf {

struct EngineOptions {
  int32_t page_size = 16;          // P
  int64_t kv_memory_bytes = 0;     // pool size in bytes, or
  int32_t num_pages = 0;           // an exact page count (wins when > 0)
  DType kv_dtype = DType::F16;     // f16 or f32 pages
  int32_t threads = 0;             // 0 = the runtime's default
  std::string backend = "cpu";     // cpu | cuda
};

enum class Finish : int32_t { None = 0, Length = 1, Stop = 2, Eos = 3, Failed = 5 };

struct SeqStats {
  int64_t id = 0;
  int32_t prompt_tokens = 0, generated_tokens = 0;
  int32_t positions = 0;        // positions computed into the cache (prompt + fed decode tokens)
  int64_t kept_tokens = 0;      // K/V entries held, summed over layers and KV heads
  int64_t full_tokens = 0;      // L * Hk * positions
  int32_t min_head_tokens = 0, max_head_tokens = 0;
  int32_t pages = 0, peak_pages = 0;
  int32_t layers_done = 0;      // prefill progress
  bool prefilling = false;
  Finish finish = Finish::None;
  int32_t recompressions = 0;   // decode-cap recompressions (layer evictions) so far
};

struct PoolStats {
  int32_t total_pages = 0, free_pages = 0, page_size = 0, num_layers = 0, num_kv_heads = 0, head_dim = 0;
  int64_t page_bytes = 0;
  int32_t sequences = 0;
};

struct StepSeq {
  int64_t id = 0;
  int32_t max_layers = 0;  // prefill: layers to run this step (0 = all that remain); ignored for decodes
};

struct StepSeqResult {
  int64_t id = 0;
  int32_t token = -1;          // the token produced this step, -1 when none (prefill not finished, failed)
  bool forced = false;         // the token came from the resume queue (already streamed to the client)
  bool prefill_done = false;   // this step finished the prompt
  bool out_of_pages = false;   // the sequence could not get pages: not advanced (decode) or failed (prefill)
  Finish finish = Finish::None;
  std::vector<float> logits;   // [V] at the sampled position, when requested
  std::vector<float> attn;     // [L, H*d] decode rows' attention outputs (before o_proj), when requested
};

struct StepResult {
  std::vector<StepSeqResult> seqs;
  int32_t decode_rows = 0, prefill_rows = 0, sequences = 0;
  double ms = 0;
};

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, const EngineOptions& opts);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const ModelConfig& config() const { return model_->cfg; }
  const Model& model() const { return *model_; }
  Backend& backend() { return *backend_; }

  // Adds a sequence (validated: prompt non-empty, ids in the vocabulary, room for max_new_tokens, budget,
  // sampling). `forced` are resume tokens: fed as the next outputs instead of sampled ones.
  int64_t add_sequence(const std::vector<int32_t>& prompt, const SamplingSpec& sampling, const BudgetSpec& budget,
                       const std::vector<int32_t>& forced);
  // Returns every page of the sequence and forgets it. Unknown ids are a bad argument.
  void release(int64_t id);
  bool has(int64_t id) const { return seqs_.count(id) != 0; }

  // want_attn: decode rows also return every layer's attention output (the quality benchmark's measure).
  StepResult step(const std::vector<StepSeq>& batch, bool want_logits, bool want_attn = false);

  SeqStats seq_stats(int64_t id) const;
  PoolStats pool_stats() const;
  // Original positions held by (layer, head) of a sequence (tests, debugging).
  std::vector<int32_t> head_positions(int64_t id, int32_t layer, int32_t head) const;
  // Page ids of (layer, head) of a sequence, in order (tests).
  std::vector<int32_t> head_pages(int64_t id, int32_t layer, int32_t head) const;
  const KVStoreDesc& kv_store() const { return kv_; }
  // Reads back the cached K, V of (layer, head) as fp32 [len, d] each (tests).
  void head_kv(int64_t id, int32_t layer, int32_t head, std::vector<float>& k, std::vector<float>& v);

 private:
  struct Sequence;
  struct Work;
  Sequence& get(int64_t id);
  const Sequence& get(int64_t id) const;
  const HeadCache& head(int64_t id, int32_t layer, int32_t head) const;  // range-checked
  void run_layer(int32_t l, Work& w);
  void prefill_attention_and_cache(int32_t l, Sequence& s, float* q, float* k, float* v, float* attn, int32_t n);
  SampleRow sample_row(const Sequence& s) const;
  void finish_token(Sequence& s, StepSeqResult& r, int32_t sampled, const float* logits_host);
  void fail_sequence(Sequence& s, StepSeqResult& r);
  void note_pages(Sequence& s);
  void push_queries(Sequence& s, int32_t l, int32_t p0, int32_t count, const float* q_rows);  // decode-cap ring
  void ring_copy(Sequence& s, int32_t l, int32_t p0, int32_t count, float* rows, bool into_ring);
  void free_buffers(Sequence& s);  // the backend buffers a sequence holds (split-prefill hidden, query ring)
  void apply_decode_cap(Sequence& s);

  std::shared_ptr<Model> model_;
  EngineOptions opts_;
  // Step scratch kept between steps: one backend allocation per slot, reused while it fits and is not far larger
  // than needed (a CUDA allocation and free per buffer per step would cost more than a small decode step).
  enum ScratchSlot : int32_t { kX, kXn, kQ, kK, kV, kAttn, kO, kGate, kUp, kXr, kXrn, kLogits, kQwin, kKeys, kSlots };
  struct Scratch {
    void* p = nullptr;
    size_t bytes = 0;
  };
  Scratch scratch_[kSlots];
  float* scratch(ScratchSlot slot, size_t floats);
  std::unique_ptr<Backend> backend_;
  RopeParams rope_;
  KVStoreDesc kv_;
  PagePool pool_;
  std::map<int64_t, std::unique_ptr<Sequence>> seqs_;
  int64_t next_id_ = 1;
  // backend copies of the fp32 norm weights and biases: [L] each
  std::vector<float*> attn_norm_, mlp_norm_, bq_, bk_, bv_;
  float* final_norm_ = nullptr;
};

}  // namespace kvf
