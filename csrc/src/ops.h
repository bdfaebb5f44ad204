// The op table (STYLE.md 4): the engine calls every compute op through this interface; the CPU backend
// (cpu_ops.cc, the reference) and the CUDA backend (cuda/) fill it. The engine does not know which one runs.
//
// Pointers named "dev" live in the backend's memory (host memory for the CPU backend); activations are fp32.
// Every op is batch-invariant: a row's result never depends on the other rows or on how many there are
// (each reduction runs in a fixed order per row).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "compress.h"
#include "model.h"

namespace kvf {

// Where a decode query head reads its keys: the page list and length of one (sequence, layer, KV head).
struct PagedHead {
  const int32_t* pages;  // [ceil(len / P)] page ids (host memory; a device backend copies what it needs)
  int32_t len;           // tokens held
};

// The K/V page storage: [num_pages][2][P][d] in f16 or f32; page p's K rows start at p*2*P*d, its V rows P*d later.
struct KVStoreDesc {
  void* base = nullptr;  // backend memory
  DType dtype = DType::F16;
  int32_t P = 16, d = 0;
  int64_t num_pages = 0;
  size_t page_elems() const { return (size_t)2 * P * d; }
  size_t page_bytes() const { return page_elems() * dtype_size(dtype); }
};

enum class Op : int32_t {
  Embed, RmsNorm, MatMul, Rope, SiluMul, Add, AttnPrefill, AttnDecode, KvWrite, KvCopy, KvGather, SnapkvScores,
  SnapkvSelect, Sample, Count
};
const char* op_name(Op op);

// One row of a sampling call: the request's sampling parameters (validated by validate_sampling) and the draw's
// position in the sequence. active = false: the row's token is not needed (a forced resume token); its output is -1.
struct SampleRow {
  float temperature = 0.f;  // 0 = greedy
  float top_p = 1.f;
  int32_t top_k = 0;
  uint64_t seed = 0;
  uint64_t position = 0;
  bool active = true;
};

struct RopeParams {
  int32_t d = 0;
  std::vector<float> inv_freq;  // [d/2] theta^(-2i/d), llama3-scaled when configured (computed in double)
};
RopeParams make_rope(const ModelConfig& cfg);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual bool supports(Op op) const = 0;

  // memory
  virtual void* alloc(size_t bytes) = 0;  // throws Internal on failure (never managed memory)
  virtual void free(void* p) = 0;
  virtual void upload(void* dst_dev, const void* src_host, size_t bytes) = 0;
  virtual void download(void* dst_host, const void* src_dev, size_t bytes) = 0;
  virtual void copy(void* dst_dev, const void* src_dev, size_t bytes) = 0;  // within backend memory
  virtual void sync() = 0;

