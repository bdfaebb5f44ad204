// Model loading: config.json -> ModelConfig, safetensors (single or sharded) -> Weight views into the maps.
#include "model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>

#include "json.h"
#include "safetensors.h"

namespace kvf {

namespace {

constexpr size_t kMaxJsonFile = 64u << 20;  // config.json and the index are a few KB; larger is not a model dir

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Whole small text file; Error(BadModel) naming `path` when absent, not a regular file, unreadable or too large.
std::string read_text_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // O_NONBLOCK: a FIFO must not hang us
  if (fd < 0) {
    if (errno == ENOENT) bad_model(path + ": file not found");
    bad_model(path + ": cannot open: " + std::strerror(errno));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    bad_model(path + ": not a regular file");
  }
  if ((size_t)st.st_size > kMaxJsonFile) {
    ::close(fd);
    bad_model(path + ": file is " + std::to_string(st.st_size) + " bytes, larger than the " +
              std::to_string(kMaxJsonFile) + "-byte limit for a JSON file");
  }
  std::string text((size_t)st.st_size, '\0');
  size_t got = 0;
  while (got < text.size()) {
    ssize_t r = ::read(fd, &text[got], text.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int err = errno;
      ::close(fd);
      bad_model(path + ": read failed: " + std::strerror(err));
    }
    if (r == 0) break;  // shrank while reading: parse what is there
    got += (size_t)r;
  }
  ::close(fd);
  text.resize(got);
  return text;
}

json::Value parse_json_file_text(const std::string& text, const std::string& file) {
  try {
    return json::parse(text);
  } catch (const json::ParseError& e) {
    bad_model(file + ": invalid JSON at byte " + std::to_string(e.offset) + ": " + e.reason);
  }
}

// Typed access to config.json's fields; every error names the file and the field.
struct ConfigReader {
  const json::Value& root;
  const std::string& file;

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    bad_model(file + ": field '" + field + "' " + why);
  }

  // Absent and null both mean "not given" (Hugging Face writes null for unset optional fields).
  const json::Value* find(const std::string& key) const {
    const json::Value* v = root.get(key);
    return v && !v->is_null() ? v : nullptr;
  }

  static std::string got(const json::Value& v) {
    switch (v.type) {
      case json::Type::Int: return std::to_string(v.i);
      case json::Type::Double: return std::to_string(v.d);
      case json::Type::String: return "\"" + v.s + "\"";
      default: return std::string("a ") + json::type_name(v.type);
    }
  }

  int int_of(const std::string& field, const json::Value& v, bool positive) const {
    if (v.type != json::Type::Int) fail(field, "must be an integer, got " + got(v));
    if (positive ? v.i <= 0 : v.i < 0) fail(field, std::string("must be ") + (positive ? "positive" : "non-negative") + ", got " + got(v));
    if (v.i > INT_MAX) fail(field, "is too large: " + got(v));
    return (int)v.i;
  }

  int positive_int(const std::string& key) const {
    const json::Value* v = find(key);
    if (!v) fail(key, "is missing");
    return int_of(key, *v, true);
  }

  int positive_int_or(const std::string& key, int dflt) const {
    const json::Value* v = find(key);
    return v ? int_of(key, *v, true) : dflt;
  }

  double number_of(const std::string& field, const json::Value& v) const {
    if (!v.is_number()) fail(field, "must be a number, got " + got(v));
    return v.number();
  }

  double positive_number_or(const std::string& key, double dflt) const {
    const json::Value* v = find(key);
    if (!v) return dflt;
    double x = number_of(key, *v);
    if (!(x > 0) || !std::isfinite(x)) fail(key, "must be a positive number, got " + got(*v));
    return x;
  }

  bool bool_or(const std::string& key, bool dflt) const {
    const json::Value* v = find(key);
    if (!v) return dflt;
    if (v->type != json::Type::Bool) fail(key, "must be true or false, got " + got(*v));
    return v->b;
  }
};

}  // namespace

