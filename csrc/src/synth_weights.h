// Seeded random models made in memory (no files): the C++ tests and the GPU check build engines on them.
#pragma once
#include <cstdint>
#include <memory>

#include "model.h"

namespace kvf {

// A Llama-family model with cfg's shape and N(0, 1/sqrt(fan_in)) matrices in `dtype`, norms near 1.
std::shared_ptr<Model> make_random_model(const ModelConfig& cfg, DType dtype, uint64_t seed);

// The tiny preset's shape (ENGINE.md): L=2, D=64, H=4, Hk=2, d=16, F=128, V=512, context 8192.
ModelConfig tiny_config();

}  // namespace kvf
