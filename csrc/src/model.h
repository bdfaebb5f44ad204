// Model loading from Hugging Face files: config.json + model.safetensors, or sharded safetensors with
// model.safetensors.index.json. Weights stay in their file dtype, memory-mapped (never widened at load).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace kvf {

enum class Arch { Llama, Mistral, Qwen2 };

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string arch_name;        // as in config.json "architectures"[0]
  int L = 0;                    // num_hidden_layers
  int D = 0;                    // hidden_size
  int H = 0;                    // num_attention_heads
  int Hk = 0;                   // num_key_value_heads (defaults to H)
  int d = 0;                    // head_dim (defaults to D / H)
  int F = 0;                    // intermediate_size
  int V = 0;                    // vocab_size
  int max_pos = 0;              // max_position_embeddings
  float rms_eps = 1e-6f;        // rms_norm_eps
  double rope_theta = 10000.0;  // rope_theta
  bool tie_embeddings = false;  // tie_word_embeddings
  bool qkv_bias = false;        // Qwen2: q/k/v projections have biases
  // llama3 rope_scaling ({"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
  // original_max_position_embeddings}); rope_scaling_type empty when absent.
  std::string rope_scaling_type;
  double rope_factor = 1.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int rope_original_max_pos = 8192;
  float final_logit_softcap = 0.f;  // 0 = none
  std::vector<int> eos_token_ids;   // eos_token_id (int or list); may be empty
  int bos_token_id = -1;
  DType dtype = DType::F32;         // dtype of the weight matrices as found in the files
};

// A matrix in its file dtype, row-major [rows, cols], as a Hugging Face nn.Linear stores it: [out, in].
struct Weight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int rows = 0, cols = 0;
};

struct LayerWeights {
  std::vector<float> attn_norm;   // [D]   input_layernorm.weight, widened (tiny)
  std::vector<float> mlp_norm;    // [D]   post_attention_layernorm.weight
  Weight wq;                      // [H*d, D]
  Weight wk;                      // [Hk*d, D]
  Weight wv;                      // [Hk*d, D]
  Weight wo;                      // [D, H*d]
  std::vector<float> bq, bk, bv;  // [H*d], [Hk*d], [Hk*d]; empty unless qkv_bias
  Weight w_gate;                  // [F, D]
  Weight w_up;                    // [F, D]
  Weight w_down;                  // [D, F]
};

struct Model {
  std::string dir;
  ModelConfig cfg;
  Weight embed;                     // [V, D] model.embed_tokens.weight
  std::vector<float> final_norm;    // [D]    model.norm.weight
  Weight lm_head;                   // [V, D] lm_head.weight, or embed when tied
  std::vector<LayerWeights> layers; // [L]
  size_t weight_bytes = 0;          // bytes of all matrices in their file dtype
  std::shared_ptr<void> storage;    // keeps the memory maps alive
};

// Loads a model directory. Every problem is an Error(BadModel) naming the file and the problem: missing
// config.json, invalid JSON, unsupported architecture or dtype, missing tensor, wrong shape, truncated file,
// header length larger than the file. Never crashes.
std::shared_ptr<Model> load_model(const std::string& dir);

// Parses config.json text (for tests and for load_model). `file` names the source in errors.
ModelConfig parse_config(const std::string& json_text, const std::string& file);

}  // namespace kvf