ModelConfig parse_config(const std::string& json_text, const std::string& file) {
  json::Value root = parse_json_file_text(json_text, file);
  if (root.type != json::Type::Object)
    bad_model(file + ": expected a JSON object, got a " + std::string(json::type_name(root.type)));
  ConfigReader r{root, file};
  ModelConfig c;

  static const char* kSupported = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";
  const json::Value* archs = r.find("architectures");
  if (!archs) r.fail("architectures", std::string("is missing (supported: ") + kSupported + ")");
  if (archs->type != json::Type::Array || archs->arr.empty() || archs->arr[0].type != json::Type::String)
    r.fail("architectures", "must be a non-empty list of strings");
  c.arch_name = archs->arr[0].s;
  if (c.arch_name == "LlamaForCausalLM") c.arch = Arch::Llama;
  else if (c.arch_name == "MistralForCausalLM") c.arch = Arch::Mistral;
  else if (c.arch_name == "Qwen2ForCausalLM") c.arch = Arch::Qwen2;
  else bad_model(file + ": unsupported architecture '" + c.arch_name + "' (supported: " + kSupported + ")");
  c.qkv_bias = c.arch == Arch::Qwen2;

  c.D = r.positive_int("hidden_size");
  c.L = r.positive_int("num_hidden_layers");
  c.H = r.positive_int("num_attention_heads");
  c.Hk = r.positive_int_or("num_key_value_heads", c.H);
  if (c.H % c.Hk != 0)
    bad_model(file + ": num_attention_heads " + std::to_string(c.H) + " is not a multiple of num_key_value_heads " +
              std::to_string(c.Hk));
  if (r.find("head_dim")) {
    c.d = r.positive_int("head_dim");
  } else {
    if (c.D % c.H != 0)
      bad_model(file + ": hidden_size " + std::to_string(c.D) + " is not a multiple of num_attention_heads " +
                std::to_string(c.H) + " and head_dim is not given");
    c.d = c.D / c.H;
  }
  if (c.d % 2 != 0) bad_model(file + ": head dimension " + std::to_string(c.d) + " is odd; RoPE needs an even head_dim");
  if ((int64_t)c.H * c.d > INT_MAX) bad_model(file + ": num_attention_heads * head_dim is too large");
  c.F = r.positive_int("intermediate_size");
  c.V = r.positive_int("vocab_size");
  c.max_pos = r.positive_int("max_position_embeddings");
  c.rms_eps = (float)r.positive_number_or("rms_norm_eps", 1e-6);
  c.rope_theta = r.positive_number_or("rope_theta", 10000.0);
  c.tie_embeddings = r.bool_or("tie_word_embeddings", false);

  // Only SiLU-gated MLPs and bias-free o/MLP projections are implemented; say so rather than compute wrongly.
  if (const json::Value* act = r.find("hidden_act"))
    if (act->type != json::Type::String || act->s != "silu")
      r.fail("hidden_act", "is " + ConfigReader::got(*act) + "; only \"silu\" is supported");
  if (r.bool_or("attention_bias", false)) r.fail("attention_bias", "is true; attention projection biases are supported only for Qwen2ForCausalLM (q/k/v)");
  if (r.bool_or("mlp_bias", false)) r.fail("mlp_bias", "is true; MLP biases are not supported");

  if (const json::Value* rs = r.find("rope_scaling")) {
    if (rs->type != json::Type::Object) r.fail("rope_scaling", "must be an object or null, got " + ConfigReader::got(*rs));
    ConfigReader sr{*rs, file};
    const json::Value* type = sr.find("rope_type");
    if (!type) type = sr.find("type");  // older configs spell it "type"
    if (!type || type->type != json::Type::String) r.fail("rope_scaling", "has no string \"rope_type\"");
    if (type->s == "llama3") {
      auto need = [&](const char* k) -> const json::Value& {
        const json::Value* v = sr.find(k);
        if (!v) r.fail(std::string("rope_scaling.") + k, "is missing (required for rope_type llama3)");
        return *v;
      };
      c.rope_scaling_type = "llama3";
      c.rope_factor = sr.number_of("rope_scaling.factor", need("factor"));
      c.rope_low_freq_factor = sr.number_of("rope_scaling.low_freq_factor", need("low_freq_factor"));
      c.rope_high_freq_factor = sr.number_of("rope_scaling.high_freq_factor", need("high_freq_factor"));
      c.rope_original_max_pos =
          sr.int_of("rope_scaling.original_max_position_embeddings", need("original_max_position_embeddings"), true);
      if (!(c.rope_factor >= 1.0)) r.fail("rope_scaling.factor", "must be at least 1, got " + std::to_string(c.rope_factor));
      if (!(c.rope_low_freq_factor > 0) || !(c.rope_high_freq_factor > c.rope_low_freq_factor))
        r.fail("rope_scaling", "needs 0 < low_freq_factor < high_freq_factor");
    } else if (type->s != "default") {  // "default" is Hugging Face's name for no scaling
      r.fail("rope_scaling", "has rope_type '" + type->s + "', which is not supported (supported: llama3)");
    }
  }

  // Sliding-window attention is not implemented. A window at least as long as the context never masks
  // anything, so such a config is exact with full attention; a shorter window would silently change results.
  // Qwen2 carries sliding_window but applies it only when use_sliding_window is true.
  bool window_active = c.arch == Arch::Qwen2 ? r.bool_or("use_sliding_window", false) : true;
  if (const json::Value* sw = r.find("sliding_window"); sw && window_active) {
    int w = r.int_of("sliding_window", *sw, true);
    if (w < c.max_pos)
      r.fail("sliding_window", "is " + std::to_string(w) + ", smaller than max_position_embeddings " +
                                   std::to_string(c.max_pos) + "; sliding-window attention is not supported");
  }

  if (const json::Value* sc = r.find("final_logit_softcapping")) {
    double x = r.number_of("final_logit_softcapping", *sc);
    if (!(x >= 0) || !std::isfinite(x)) r.fail("final_logit_softcapping", "must be a non-negative number");
    c.final_logit_softcap = (float)x;
  }

  if (const json::Value* eos = r.find("eos_token_id")) {
    if (eos->type == json::Type::Array) {
      for (const json::Value& e : eos->arr) c.eos_token_ids.push_back(r.int_of("eos_token_id", e, false));
    } else {
      c.eos_token_ids.push_back(r.int_of("eos_token_id", *eos, false));
    }
  }
  if (const json::Value* bos = r.find("bos_token_id")) c.bos_token_id = r.int_of("bos_token_id", *bos, false);
  // a special token outside the vocabulary is never sampled (EOS) or cannot be embedded (BOS)
  for (int e : c.eos_token_ids)
    if (e < 0 || e >= c.V) r.fail("eos_token_id", std::to_string(e) + " is outside the vocabulary [0, " + std::to_string(c.V) + ")");
  if (c.bos_token_id >= c.V) r.fail("bos_token_id", std::to_string(c.bos_token_id) + " is outside the vocabulary [0, " + std::to_string(c.V) + ")");
  return c;
}

