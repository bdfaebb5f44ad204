#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "common.h"

namespace kvf {

void validate_sampling(const SamplingSpec& s, int32_t vocab) {
  if (!(s.temperature >= 0.f) || !std::isfinite(s.temperature))
    bad_argument("sampling.temperature must be >= 0, got " + std::to_string(s.temperature));
  if (!(s.top_p > 0.f && s.top_p <= 1.f)) bad_argument("sampling.top_p must be in (0, 1], got " + std::to_string(s.top_p));
  if (s.top_k < 0) bad_argument("sampling.top_k must be >= 0, got " + std::to_string(s.top_k));
  if (s.max_new_tokens <= 0) bad_argument("sampling.max_new_tokens must be > 0, got " + std::to_string(s.max_new_tokens));
  for (int32_t id : s.stop_ids)
    if (id < 0 || id >= vocab) bad_argument("sampling.stop token id " + std::to_string(id) + " is outside the vocabulary");
}

static inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double counter_uniform(uint64_t seed, uint64_t position) {
  uint64_t r = splitmix64(splitmix64(seed) ^ (position * 0xd1b54a32d192ed03ull + 0x8cb92ba72f3d8dd7ull));
  return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

int32_t sample_token(float* logits, int32_t V, const SamplingSpec& spec, uint64_t position, float softcap) {
  if (softcap > 0.f)  // in double, rounded once: the CUDA sample op computes the same float (tanhf differs by ulps)
    for (int32_t i = 0; i < V; i++) logits[i] = (float)((double)softcap * std::tanh((double)logits[i] / softcap));
  if (spec.temperature == 0.f) {
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  // candidates in order: by logit descending, ties by lower id (only when a filter needs an order)
  std::vector<int32_t> idx;
  const bool filtered = (spec.top_k > 0 && spec.top_k < V) || spec.top_p < 1.f;
  int32_t count = V;
  if (filtered) {
    idx.resize(V);
    std::iota(idx.begin(), idx.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    if (spec.top_k > 0 && spec.top_k < V) {
      std::partial_sort(idx.begin(), idx.begin() + spec.top_k, idx.end(), by_logit);
      count = spec.top_k;
    } else {
      std::sort(idx.begin(), idx.end(), by_logit);
    }
  }
  auto at = [&](int32_t i) { return filtered ? idx[i] : i; };
  float mx = -INFINITY;
  for (int32_t i = 0; i < count; i++) mx = std::max(mx, logits[at(i)]);
  const double invt = 1.0 / spec.temperature;
  std::vector<double> p((size_t)count);
  double total = 0;
  for (int32_t i = 0; i < count; i++) {
    p[i] = std::exp(((double)logits[at(i)] - mx) * invt);
    total += p[i];
  }
  if (spec.top_p < 1.f) {  // smallest prefix (in descending order) whose mass reaches top_p
    double cum = 0;
    int32_t keep = 0;
    while (keep < count) {
      cum += p[keep] / total;
      keep++;
      if (cum >= spec.top_p) break;
    }
    count = keep;
    total = 0;
    for (int32_t i = 0; i < count; i++) total += p[i];
  }
  const double u = counter_uniform(spec.seed, position) * total;
  double cum = 0;
  for (int32_t i = 0; i < count; i++) {
    cum += p[i];
    if (u < cum) return at(i);
  }
  return at(count - 1);
}

}  // namespace kvf
