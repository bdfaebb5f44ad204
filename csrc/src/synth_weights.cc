#include "synth_weights.h"

#include <cmath>
#include <vector>

namespace kvf {

namespace {

struct Arena {
  std::vector<std::vector<uint8_t>> blocks;
};
}  // namespace

ModelConfig tiny_config() {
  ModelConfig c;
  c.arch_name = "LlamaForCausalLM";
  c.L = 2;
  c.D = 64;
  c.H = 4;
  c.Hk = 2;
  c.d = 16;
  c.F = 128;
  c.V = 512;
  c.max_pos = 8192;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  return c;
}

std::shared_ptr<Model> make_random_model(const ModelConfig& cfg, DType dtype, uint64_t seed) {
  auto arena = std::make_shared<Arena>();
  auto model = std::make_shared<Model>();
  model->cfg = cfg;
  model->cfg.dtype = dtype;
  model->storage = arena;
  SeededRng rng{seed};
  auto matrix = [&](int rows, int cols, double scale) {
    Weight w;
    w.rows = rows;
    w.cols = cols;
    w.dtype = dtype;
    const size_t n = (size_t)rows * cols;
    arena->blocks.emplace_back(n * dtype_size(dtype));
    uint8_t* p = arena->blocks.back().data();
    for (size_t i = 0; i < n; i++) {
      float v = (float)(rng.normal() * scale);
      if (dtype == DType::F32) reinterpret_cast<float*>(p)[i] = v;
      else if (dtype == DType::F16) reinterpret_cast<uint16_t*>(p)[i] = f32_to_f16(v);
      else reinterpret_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
    }
    w.data = p;
    model->weight_bytes += n * dtype_size(dtype);
    return w;
  };
  auto norm = [&](int n) {
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(1.0 + 0.1 * rng.normal());
    return v;
  };
  const int Hd = cfg.H * cfg.d, Hkd = cfg.Hk * cfg.d;
  model->embed = matrix(cfg.V, cfg.D, 1.0);
  for (int l = 0; l < cfg.L; l++) {
    LayerWeights lw;
    lw.attn_norm = norm(cfg.D);
    lw.mlp_norm = norm(cfg.D);
    lw.wq = matrix(Hd, cfg.D, 1.0 / std::sqrt(cfg.D));
    lw.wk = matrix(Hkd, cfg.D, 1.0 / std::sqrt(cfg.D));
    lw.wv = matrix(Hkd, cfg.D, 1.0 / std::sqrt(cfg.D));
    lw.wo = matrix(cfg.D, Hd, 1.0 / std::sqrt(Hd));
    if (cfg.qkv_bias) {
      lw.bq.resize(Hd);
      lw.bk.resize(Hkd);
      lw.bv.resize(Hkd);
      for (auto* b : {&lw.bq, &lw.bk, &lw.bv})
        for (auto& x : *b) x = (float)(0.1 * rng.normal());
    }
    lw.w_gate = matrix(cfg.F, cfg.D, 1.0 / std::sqrt(cfg.D));
    lw.w_up = matrix(cfg.F, cfg.D, 1.0 / std::sqrt(cfg.D));
    lw.w_down = matrix(cfg.D, cfg.F, 1.0 / std::sqrt(cfg.F));
    model->layers.push_back(std::move(lw));
  }
  model->final_norm = norm(cfg.D);
  model->lm_head = cfg.tie_embeddings ? model->embed : matrix(cfg.V, cfg.D, 1.0 / std::sqrt(cfg.D));
  return model;
}

}  // namespace kvf
