// Sampling: greedy, temperature, top-k, top-p. Random draws are counter-based, keyed by (seed, position in the
// sequence), so the same seed and inputs give the same tokens in any batch, on any worker, after any resume.
#pragma once
#include <cstdint>
#include <vector>

namespace kvf {

struct SamplingSpec {
  float temperature = 1.f;           // 0 = greedy
  float top_p = 1.f;                 // (0, 1]
  int32_t top_k = 0;                 // 0 = off
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_ids;     // finish when one of these is produced (reason STOP)
  int32_t max_new_tokens = 256;      // generated tokens, resume tokens included
};

// Throws BadArgument naming the field.
void validate_sampling(const SamplingSpec& s, int32_t vocab);

// The uniform draw in [0, 1) for (seed, position): splitmix64 of both, 53 bits.
double counter_uniform(uint64_t seed, uint64_t position);

// Picks a token from logits[V] (modified in place as scratch). Deterministic for (logits, spec, position).
// Ties: the lower token id wins (argmax and ordering for top-k/top-p).
int32_t sample_token(float* logits, int32_t V, const SamplingSpec& spec, uint64_t position, float softcap);

}  // namespace kvf
