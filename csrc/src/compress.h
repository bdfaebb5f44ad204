// Ada-KV compression math (ENGINE.md, "Prefill with compression" and "Ada-KV allocation"): budgets, SnapKV
// scoring with pooling and GQA reduction, the pyramid schedule with exact rounding, and the exact-total
// safeguarded allocation. Pure functions on host arrays; the engine calls them per layer. Tie-breaking
// everywhere: higher score first, then lower head index, then lower position.
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"

namespace kvf {

enum class Method : int32_t { Full = 1, SnapKV = 2, PyramidKV = 3, AdaSnapKV = 4, AdaPyramidKV = 5 };
enum class Pooling : int32_t { Max = 1, Avg = 2 };
enum class GqaReduce : int32_t { Mean = 1, Max = 2 };

// Defaults are the built-in default budget (CONTRACTS.md): ADA_SNAPKV, 1024 tokens per head, window 32,
// pool kernel 7 (max), floor_alpha 0.2, GQA mean, no decode cap.
struct BudgetSpec {
  Method method = Method::AdaSnapKV;
  int32_t tokens_per_head = 1024;   // B; 0 when keep_ratio is used instead
  float keep_ratio = 0.f;           // r in (0, 1]; 0 = unset
  int32_t window = 32;              // w
  int32_t pool_kernel = 7;          // odd, >= 1
  float floor_alpha = 0.2f;         // in [0, 1]
  float pyramid_beta = 20.f;        // > 1
  int32_t decode_max_tokens_per_head = 0;  // D; 0 = no decode cap
  Pooling pooling = Pooling::Max;
  GqaReduce gqa_reduce = GqaReduce::Mean;
};

const char* method_name(Method m);

// Throws Error(BadArgument) naming the field: tokens_per_head < window + 1 (and not FULL), both or neither of
// tokens_per_head / keep_ratio (unless FULL), keep_ratio outside (0, 1], floor_alpha outside [0, 1], even or
// zero pool kernel, pyramid_beta <= 1, window 0, unknown method or pooling or reduce, negative decode cap
// or a decode cap below window + 1.
void validate_budget(const BudgetSpec& b);

// B for a prompt of n tokens: tokens_per_head, or min(n, max(w + 1, ceil(r * n))). FULL: n.
int32_t budget_tokens(const BudgetSpec& b, int32_t n);

// True when the prompt is compressed at all (method not FULL and n > B).
bool compresses(const BudgetSpec& b, int32_t n);

// Per-layer prefix budgets B'_l (the window excluded), length L, for a prompt of n tokens with n > B.
// Uniform methods: B - w for every layer. Pyramid methods: linear from max (layer 0) to min (layer L-1),
// min = B'/beta, max = 2B' - min; if max > n - w, max = n - w and min = 2B' - max; rounded by largest remainder so
// the sum is exactly L * B' (ties to the lower layer).
std::vector<int32_t> layer_prefix_budgets(const BudgetSpec& b, int32_t L, int32_t n);

// SnapKV scores of one layer.
//   q    [w, H, d]  the observation-window queries (post-RoPE), positions qpos[w]
//   k    [m, Hk, d] the keys (post-RoPE), positions kpos[m], ascending; key j is visible to query i iff kpos[j] <= qpos[i]
//   S    [Hk, m_prefix] out: for each prefix key j < m_prefix, the mean over the w window queries of
//        softmax(q k^T / sqrt(d)) (fp32 softmax over all visible keys), reduced over the G = H / Hk query heads of
//        each KV head (mean or max), then pooled along keys (kernel k, stride 1, padding k/2; max pooling pads
//        with -inf, avg pooling counts the zero padding, as torch's avg_pool1d does by default).
// Prefill: m = n, kpos = qpos' = 0..n-1, qpos = n-w..n-1, m_prefix = n - w.
void snapkv_scores(const float* q, const int32_t* qpos, int32_t w, const float* k, const int32_t* kpos, int32_t m,
                   int32_t m_prefix, int32_t H, int32_t Hk, int32_t d, Pooling pooling, GqaReduce reduce,
                   int32_t kernel, float* S);

// The argument checks of snapkv_scores and allocate (Error(BadArgument) naming the argument), shared with the backends'
// device versions so every backend rejects the same calls with the same message.
void check_snapkv_args(int32_t w, const int32_t* kpos, int32_t m, int32_t m_prefix, int32_t H, int32_t Hk, int32_t d,
                       Pooling pooling, GqaReduce reduce, int32_t kernel);
void check_allocate_args(int32_t Hk, int32_t m, int32_t Bp, float alpha);

// Chooses the prefix positions each head keeps, given S [Hk, m] and a per-head prefix budget Bp (<= m).
// ada = false: every head keeps its own top Bp. ada = true: every head first keeps its own top
// f = floor(alpha * Bp), then the remaining Hk * (Bp - f) slots go to the highest remaining scores over all heads
// (flattened). Either way the layer keeps exactly Hk * Bp positions. kept[h] is sorted ascending.
void allocate(const float* S, int32_t Hk, int32_t m, int32_t Bp, float alpha, bool ada,
              std::vector<std::vector<int32_t>>& kept);

// The per-head safeguard f = floor(alpha * Bp), with the float-ratio rounding rule budget_tokens uses (alpha arrived
// as a float: a product within Bp * 2^-24 of an integer is that integer).
int32_t safeguard_floor(float alpha, int32_t Bp);

inline bool method_is_ada(Method m) { return m == Method::AdaSnapKV || m == Method::AdaPyramidKV; }
inline bool method_is_pyramid(Method m) { return m == Method::PyramidKV || m == Method::AdaPyramidKV; }

}  // namespace kvf
