// Seeded random models made in memory (no files): the C++ tests and the GPU check build engines on them.
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>

#include "model.h"

namespace kvf {

// Seeded splitmix64 stream: the weights here and the GPU check's inputs (no files, same numbers everywhere).
struct SeededRng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return ((next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * M_PI * uniform()); }
  int32_t below(int32_t n) { return (int32_t)(next() % (uint64_t)n); }
};

// A Llama-family model with cfg's shape and N(0, 1/sqrt(fan_in)) matrices in `dtype`, norms near 1.
std::shared_ptr<Model> make_random_model(const ModelConfig& cfg, DType dtype, uint64_t seed);

// The tiny preset's shape (ENGINE.md): L=2, D=64, H=4, Hk=2, d=16, F=128, V=512, context 8192.
ModelConfig tiny_config();

}  // namespace kvf