namespace {

// Keeps every mapped file alive as long as the Model (Weight::data points into them).
struct Storage {
  std::vector<std::shared_ptr<const SafetensorsFile>> files;
};

// Where each tensor lives: one model.safetensors, or the shards named by model.safetensors.index.json.
class WeightSource {
 public:
  WeightSource(const std::string& dir, Storage& storage) : storage_(storage) {
    std::string single = join(dir, "model.safetensors");
    index_path_ = join(dir, "model.safetensors.index.json");
    // Same precedence as transformers: a single file wins over an index.
    if (exists(single)) {
      single_ = SafetensorsFile::open(single);
      storage_.files.push_back(single_);
      return;
    }
    if (!exists(index_path_))
      bad_model(dir + ": no weights found: expected model.safetensors or model.safetensors.index.json");
    json::Value idx = parse_json_file_text(read_text_file(index_path_), index_path_);
    const json::Value* wm = idx.get("weight_map");
    if (!wm || wm->type != json::Type::Object) bad_model(index_path_ + ": no \"weight_map\" object");
    std::map<std::string, std::shared_ptr<const SafetensorsFile>> shards;
    for (const auto& kv : wm->obj) {
      if (kv.second.type != json::Type::String)
        bad_model(index_path_ + ": weight_map entry for '" + kv.first + "' is not a file name");
      const std::string& shard = kv.second.s;
      // Shards live beside the index; a path would let an index point anywhere on the machine.
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        bad_model(index_path_ + ": weight_map entry for '" + kv.first + "' names '" + shard +
                  "', which is not a plain file name in the model directory");
      auto it = shards.find(shard);
      if (it == shards.end()) {
        std::string path = join(dir, shard);
        if (!exists(path))
          bad_model(index_path_ + ": shard '" + shard + "' (for tensor '" + kv.first + "') not found: " + path);
        it = shards.emplace(shard, SafetensorsFile::open(path)).first;
        storage_.files.push_back(it->second);
      }
      where_[kv.first] = it->second;
    }
  }

