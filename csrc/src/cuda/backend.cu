// The CUDA backend: the op table (ops.h) filled with the kernels of elementwise.cu, matmul.cu, attention.cu,
// snapkv.cu, select.cu and sampling.cu. Every op runs on the device; none falls back to the CPU.
//
// Memory. Activations, the page pool and the engine's norm weights are cudaMalloc'd buffers (alloc), one cudaMalloc
// per buffer, never managed memory. Weight matrices arrive as host memory (the model's memory maps): each is copied
// to the device once, on first use, and kept for the backend's lifetime, keyed by its host address (the engine
// holds the model, so a weight's host memory outlives the backend and never changes). The host arrays an op takes
// (token ids, positions, page lists, slots) are packed and uploaded per call (Staging); workspaces only grow.
//
// Ordering. All ops of one backend run on one stream in call order; download() and kv_read() wait for it; free()
// waits for it before cudaFree (a queued kernel may still use the buffer). Every call is checked (CUDA_CHECK,
// KVF_AFTER_LAUNCH) and a failure throws Error(Internal) naming the call and the runtime's message.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "cuda_backend.h"
#include "compress.h"
#include "kernels.cuh"
#include "sampling.h"

namespace kvf {

namespace {

using cuda::DecodeHead;
using cuda::SampleRowDev;
using cuda::GrowBuffer;
using cuda::Staging;

class CudaBackend final : public Backend {
 public:
  CudaBackend(int32_t device, const CudaOptions& opts) : dev_(device), split_(opts.matmul_split_activations) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      bad_argument(std::string("backend 'cuda': no usable CUDA device (") + cudaGetErrorString(e) + ")");
    }
    if (device < 0 || device >= n)
      bad_argument("backend 'cuda': device " + std::to_string(device) + " does not exist (" + std::to_string(n) +
                   " CUDA devices)");
    CUDA_CHECK(cudaSetDevice(dev_));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev_));
    if (prop.major < 8)
      bad_argument("backend 'cuda' needs compute capability 8.0 or newer (bf16 tensor-core mma), device " +
                   std::to_string(device) + " (" + prop.name + ") is " + std::to_string(prop.major) + "." +
                   std::to_string(prop.minor));
    max_smem_ = (int)prop.sharedMemPerBlockOptin;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st_.s, cudaStreamNonBlocking));
    st_.sync_each = opts.sync_after_launch;
    if (opts.time_decode_kernels) {
      CUDA_CHECK(cudaEventCreate(&ev_[0]));
      CUDA_CHECK(cudaEventCreate(&ev_[1]));
    }
  }

  ~CudaBackend() override {
    // No throwing here: report nothing, release everything.
    cudaSetDevice(dev_);
    if (st_.s) cudaStreamSynchronize(st_.s);
    for (auto& kv : weights_) cudaFree(kv.second.p);
    for (cudaEvent_t e : ev_)
      if (e) cudaEventDestroy(e);
    if (st_.s) cudaStreamDestroy(st_.s);
  }

  const char* name() const override { return "cuda"; }
  bool supports(Op op) const override { return op != Op::Count; }

  // ---- memory ----
  void* alloc(size_t bytes) override {
    on_device();
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, std::max<size_t>(bytes, 256));
    if (e != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it so the next launch check does not report it
      fail(ErrorKind::Internal, "cudaMalloc of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(e));
    }
    return p;
  }
  // Never throws: it runs in destructors (the engine's, during unwinding too). A failure here means the context is
  // already broken by an earlier fault, which the next checked call reports.
  void free(void* p) override {
    if (!p) return;
    cudaSetDevice(dev_);
    cudaStreamSynchronize(st_.s);  // a queued kernel may still use the buffer
    if (cudaFree(p) != cudaSuccess) cudaGetLastError();
  }
  // Synchronous: the caller may reuse or free src_host as soon as this returns, whatever memory it is.
  void upload(void* dst, const void* src, size_t bytes) override {
    on_device();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st_.s));
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
  }
  void download(void* dst, const void* src, size_t bytes) override {
    on_device();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st_.s));
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0 || dst == src) return;
    const char *d = static_cast<const char*>(dst), *s = static_cast<const char*>(src);
    KVF_CHECK(d + bytes <= s || s + bytes <= d, "Backend::copy between overlapping device ranges");
    on_device();
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st_.s));
  }
  void sync() override {
    on_device();
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
  }

  // ---- ops ----
  void embed(float* out, const int32_t* ids, int32_t T, const Weight& emb) override {
    if (T <= 0) return;
    for (int32_t t = 0; t < T; t++)
      if (ids[t] < 0 || ids[t] >= emb.rows)
        bad_argument("embed: token id " + std::to_string(ids[t]) + " at row " + std::to_string(t) +
                     " is outside the vocabulary [0, " + std::to_string(emb.rows) + ")");
    on_device();
    const void* w = weight_dev(emb);
    stage_.clear();
    const size_t o_ids = stage_.add(ids, (size_t)T * sizeof(int32_t));
    char* base = stage_.upload(st_);
    cuda::launch_embed(st_, out, reinterpret_cast<const int32_t*>(base + o_ids), T, w, emb.dtype, emb.cols);
  }

  void rmsnorm(float* out, const float* x, const float* w, int32_t T, int32_t D, float eps) override {
    on_device();
    cuda::launch_rmsnorm(st_, out, x, w, T, D, eps);
  }

  void matmul(float* out, const float* x, int32_t T, const Weight& W, const float* bias) override {
    if (T <= 0) return;
    on_device();
    const void* w = weight_dev(W);
    cuda::launch_matmul(st_, out, x, T, w, W.dtype, W.rows, W.cols, bias, split_, planes_, max_smem_);
  }

  // Positions and inverse frequencies are the same for q and k and for every layer of a step: they are uploaded
  // only when they differ from the last call's (an upload is ordered after the kernels that read the old ones).
  void rope(float* x, const int32_t* pos, int32_t T, int32_t nh, const RopeParams& rp) override {
    if (T <= 0) return;
    if (rp.d <= 0 || rp.d % 2 != 0 || (int32_t)rp.inv_freq.size() != rp.d / 2)
      bad_argument("rope: head dim " + std::to_string(rp.d) + " must be even with d/2 inverse frequencies");
    on_device();
    const size_t pb = (size_t)T * sizeof(int32_t), fb = rp.inv_freq.size() * sizeof(float);
    const bool same = rope_host_.size() == pb + fb && std::memcmp(rope_host_.data(), pos, pb) == 0 &&
                      std::memcmp(rope_host_.data() + pb, rp.inv_freq.data(), fb) == 0;
    char* dev = static_cast<char*>(rope_dev_.ensure(pb + fb, st_));
    if (!same) {
      rope_host_.clear();  // a failed copy must not leave the cache saying "same"
      std::vector<char> bytes(pb + fb);
      std::memcpy(bytes.data(), pos, pb);
      std::memcpy(bytes.data() + pb, rp.inv_freq.data(), fb);
      CUDA_CHECK(cudaMemcpyAsync(dev, bytes.data(), pb + fb, cudaMemcpyHostToDevice, st_.s));
      rope_host_ = std::move(bytes);
    }
    cuda::launch_rope(st_, x, reinterpret_cast<const int32_t*>(dev), reinterpret_cast<const float*>(dev + pb), T, nh,
                      rp.d);
  }

  void silu_mul(float* out, const float* gate, const float* up, int64_t n) override {
    on_device();
    cuda::launch_silu_mul(st_, out, gate, up, n);
  }

  void add(float* x, const float* y, int64_t n) override {
    on_device();
    cuda::launch_add(st_, x, y, n);
  }

  void attn_prefill(float* out, const float* q, const float* k, const float* v, int32_t n, int32_t H, int32_t Hk,
                    int32_t d) override {
    if (H < 1 || Hk < 1 || H % Hk != 0)
      bad_argument("attn_prefill: H = " + std::to_string(H) + " must be a positive multiple of Hk = " + std::to_string(Hk));
    on_device();
    cuda::launch_attn_prefill(st_, out, q, k, v, n, H, Hk, d, max_smem_);
  }

  // Plans the split: per head, its page list offset, length and ceil(len / chunk) work items, then two kernels.
  void attn_decode(float* out, const float* q, int32_t B, int32_t H, int32_t Hk, const PagedHead* heads,
                   const KVStoreDesc& kv) override {
    if (B <= 0) return;
    if (H < 1 || Hk < 1 || H % Hk != 0)
      bad_argument("attn_decode: H = " + std::to_string(H) + " must be a positive multiple of Hk = " + std::to_string(Hk));
    if (!cuda::decode_supports(kv.d, kv.dtype))
      bad_argument("attn_decode: the CUDA kernel supports head dims up to 256 with 16-byte rows (f16: d % 8 == 0, "
                   "f32: d % 4 == 0), got d = " + std::to_string(kv.d) + " with " + dtype_name(kv.dtype) + " pages");
    const int32_t nh = B * Hk, P = kv.P, G = H / Hk;
    dh_.resize(nh);
    flat_pages_.clear();
    items_.clear();
    for (int32_t i = 0; i < nh; i++) {
      const PagedHead& ph = heads[i];
      KVF_CHECK(ph.len >= 0, "negative head length in attn_decode");
      const int32_t np = (ph.len + P - 1) / P, nc = (ph.len + cuda::kDecodeChunk - 1) / cuda::kDecodeChunk;
      dh_[i] = DecodeHead{(int32_t)flat_pages_.size(), ph.len, (int32_t)(items_.size() / 2), nc};
      for (int32_t p = 0; p < np; p++) {
        KVF_CHECK(ph.pages[p] >= 0 && ph.pages[p] < kv.num_pages, "page id outside the pool in attn_decode");
        flat_pages_.push_back(ph.pages[p]);
      }
      for (int32_t c = 0; c < nc; c++) {
        items_.push_back(i);
        items_.push_back(c);
      }
    }
    const int32_t n_items = (int32_t)(items_.size() / 2);
    on_device();
    stage_.clear();
    const size_t o_h = stage_.add(dh_.data(), dh_.size() * sizeof(DecodeHead));
    const size_t o_i = stage_.add(items_.data(), items_.size() * sizeof(int32_t));
    const size_t o_p = stage_.add(flat_pages_.data(), flat_pages_.size() * sizeof(int32_t));
    char* base = stage_.upload(st_);
    float* ws = static_cast<float*>(decode_ws_.ensure((size_t)std::max(n_items, 1) * G * (kv.d + 2) * sizeof(float), st_));
    if (ev_[0]) CUDA_CHECK(cudaEventRecord(ev_[0], st_.s));
    cuda::launch_attn_decode(st_, out, q, B, H, Hk, kv, reinterpret_cast<const DecodeHead*>(base + o_h),
                             reinterpret_cast<const int32_t*>(base + o_i), n_items,
                             reinterpret_cast<const int32_t*>(base + o_p), ws);
    if (ev_[1]) CUDA_CHECK(cudaEventRecord(ev_[1], st_.s));
  }

  void kv_write(const KVStoreDesc& kv, const float* k, const float* v, int64_t row_stride, const int32_t* src_row,
                const int32_t* dst_page, const int32_t* dst_slot, int32_t count) override {
    if (count <= 0) return;
    check_slots(kv, dst_page, dst_slot, count, "kv_write");
    on_device();
    stage_.clear();
    const size_t o_r = stage_.add(src_row, (size_t)count * sizeof(int32_t));
    const size_t o_p = stage_.add(dst_page, (size_t)count * sizeof(int32_t));
    const size_t o_s = stage_.add(dst_slot, (size_t)count * sizeof(int32_t));
    char* base = stage_.upload(st_);
    cuda::launch_kv_write(st_, kv, k, v, row_stride, reinterpret_cast<const int32_t*>(base + o_r),
                          reinterpret_cast<const int32_t*>(base + o_p), reinterpret_cast<const int32_t*>(base + o_s),
                          count);
  }

  // Moves in the given order. When no move reads a slot another move writes (and no slot is written twice) the
  // order cannot matter and the moves run in parallel; otherwise one block applies them in order.
  void kv_copy(const KVStoreDesc& kv, const int32_t* sp, const int32_t* ss, const int32_t* dp, const int32_t* ds,
               int32_t count) override {
    if (count <= 0) return;
    check_slots(kv, sp, ss, count, "kv_copy (source)");
    check_slots(kv, dp, ds, count, "kv_copy (destination)");
    bool sequential = false;
    std::unordered_map<int64_t, int32_t> dst_of;
    dst_of.reserve((size_t)count * 2);
    for (int32_t i = 0; i < count && !sequential; i++)
      if (!dst_of.emplace((int64_t)dp[i] * kv.P + ds[i], i).second) sequential = true;
    for (int32_t i = 0; i < count && !sequential; i++) {
      auto it = dst_of.find((int64_t)sp[i] * kv.P + ss[i]);
      if (it != dst_of.end() && it->second != i) sequential = true;
    }
    on_device();
    stage_.clear();
    const size_t o_sp = stage_.add(sp, (size_t)count * sizeof(int32_t));
    const size_t o_ss = stage_.add(ss, (size_t)count * sizeof(int32_t));
    const size_t o_dp = stage_.add(dp, (size_t)count * sizeof(int32_t));
    const size_t o_ds = stage_.add(ds, (size_t)count * sizeof(int32_t));
    char* base = stage_.upload(st_);
    cuda::launch_kv_copy(st_, kv, reinterpret_cast<const int32_t*>(base + o_sp),
                         reinterpret_cast<const int32_t*>(base + o_ss), reinterpret_cast<const int32_t*>(base + o_dp),
                         reinterpret_cast<const int32_t*>(base + o_ds), count, sequential);
  }

  void kv_gather(const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count, float* k_out,
                 float* v_out) override {
    gather(kv, page, slot, count, k_out, v_out, "kv_gather");
  }

  void kv_read(const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count, float* k_out,
               float* v_out) override {
    if (count <= 0) return;
    on_device();
    const size_t n = (size_t)count * kv.d;
    float* rb = static_cast<float*>(readback_.ensure(2 * n * sizeof(float), st_));
    gather(kv, page, slot, count, rb, rb + n, "kv_read");
    CUDA_CHECK(cudaMemcpyAsync(k_out, rb, n * sizeof(float), cudaMemcpyDeviceToHost, st_.s));
    if (v_out) CUDA_CHECK(cudaMemcpyAsync(v_out, rb + n, n * sizeof(float), cudaMemcpyDeviceToHost, st_.s));
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
  }

  void snapkv_scores(const float* q, int64_t q_stride, const int32_t* qpos, int32_t w, const float* k,
                     const int32_t* kpos, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d,
                     Pooling pooling, GqaReduce reduce, int32_t kernel, float* S) override {
    if (w > 1 && q_stride < (int64_t)H * d)
      bad_argument("snapkv_scores: q_stride " + std::to_string(q_stride) + " < H * d = " + std::to_string(H * d));
    const float* Sd = scores_dev(q, q_stride, qpos, w, k, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel);
    if (!Sd) return;
    CUDA_CHECK(cudaMemcpyAsync(S, Sd, (size_t)Hk * m_prefix * sizeof(float), cudaMemcpyDeviceToHost, st_.s));
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
  }

  // Scores, then the allocation on the device (select.cu); one copy brings back [NaN count, count per head, kept
  // positions of every head].
  void snapkv_select(const float* q, const int32_t* qpos, int32_t w, const float* k, const int32_t* kpos, int32_t m,
                     int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling, GqaReduce reduce,
                     int32_t kernel, int32_t Bp, float alpha, bool ada, std::vector<std::vector<int32_t>>& kept) override {
    const float* Sd = scores_dev(q, (int64_t)H * d, qpos, w, k, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel);
    check_allocate_args(Hk, m_prefix, Bp, alpha);  // after the scoring checks, in the CPU's order
    kept.assign((size_t)Hk, {});
    if (!Sd || Bp == 0) return;
    const int32_t f = ada ? safeguard_floor(alpha, Bp) : Bp;
    const int64_t rest = (int64_t)Hk * (Bp - f);
    const size_t n_out = 1 + (size_t)Hk + (size_t)Hk * m_prefix;  // room for any split of the kept total
    int32_t* out = static_cast<int32_t*>(select_out_.ensure(n_out * sizeof(int32_t), st_));
    cuda::launch_select(st_, out, Sd, Hk, m_prefix, f, rest, select_ws_);
    std::vector<int32_t> head((size_t)1 + Hk + (size_t)Hk * Bp);
    CUDA_CHECK(cudaMemcpyAsync(head.data(), out, head.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, st_.s));
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
    if (head[0] > 0) bad_argument("allocate: " + std::to_string(head[0]) + " scores are NaN");
    int64_t sum = 0;
    for (int32_t g = 0; g < Hk; g++) sum += head[1 + g];
    KVF_CHECK(sum == (int64_t)Hk * Bp, "device allocation total differs from Hk * Bp");
    const int32_t* pos = head.data() + 1 + Hk;
    for (int32_t g = 0; g < Hk; g++) {
      kept[g].assign(pos, pos + head[1 + g]);
      pos += head[1 + g];
    }
  }

  void sample(const float* logits, int32_t R, int32_t V, const SampleRow* rows, float softcap,
              int32_t* tokens) override {
    if (R <= 0) return;
    if (V <= 0) bad_argument("sample: vocabulary size must be positive, got " + std::to_string(V));
    rows_dev_.resize(R);
    sort_rows_.clear();
    for (int32_t r = 0; r < R; r++) {
      const SampleRow& in = rows[r];
      SampleRowDev& o = rows_dev_[r];
      o.temperature = in.temperature;
      o.top_p = in.top_p;
      o.top_k = in.top_k;
      o.active = in.active ? 1 : 0;
      const bool filtered = in.active && in.temperature != 0.f && ((in.top_k > 0 && in.top_k < V) || in.top_p < 1.f);
      o.sort_slot = filtered ? (int32_t)sort_rows_.size() : -1;
      if (filtered) sort_rows_.push_back(r);
      o.pad_ = 0;
      o.invt = in.temperature != 0.f ? 1.0 / in.temperature : 0.0;
      o.u = counter_uniform(in.seed, in.position);
    }
    on_device();
    stage_.clear();
    const size_t o_r = stage_.add(rows_dev_.data(), rows_dev_.size() * sizeof(SampleRowDev));
    const size_t o_s = stage_.add(sort_rows_.data(), sort_rows_.size() * sizeof(int32_t));
    char* base = stage_.upload(st_);
    int32_t* tok_dev = static_cast<int32_t*>(tokens_.ensure((size_t)R * sizeof(int32_t), st_));
    cuda::launch_sample(st_, tok_dev, logits, R, V, reinterpret_cast<const SampleRowDev*>(base + o_r),
                        reinterpret_cast<const int32_t*>(base + o_s), (int32_t)sort_rows_.size(), softcap, sample_ws_);
    CUDA_CHECK(cudaMemcpyAsync(tokens, tok_dev, (size_t)R * sizeof(int32_t), cudaMemcpyDeviceToHost, st_.s));
    CUDA_CHECK(cudaStreamSynchronize(st_.s));
  }

  double last_decode_kernel_ms() {
    if (!ev_[0]) bad_argument("cuda_last_decode_kernel_ms: the backend was made without time_decode_kernels");
    on_device();
    CUDA_CHECK(cudaEventSynchronize(ev_[1]));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, ev_[0], ev_[1]));
    return ms;
  }

 private:
  struct DevWeight {
    void* p;
    size_t bytes;
    DType dtype;
  };

  // kv_gather and kv_read: count tokens' K (and V unless null) as fp32 rows into device memory.
  void gather(const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count, float* k_out,
              float* v_out, const char* what) {
    if (count <= 0) return;
    check_slots(kv, page, slot, count, what);
    on_device();
    stage_.clear();
    const size_t o_p = stage_.add(page, (size_t)count * sizeof(int32_t));
    const size_t o_s = stage_.add(slot, (size_t)count * sizeof(int32_t));
    char* base = stage_.upload(st_);
    cuda::launch_kv_read(st_, kv, reinterpret_cast<const int32_t*>(base + o_p),
                         reinterpret_cast<const int32_t*>(base + o_s), count, k_out, v_out);
  }

  // SnapKV scores of one layer into the workspace (device); null when there is no prefix to score.
  const float* scores_dev(const float* q, int64_t q_stride, const int32_t* qpos, int32_t w, const float* k,
                          const int32_t* kpos,
                          int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling,
                          GqaReduce reduce, int32_t kernel) {
    check_snapkv_args(w, kpos, m, m_prefix, H, Hk, d, pooling, reduce, kernel);  // compress.cc's checks
    if (d > 256) bad_argument("snapkv_scores: the CUDA kernel supports head dim 1..256, got " + std::to_string(d));
    if (m_prefix == 0) return nullptr;
    std::vector<int32_t> visible((size_t)w);  // key j visible to query i iff j < visible[i] (kpos ascending)
    for (int32_t i = 0; i < w; i++) visible[i] = (int32_t)(std::upper_bound(kpos, kpos + m, qpos[i]) - kpos);
    on_device();
    stage_.clear();
    const size_t o_v = stage_.add(visible.data(), visible.size() * sizeof(int32_t));
    char* base = stage_.upload(st_);
    const size_t nL = (size_t)H * w * m, nst = (size_t)H * w * 2, nR = (size_t)Hk * m_prefix;
    float* ws = static_cast<float*>(snap_ws_.ensure((nL + nst + 2 * nR) * sizeof(float), st_));
    float *L = ws, *stats = L + nL, *R = stats + nst, *Sd = R + nR;
    cuda::launch_snapkv(st_, Sd, q, q_stride, k, reinterpret_cast<const int32_t*>(base + o_v), w, m, m_prefix, H, Hk, d,
                        pooling, reduce, kernel, 1.0f / std::sqrt((float)d), L, stats, R);
    return Sd;
  }

  // Steps run on whichever host thread picks them up: make this backend's device current on it.
  void on_device() { CUDA_CHECK(cudaSetDevice(dev_)); }

  const void* weight_dev(const Weight& W) {
    const size_t bytes = (size_t)W.rows * W.cols * dtype_size(W.dtype);
    auto it = weights_.find(W.data);
    if (it != weights_.end()) {
      KVF_CHECK(it->second.bytes == bytes && it->second.dtype == W.dtype,
                "a weight's host memory now holds a different tensor than the one the CUDA backend copied");
      return it->second.p;
    }
    void* p = alloc(bytes);
    CUDA_CHECK(cudaMemcpyAsync(p, W.data, bytes, cudaMemcpyHostToDevice, st_.s));
    weights_.emplace(W.data, DevWeight{p, bytes, W.dtype});
    return p;
  }

  // A page id outside the pool or a slot outside the page would write or read out of bounds on the device: a bug
  // upstream, reported as one.
  static void check_slots(const KVStoreDesc& kv, const int32_t* page, const int32_t* slot, int32_t count,
                          const char* what) {
    for (int32_t i = 0; i < count; i++)
      if (page[i] < 0 || page[i] >= kv.num_pages || slot[i] < 0 || slot[i] >= kv.P)
        fail(ErrorKind::Internal, std::string("internal error (this is a bug): ") + what + ": page " +
                                      std::to_string(page[i]) + " slot " + std::to_string(slot[i]) +
                                      " is outside the pool of " + std::to_string(kv.num_pages) + " pages of " +
                                      std::to_string(kv.P) + " slots");
  }

  int32_t dev_;
  bool split_;
  int max_smem_ = 48 * 1024;
  cuda::Stream st_;
  std::unordered_map<const void*, DevWeight> weights_;
  Staging stage_;
  GrowBuffer planes_, decode_ws_, readback_, snap_ws_, sample_ws_, tokens_, select_ws_, select_out_;
  std::vector<cuda::SampleRowDev> rows_dev_;
  std::vector<int32_t> sort_rows_;
  GrowBuffer rope_dev_;            // the last rope call's positions, then inverse frequencies
  std::vector<char> rope_host_;    // the same bytes on the host (what rope_dev_ holds)
  std::vector<DecodeHead> dh_;
  std::vector<int32_t> flat_pages_, items_;
  cudaEvent_t ev_[2] = {nullptr, nullptr};  // around the decode kernels, when time_decode_kernels
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int32_t device, const CudaOptions& opts) {
  return std::make_unique<CudaBackend>(device, opts);
}

std::unique_ptr<Backend> make_cuda_backend(int32_t device) { return make_cuda_backend(device, CudaOptions{}); }

double cuda_last_decode_kernel_ms(Backend& be) {
  auto* cb = dynamic_cast<CudaBackend*>(&be);
  if (!cb) bad_argument("cuda_last_decode_kernel_ms: backend '" + std::string(be.name()) + "' is not the CUDA backend");
  return cb->last_decode_kernel_ms();
}

}  // namespace kvf
