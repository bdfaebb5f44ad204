// Launchers of the CUDA backend's kernels. All pointers are device memory; every launcher queues its kernels on
// st.s and checks the launch. Letters as in common.h: T rows, D model dim, H/Hk query/KV heads, G = H / Hk, d head
// dim, P page size, n prompt length, w window, m keys.
//
// Reference of every kernel: the same op of the CPU backend (cpu_ops.cc; snapkv: compress.cc), compared by
// csrc/tests/gpu_check.cc.
#pragma once
#include <cstdint>

#include "cuda_util.cuh"
#include "ops.h"

namespace kvf {
namespace cuda {

// ---- elementwise.cu ----
// out[T, D] = emb[ids[T], :] widened to fp32 (F32/F16/BF16 rows).
void launch_embed(const Stream& st, float* out, const int32_t* ids, int32_t T, const void* emb, DType dt, int32_t D);
// out[T, D] = x / sqrt(mean(x^2) + eps) * w
void launch_rmsnorm(const Stream& st, float* out, const float* x, const float* w, int32_t T, int32_t D, float eps);
// x[T, nh, d] rotated in place (HF rotate-half) at positions pos[T], angles double(pos) * double(inv_freq[d/2]).
void launch_rope(const Stream& st, float* x, const int32_t* pos, const float* inv_freq, int32_t T, int32_t nh,
                 int32_t d);
void launch_silu_mul(const Stream& st, float* out, const float* gate, const float* up, int64_t n);
void launch_add(const Stream& st, float* x, const float* y, int64_t n);
// Page writes/moves/reads (KVStoreDesc layout: [pages][2][P][d]).
void launch_kv_write(const Stream& st, const KVStoreDesc& kv, const float* k, const float* v, int64_t row_stride,
                     const int32_t* src_row, const int32_t* dst_page, const int32_t* dst_slot, int32_t count);
// sequential = true: moves applied one after another in the given order (some move reads a slot an earlier or
// later move writes); false: the moves touch disjoint slots and run in parallel (same result).
void launch_kv_copy(const Stream& st, const KVStoreDesc& kv, const int32_t* src_page, const int32_t* src_slot,
                    const int32_t* dst_page, const int32_t* dst_slot, int32_t count, bool sequential);
// v_out may be null (keys only).
void launch_kv_read(const Stream& st, const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count,
                    float* k_out, float* v_out);

// ---- matmul.cu ----
// out[M, N] = x[M, K] @ W[N, K]^T (+ bias[N]), fp32 accumulation. F16/BF16 weights with K % 8 == 0: tensor cores
// (mma.sync m16n8k16), activations rounded to the weight dtype, or (split) as hi + lo pairs of that dtype
// (about 22 bits for F16, 16 for BF16). F32 weights, or K % 8 != 0: an fp32 SIMT kernel. Batch-invariant: every
// output element is one accumulator fed k-chunks in ascending order, whatever M is and whichever tile computes it.
// planes: workspace for the converted activations (grown as needed).
void launch_matmul(const Stream& st, float* out, const float* x, int32_t M, const void* W, DType wt, int32_t N,
                   int32_t K, const float* bias, bool split, GrowBuffer& planes, int max_smem);

// ---- attention.cu ----
// Causal GQA attention of one sequence: out[n, H, d] from q[n, H, d], k/v[n, Hk, d] (d <= 256).
void launch_attn_prefill(const Stream& st, float* out, const float* q, const float* k, const float* v, int32_t n,
                         int32_t H, int32_t Hk, int32_t d, int max_smem);

// Decode attention is split along each head's tokens in chunks of kDecodeChunk: chunk c of a head covers tokens
// [c * kDecodeChunk, (c + 1) * kDecodeChunk), so the split points depend only on the head's length.
constexpr int kDecodeChunk = 256;
constexpr int kDecodeGroup = 8;  // at most this many query heads of one KV head per block (G > 8: several blocks)
struct DecodeHead {
  int32_t page_off;  // first entry of this head's page list in the flat page array
  int32_t len;       // tokens
  int32_t item0;     // first work item (chunk) of this head
  int32_t nchunks;   // ceil(len / kDecodeChunk)
};
// True when the decode kernel supports head dim d with this page dtype (d <= 256, 16-byte rows of d elements).
bool decode_supports(int32_t d, DType kv_dtype);
// heads[B * Hk], items[n_items * 2] = (head index, chunk), pages: flat page lists.
// ws: n_items * G * (d + 2) floats (partial outputs, then running max and sum per query head).
void launch_attn_decode(const Stream& st, float* out, const float* q, int32_t B, int32_t H, int32_t Hk,
                        const KVStoreDesc& kv, const DecodeHead* heads, const int32_t* items, int32_t n_items,
                        const int32_t* pages, float* ws);

// ---- snapkv.cu ----
// S[Hk, m_prefix] as compress.h's snapkv_scores. visible[w]: keys [0, visible[i]) are visible to window query i.
// Workspace: logits [H, w, m], stats [H, w, 2], R [Hk, m_prefix].
// q_stride: floats from one window query's row to the next (H * d when q is [w, H, d]).
void launch_snapkv(const Stream& st, float* S, const float* q, int64_t q_stride, const float* k, const int32_t* visible,
                   int32_t w, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling,
                   GqaReduce reduce, int32_t kernel, float scale, float* logits, float* stats, float* R);

// Order-preserving map of a float to uint32 (larger float, larger key), -0 folded to +0: compress.cc's ordered_bits
// on the device; the sort keys of select.cu and sampling.cu are built on it.
__device__ __forceinline__ uint32_t ordered_bits(float x) {
  x += 0.0f;  // -0 + 0 = +0 under round-to-nearest
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// ---- select.cu ----
// The Ada-KV allocation of one layer (compress.cc allocate, same keys and tie-breaking) from S [Hk, m] on the
// device: every head's top f, then the best `rest` remaining scores over all heads. out (device): [0] NaN scores
// seen, [1 + h] head h's kept count, then every head's kept positions ascending, head after head.
// out needs 1 + Hk + Hk * m ints; ws: sort keys, flags and CUB's workspace.
void launch_select(const Stream& st, int32_t* out, const float* S, int32_t Hk, int32_t m, int32_t f, int64_t rest,
                   GrowBuffer& ws);

// ---- sampling.cu ----
// One row of a sample call on the device: ops.h's SampleRow with the host-side pieces precomputed.
struct SampleRowDev {
  float temperature;
  float top_p;
  int32_t top_k;
  int32_t active;    // 0: out = -1
  int32_t sort_slot;  // top-k (0 < k < V) or top-p < 1: this row's index among the sorted rows; else -1
  int32_t pad_;
  double invt;       // 1.0 / double(temperature), as sampling.cc computes it
  double u;          // counter_uniform(seed, position)
};
// tokens[R] (device) from logits[R, V] (unchanged), as sampling.cc's sample_token. sort_rows[n_sort]: the rows that
// need the sorted candidate order (row r's sort_slot = its index here); a segmented radix sort of those rows runs
// first. ws: sort keys and CUB's workspace.
void launch_sample(const Stream& st, int32_t* tokens, const float* logits, int32_t R, int32_t V,
                   const SampleRowDev* rows, const int32_t* sort_rows, int32_t n_sort, float softcap, GrowBuffer& ws);

}  // namespace cuda
}  // namespace kvf