  // Every tensor name the weights hold, with the file that holds it.
  std::vector<std::pair<std::string, std::string>> names() const {
    std::vector<std::pair<std::string, std::string>> out;
    if (single_) {
      for (const auto& kv : single_->tensors()) out.emplace_back(kv.first, single_->path());
    } else {
      for (const auto& kv : where_) out.emplace_back(kv.first, kv.second->path());
    }
    return out;
  }

  // The tensor `name` with exactly `shape` and an engine dtype, or Error(BadModel) naming the file and problem.
  const TensorInfo& require(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafetensorsFile* f = single_.get();
    if (!f) {
      auto it = where_.find(name);
      if (it == where_.end()) bad_model(index_path_ + ": tensor '" + name + "' is missing from weight_map");
      f = it->second.get();
    }
    const TensorInfo* t = f->find(name);
    if (!t) bad_model(f->path() + ": tensor '" + name + "' is missing");
    if (!t->supported)
      bad_model(f->path() + ": tensor '" + name + "' has dtype " + t->dtype_name +
                ", which is not supported (supported: F32, F16, BF16)");
    if (t->shape != shape)
      bad_model(f->path() + ": tensor '" + name + "' has shape " + shape_str(t->shape) + ", expected " +
                shape_str(shape));
    return *t;
  }

  bool has(const std::string& name) const {
    if (single_) return single_->find(name) != nullptr;
    auto it = where_.find(name);
    return it != where_.end() && it->second->find(name) != nullptr;
  }

  // The file an absent tensor was expected in: the single file, its listed shard, or the index.
  std::string file_for(const std::string& name) const {
    if (single_) return single_->path();
    auto it = where_.find(name);
    return it == where_.end() ? index_path_ : it->second->path();
  }

 private:
  Storage& storage_;
  std::string index_path_;
  std::shared_ptr<const SafetensorsFile> single_;
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> where_;
};

struct Loader {
  const WeightSource& src;
  size_t matrix_bytes = 0;

  // A matrix view into the mapping: never copied, never widened.
  Weight matrix(const std::string& name, int rows, int cols) {
    const TensorInfo& t = src.require(name, {rows, cols});
    matrix_bytes += t.bytes;
    Weight w;
    w.data = t.data;
    w.dtype = t.dtype;
    w.rows = rows;
    w.cols = cols;
    return w;
  }