  // out[T, D] = rows ids[T] of the embedding (any dtype), widened to fp32.
  virtual void embed(float* out, const int32_t* ids_host, int32_t T, const Weight& emb) = 0;
  // out[T, D] = x / sqrt(mean(x^2) + eps) * w   (w: [D] fp32, backend memory)
  virtual void rmsnorm(float* out, const float* x, const float* w, int32_t T, int32_t D, float eps) = 0;
  // out[T, N] = x[T, K] @ W[N, K]^T (+ bias[N]); W in its file dtype; fp32 accumulation.
  virtual void matmul(float* out, const float* x, int32_t T, const Weight& W, const float* bias) = 0;
  // x[T, nh, d] rotated in place at positions pos[T] (HF rotate-half convention).
  virtual void rope(float* x, const int32_t* pos_host, int32_t T, int32_t nh, const RopeParams& rp) = 0;
  // out[T, F] = silu(gate) * up, where gu = [T, 2F] holds gate then up per row... kept separate for clarity:
  virtual void silu_mul(float* out, const float* gate, const float* up, int64_t n) = 0;
  // x[n] += y[n]
  virtual void add(float* x, const float* y, int64_t n) = 0;
  // Causal GQA attention of one sequence over its n-token scratch: out[n, H, d] from q[n, H, d], k/v[n, Hk, d].
  virtual void attn_prefill(float* out, const float* q, const float* k, const float* v, int32_t n, int32_t H,
                            int32_t Hk, int32_t d) = 0;
  // Paged decode attention for B rows: row b's query q[b, H, d] attends, for KV head g, to heads[b * Hk + g].
  virtual void attn_decode(float* out, const float* q, int32_t B, int32_t H, int32_t Hk,
                           const PagedHead* heads_host, const KVStoreDesc& kv) = 0;
  // Writes count tokens into pages: token i's K = k[src_row[i] * row_stride .. + d], V likewise, goes to page
  // dst_page[i], slot dst_slot[i].
  virtual void kv_write(const KVStoreDesc& kv, const float* k, const float* v, int64_t row_stride,
                        const int32_t* src_row_host, const int32_t* dst_page_host, const int32_t* dst_slot_host,
                        int32_t count) = 0;
  // Moves count tokens between page slots (compaction): (src_page, src_slot) -> (dst_page, dst_slot).
  virtual void kv_copy(const KVStoreDesc& kv, const int32_t* src_page_host, const int32_t* src_slot_host,
                       const int32_t* dst_page_host, const int32_t* dst_slot_host, int32_t count) = 0;
  // Gathers count tokens' K (and V unless v_out is null) as fp32 rows into backend memory: k_out/v_out [count, d].
  // The decode cap scores a head's cached keys where they are.
  virtual void kv_gather(const KVStoreDesc& kv, const int32_t* page_host, const int32_t* slot_host, int32_t count,
                         float* k_out, float* v_out) = 0;
  // Reads count tokens' K and V (unless v_out is null) back as fp32 (tests, inspection): [count, d] host memory.
  virtual void kv_read(const KVStoreDesc& kv, const int32_t* page_host, const int32_t* slot_host, int32_t count,
                       float* k_out_host, float* v_out_host) = 0;
  // SnapKV scores of one layer (compress.h's snapkv_scores, same semantics and argument checks): q [w, H, d] and
  // k [m, Hk, d] in backend memory, positions and S [Hk, m_prefix] in host memory. q_stride: floats from one window
  // query to the next (H * d for a dense [w, H, d]; larger when q is H of a wider row's heads, as the decode cap's
  // per-KV-head scoring reads G of a row's H heads). The decode cap uses it; prefill uses snapkv_select.
  virtual void snapkv_scores(const float* q, int64_t q_stride, const int32_t* qpos_host, int32_t w, const float* k,
                             const int32_t* kpos_host, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d,
                             Pooling pooling, GqaReduce reduce, int32_t kernel, float* S_host) = 0;
  // SnapKV scores and the allocation of one layer in one op: snapkv_scores (same arguments), then compress.h's
  // allocate(S, Hk, m_prefix, Bp, alpha, ada) over them, with the same checks and tie-breaking, so every backend keeps
  // the same positions. The scores stay in backend memory; only kept[Hk] (ascending prefix positions) comes back.
  virtual void snapkv_select(const float* q, const int32_t* qpos_host, int32_t w, const float* k,
                             const int32_t* kpos_host, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d,
                             Pooling pooling, GqaReduce reduce, int32_t kernel, int32_t Bp, float alpha, bool ada,
                             std::vector<std::vector<int32_t>>& kept) = 0;
  // Picks one token per row from logits [R, V] (backend memory, left unchanged) as sampling.h's sample_token does
  // (soft-cap, greedy argmax with the lower id on ties, or temperature with top-k / top-p over the candidates in
  // descending logit order, ties by lower id, and the counter-based draw for (seed, position)). tokens: [R] host.
  // The CPU backend is sample_token itself. Greedy rows are exact on every backend; a sampled row can differ from
  // the CPU only when the draw falls within rounding (~1e-15 relative) of a boundary between two tokens.
  virtual void sample(const float* logits, int32_t R, int32_t V, const SampleRow* rows_host, float softcap,
                      int32_t* tokens_host) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(int32_t threads);
#ifdef KVF_CUDA
std::unique_ptr<Backend> make_cuda_backend(int32_t device);
#endif

}  // namespace kvf