  // A vector widened to float. memcpy per element: the data may not be aligned for its type.
  std::vector<float> vec(const std::string& name, int n) {
    const TensorInfo& t = src.require(name, {n});
    std::vector<float> out((size_t)n);
    for (size_t k = 0; k < out.size(); k++) {
      if (t.dtype == DType::F32) {
        std::memcpy(&out[k], t.data + 4 * k, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * k, 2);
        out[k] = t.dtype == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
    }
    return out;
  }
};

}  // namespace

std::shared_ptr<Model> load_model(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) bad_model("model directory not found: " + dir);
  if (!S_ISDIR(st.st_mode)) bad_model(dir + ": not a directory (expected a model directory)");

  std::string cfg_path = join(dir, "config.json");
  if (!exists(cfg_path)) bad_model(cfg_path + ": config.json not found in the model directory");
  auto model = std::make_shared<Model>();
  model->dir = dir;
  model->cfg = parse_config(read_text_file(cfg_path), cfg_path);
  const ModelConfig& c = model->cfg;

  auto storage = std::make_shared<Storage>();
  WeightSource src(dir, *storage);
  Loader ld{src};

  model->embed = ld.matrix("model.embed_tokens.weight", c.V, c.D);
  model->cfg.dtype = model->embed.dtype;
  model->final_norm = ld.vec("model.norm.weight", c.D);
  if (c.tie_embeddings) {
    model->lm_head = model->embed;  // same bytes: counted once in weight_bytes
  } else {
    if (!src.has("lm_head.weight"))
      bad_model(src.file_for("lm_head.weight") +
                ": tensor 'lm_head.weight' is missing and tie_word_embeddings is false in config.json");
    model->lm_head = ld.matrix("lm_head.weight", c.V, c.D);
  }

  const int qd = c.H * c.d, kd = c.Hk * c.d;
  model->layers.resize((size_t)c.L);
  for (int l = 0; l < c.L; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& lw = model->layers[(size_t)l];
    lw.attn_norm = ld.vec(p + "input_layernorm.weight", c.D);
    lw.wq = ld.matrix(p + "self_attn.q_proj.weight", qd, c.D);
    lw.wk = ld.matrix(p + "self_attn.k_proj.weight", kd, c.D);
    lw.wv = ld.matrix(p + "self_attn.v_proj.weight", kd, c.D);
    if (c.qkv_bias) {
      lw.bq = ld.vec(p + "self_attn.q_proj.bias", qd);
      lw.bk = ld.vec(p + "self_attn.k_proj.bias", kd);
      lw.bv = ld.vec(p + "self_attn.v_proj.bias", kd);
    }
    lw.wo = ld.matrix(p + "self_attn.o_proj.weight", c.D, qd);
    lw.mlp_norm = ld.vec(p + "post_attention_layernorm.weight", c.D);
    lw.w_gate = ld.matrix(p + "mlp.gate_proj.weight", c.F, c.D);
    lw.w_up = ld.matrix(p + "mlp.up_proj.weight", c.F, c.D);
    lw.w_down = ld.matrix(p + "mlp.down_proj.weight", c.D, c.F);
  }
  // Layers beyond num_hidden_layers: a config.json that disagrees with its weights (the model would run a part of
  // itself and answer nonsense without a word)
  for (const auto& nf : src.names()) {
    const std::string& n = nf.first;
    if (n.compare(0, 13, "model.layers.") != 0) continue;
    char* end = nullptr;
    const long l = std::strtol(n.c_str() + 13, &end, 10);
    if (end != n.c_str() + 13 && *end == '.' && l >= c.L)
      bad_model(nf.second + ": tensor '" + n + "' belongs to layer " + std::to_string(l) + ", but config.json (" + cfg_path +
                ") says num_hidden_layers is " + std::to_string(c.L));
  }
  model->weight_bytes = ld.matrix_bytes;
  model->storage = storage;
  return model;
}

}  // namespace kvf
