// Model loading: the JSON parser, safetensors validation, config.json parsing, and load_model on real files in
// Hugging Face layout written into a temporary directory by the small writer below.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "check.h"
#include "common.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

namespace fs = std::filesystem;

namespace {

// ---- helpers ---------------------------------------------------------------------------------------------

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "kvf-model-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw kvt::Failure{"mkdtemp failed"};
    path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
  if (!f) throw kvt::Failure{"cannot write " + path};
}

// Runs `fn`, which must throw kvf::Error(BadModel) whose message contains every one of `parts`; returns it.
std::string expect_bad_model(const std::function<void()>& fn, std::initializer_list<std::string> parts, int line) {
  std::string where = std::string(__FILE__) + ":" + std::to_string(line) + ": ";
  try {
    fn();
  } catch (const kvf::Error& e) {
    std::string msg = e.what();
    if (e.kind != kvf::ErrorKind::BadModel)
      throw kvt::Failure{where + "expected BAD_MODEL, got " + kvf::error_kind_name(e.kind) + ": " + msg};
    for (const auto& p : parts)
      if (msg.find(p) == std::string::npos)
        throw kvt::Failure{where + "error message lacks \"" + p + "\": " + msg};
    return msg;
  } catch (const std::exception& e) {
    throw kvt::Failure{where + "expected kvf::Error(BadModel), got another exception: " + e.what()};
  }
  throw kvt::Failure{where + "expected a BadModel error, nothing was thrown"};
}
#define EXPECT_BAD_MODEL(stmt, ...) expect_bad_model([&] { stmt; }, {__VA_ARGS__}, __LINE__)

// Runs `fn`, which must throw json::ParseError at byte `offset`.
void expect_json_error(const std::string& text, size_t offset, const std::string& part, int line) {
  std::string where = std::string(__FILE__) + ":" + std::to_string(line) + ": ";
  try {
    kvf::json::parse(text);
  } catch (const kvf::json::ParseError& e) {
    if (e.offset != offset)
      throw kvt::Failure{where + "offset " + std::to_string(e.offset) + ", expected " + std::to_string(offset) +
                         " (" + e.what() + ")"};
    if (std::string(e.what()).find(part) == std::string::npos)
      throw kvt::Failure{where + "message lacks \"" + part + "\": " + e.what()};
    return;
  }
  throw kvt::Failure{where + "expected a parse error for: " + text};
}
#define EXPECT_JSON_ERROR(text, offset, part) expect_json_error(text, offset, part, __LINE__)

// ---- a tiny safetensors writer -------------------------------------------------------------------------

struct TensorSpec {
  std::string name;
  std::string dtype;  // header string, written as is
  std::vector<int64_t> shape;
  std::string bytes;  // raw little-endian data
};

std::string u64le(uint64_t n) {
  std::string s(8, '\0');
  for (int k = 0; k < 8; k++) s[k] = (char)(n >> (8 * k) & 0xff);
  return s;
}

// Header JSON padded with spaces to a multiple of 8 (as the reference writer does), then the data in order.
std::string safetensors_bytes(const std::vector<TensorSpec>& ts) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::string data;
  for (const auto& t : ts) {
    header += ",\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + kvf::shape_str(t.shape) +
              ",\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + t.bytes.size()) +
              "]}";
    data += t.bytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  return u64le(header.size()) + header + data;
}

// The value written at element k of tensor number `seed`; distinct per tensor and element.
float value_at(int seed, size_t k) { return (float)std::sin(0.37 * seed + 0.113 * (double)k) * 0.75f; }

// What reading `value_at` back through `dtype` must give exactly.
float stored(const std::string& dtype, float x) {
  if (dtype == "F16") return kvf::f16_to_f32(kvf::f32_to_f16(x));
  if (dtype == "BF16") return kvf::bf16_to_f32(kvf::f32_to_bf16(x));
  return x;
}

std::string encode(const std::string& dtype, int seed, size_t n) {
  std::string out;
  for (size_t k = 0; k < n; k++) {
    float x = value_at(seed, k);
    if (dtype == "F32") {
      out.append(reinterpret_cast<const char*>(&x), 4);
    } else {
      uint16_t h = dtype == "F16" ? kvf::f32_to_f16(x) : kvf::f32_to_bf16(x);
      out.append(reinterpret_cast<const char*>(&h), 2);
    }
  }
  return out;
}

// A tiny Llama-family model (far smaller than the `tiny` preset, so every test runs in milliseconds).
struct Tiny {
  std::string arch = "LlamaForCausalLM";
  int L = 2, D = 16, H = 4, Hk = 2, d = 4, F = 24, V = 40;
  bool tied = false;
  std::string dtype = "F32";       // matrices
  std::string norm_dtype = "F32";  // norms and biases
  std::string extra_config;        // appended into config.json's object, starting with ','
};

// Seed numbers: embed 1, lm_head 2, final norm 3, layer l tensor j: 100 + 20 * l + j.
std::vector<TensorSpec> tiny_tensors(const Tiny& m) {
  std::vector<TensorSpec> ts;
  auto mat = [&](const std::string& name, int seed, int64_t r, int64_t c) {
    ts.push_back({name, m.dtype, {r, c}, encode(m.dtype, seed, (size_t)(r * c))});
  };
  auto vec = [&](const std::string& name, int seed, int64_t n) {
    ts.push_back({name, m.norm_dtype, {n}, encode(m.norm_dtype, seed, (size_t)n)});
  };
  mat("model.embed_tokens.weight", 1, m.V, m.D);
  for (int l = 0; l < m.L; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    int s = 100 + 20 * l;
    vec(p + "input_layernorm.weight", s + 0, m.D);
    mat(p + "self_attn.q_proj.weight", s + 1, m.H * m.d, m.D);
    mat(p + "self_attn.k_proj.weight", s + 2, m.Hk * m.d, m.D);
    mat(p + "self_attn.v_proj.weight", s + 3, m.Hk * m.d, m.D);
    mat(p + "self_attn.o_proj.weight", s + 4, m.D, m.H * m.d);
    if (m.arch == "Qwen2ForCausalLM") {
      vec(p + "self_attn.q_proj.bias", s + 5, m.H * m.d);
      vec(p + "self_attn.k_proj.bias", s + 6, m.Hk * m.d);
      vec(p + "self_attn.v_proj.bias", s + 7, m.Hk * m.d);
    }
    vec(p + "post_attention_layernorm.weight", s + 8, m.D);
    mat(p + "mlp.gate_proj.weight", s + 9, m.F, m.D);
    mat(p + "mlp.up_proj.weight", s + 10, m.F, m.D);
    mat(p + "mlp.down_proj.weight", s + 11, m.D, m.F);
  }
  vec("model.norm.weight", 3, m.D);
  if (!m.tied) mat("lm_head.weight", 2, m.V, m.D);
  return ts;
}

std::string tiny_config(const Tiny& m) {
  std::string c = "{\n  \"architectures\": [\"" + m.arch + "\"],\n  \"model_type\": \"llama\",\n";
  c += "  \"hidden_size\": " + std::to_string(m.D) + ",\n";
  c += "  \"num_hidden_layers\": " + std::to_string(m.L) + ",\n";
  c += "  \"num_attention_heads\": " + std::to_string(m.H) + ",\n";
  c += "  \"num_key_value_heads\": " + std::to_string(m.Hk) + ",\n";
  c += "  \"intermediate_size\": " + std::to_string(m.F) + ",\n";
  c += "  \"vocab_size\": " + std::to_string(m.V) + ",\n";
  c += "  \"max_position_embeddings\": 8192,\n  \"rms_norm_eps\": 1e-05,\n  \"rope_theta\": 500000.0,\n";
  c += "  \"hidden_act\": \"silu\",\n  \"torch_dtype\": \"float32\",\n  \"bos_token_id\": 1,\n";
  c += "  \"eos_token_id\": 2,\n  \"rope_scaling\": null,\n";
  c += std::string("  \"tie_word_embeddings\": ") + (m.tied ? "true" : "false") + m.extra_config + "\n}\n";
  return c;
}

// Writes config.json and model.safetensors; returns the bytes of model.safetensors.
std::string write_tiny(const TempDir& dir, const Tiny& m) {
  write_file(dir.file("config.json"), tiny_config(m));
  std::string st = safetensors_bytes(tiny_tensors(m));
  write_file(dir.file("model.safetensors"), st);
  return st;
}

// Every element of `w` equals what the writer put there for tensor `seed`.
void expect_weight(const kvf::Weight& w, const std::string& dtype, int seed, int rows, int cols) {
  EXPECT(w.data != nullptr);
  EXPECT_EQ(w.rows, rows);
  EXPECT_EQ(w.cols, cols);
  EXPECT(std::string(kvf::dtype_name(w.dtype)) == dtype);
  for (size_t k = 0; k < (size_t)rows * cols; k++) EXPECT_EQ(kvf::load_as_f32(w.data, w.dtype, k), stored(dtype, value_at(seed, k)));
}

void expect_vec(const std::vector<float>& v, const std::string& dtype, int seed, size_t n) {
  EXPECT_EQ(v.size(), n);
  for (size_t k = 0; k < n; k++) EXPECT_EQ(v[k], stored(dtype, value_at(seed, k)));
}

// True when `p` lies in a read-only mapping of a file whose path ends with `suffix` (Linux /proc/self/maps):
// proves the weight is a view into the mmap, not a copy.
bool points_into_mapping_of(const void* p, const std::string& suffix) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  uintptr_t a = (uintptr_t)p;
  while (std::getline(maps, line)) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {0};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
    if (a < lo || a >= hi) continue;
    return perms[1] == '-' && line.size() >= suffix.size() &&
           line.compare(line.size() - suffix.size(), suffix.size(), suffix) == 0;
  }
  return false;
}

}  // namespace

// ---- JSON parser -----------------------------------------------------------------------------------------

TEST_CASE("model json: parses nested objects and arrays in order") {
  auto v = kvf::json::parse(" {\"a\": [1, [2, {\"b\": null}], {}], \"c\": {\"d\": true, \"e\": false}, \"f\": []} ");
  EXPECT(v.type == kvf::json::Type::Object);
  EXPECT_EQ(v.obj.size(), (size_t)3);
  EXPECT(v.obj[0].first == "a" && v.obj[1].first == "c" && v.obj[2].first == "f");
  const auto* a = v.get("a");
  EXPECT(a && a->type == kvf::json::Type::Array && a->arr.size() == 3);
  EXPECT_EQ(a->arr[0].i, 1);
  EXPECT(a->arr[1].arr[1].get("b") && a->arr[1].arr[1].get("b")->is_null());
  EXPECT(a->arr[2].type == kvf::json::Type::Object && a->arr[2].obj.empty());
  EXPECT(v.get("c")->get("d")->b == true && v.get("c")->get("e")->b == false);
  EXPECT(v.get("f")->arr.empty());
  EXPECT(v.get("missing") == nullptr);
  EXPECT(a->get("x") == nullptr);  // not an object
}

TEST_CASE("model json: decodes string escapes and unicode incl. surrogate pairs") {
  auto v = kvf::json::parse(R"(["a\"b\\c\/d\b\f\n\r\t", "\u0041\u00e9\u20ac", "\ud83d\ude00", "héllo ✓", "\u0000x"])");
  EXPECT(v.arr[0].s == "a\"b\\c/d\b\f\n\r\t");
  EXPECT(v.arr[1].s == "A\xc3\xa9\xe2\x82\xac");      // A, e-acute, euro sign in UTF-8
  EXPECT(v.arr[2].s == "\xf0\x9f\x98\x80");           // U+1F600 from a surrogate pair
  EXPECT(v.arr[3].s == "h\xc3\xa9llo \xe2\x9c\x93");  // raw UTF-8 passes through
  EXPECT_EQ(v.arr[4].s.size(), (size_t)2);            // an escaped NUL is kept
  EXPECT(v.arr[4].s[0] == '\0');
}

TEST_CASE("model json: reads int64 and double numbers") {
  auto v = kvf::json::parse("[0, -0, 42, -17, 9223372036854775807, -9223372036854775808, 9223372036854775808, "
                            "1.5, -2.25e3, 1e-05, 6E+2, 0.1]");
  using kvf::json::Type;
  EXPECT(v.arr[0].type == Type::Int && v.arr[0].i == 0);
  EXPECT(v.arr[1].type == Type::Int && v.arr[1].i == 0);
  EXPECT(v.arr[2].type == Type::Int && v.arr[2].i == 42);
  EXPECT(v.arr[3].type == Type::Int && v.arr[3].i == -17);
  EXPECT(v.arr[4].type == Type::Int && v.arr[4].i == INT64_MAX);
  EXPECT(v.arr[5].type == Type::Int && v.arr[5].i == INT64_MIN);
  EXPECT(v.arr[6].type == Type::Double && v.arr[6].d == 9223372036854775808.0);  // beyond int64: a double
  EXPECT(v.arr[7].type == Type::Double && v.arr[7].d == 1.5);
  EXPECT(v.arr[8].d == -2250.0);
  EXPECT(v.arr[9].d == 1e-05);
  EXPECT(v.arr[10].type == Type::Double && v.arr[10].d == 600.0);
  EXPECT(v.arr[11].d == 0.1);
  EXPECT_EQ(v.arr[2].number(), 42.0);
}

TEST_CASE("model json: errors name the byte offset and the problem") {
  EXPECT_JSON_ERROR("", 0, "unexpected end of input");
  EXPECT_JSON_ERROR("   ", 3, "unexpected end of input");
  EXPECT_JSON_ERROR("{\"a\": 1,}", 8, "expected a string key");
  EXPECT_JSON_ERROR("[1, 2,]", 6, "expected a value");
  EXPECT_JSON_ERROR("[1 2]", 3, "expected ',' or ']'");
  EXPECT_JSON_ERROR("{\"a\" 1}", 5, "expected ':'");
  EXPECT_JSON_ERROR("{\"a\": 1} x", 9, "after the JSON value");
  EXPECT_JSON_ERROR("\"abc", 0, "unterminated string");
  EXPECT_JSON_ERROR("\"a\tb\"", 2, "control character");
  EXPECT_JSON_ERROR("\"a\\qb\"", 2, "invalid escape");
  EXPECT_JSON_ERROR("\"\\u12g4\"", 5, "invalid hex digit");
  EXPECT_JSON_ERROR("[\"\\u12\", 1]", 6, "invalid hex digit '\"'");
  EXPECT_JSON_ERROR("\"\\u12", 1, "truncated \\u escape");
  EXPECT_JSON_ERROR("\"\\ude00\"", 1, "lone low surrogate");
  EXPECT_JSON_ERROR("\"\\ud83dx\"", 1, "high surrogate not followed");
  EXPECT_JSON_ERROR("\"\\ud83d\\u0041\"", 7, "high surrogate not followed");
  EXPECT_JSON_ERROR("[01]", 1, "leading zero");
  EXPECT_JSON_ERROR("[1.]", 1, "digit after '.'");
  EXPECT_JSON_ERROR("[1e]", 1, "exponent");
  EXPECT_JSON_ERROR("[-]", 1, "expected a digit");
  EXPECT_JSON_ERROR("[+1]", 1, "unexpected character '+'");
  EXPECT_JSON_ERROR("[1e999]", 1, "out of range");
  EXPECT_JSON_ERROR("tru", 0, "expected 'true'");
  EXPECT_JSON_ERROR("[nul]", 1, "expected 'null'");
  EXPECT_JSON_ERROR("{\"a\": 1, \"a\": 2}", 9, "duplicate key");
  EXPECT_JSON_ERROR("// c\n{}", 0, "unexpected character '/'");
  EXPECT_JSON_ERROR("[\x01]", 1, "0x01");
  // Depth is bounded: hostile nesting is an error, not a stack overflow.
  std::string deep(100000, '[');
  EXPECT_JSON_ERROR(deep, (size_t)kvf::json::kMaxDepth, "nesting deeper");
  std::string ok = std::string(kvf::json::kMaxDepth, '[') + std::string(kvf::json::kMaxDepth, ']');
  EXPECT(kvf::json::parse(ok).type == kvf::json::Type::Array);
}

// ---- config.json -----------------------------------------------------------------------------------------

TEST_CASE("model config: applies Hugging Face defaults for optional fields") {
  auto c = kvf::parse_config(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 512,
    "num_key_value_heads": null, "head_dim": null, "bos_token_id": null})", "cfg.json");
  EXPECT(c.arch == kvf::Arch::Llama && c.arch_name == "LlamaForCausalLM");
  EXPECT_EQ(c.Hk, 4);    // = H
  EXPECT_EQ(c.d, 16);    // = D / H
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_NEAR(c.rms_eps, 1e-6, 1e-12);
  EXPECT(!c.tie_embeddings && !c.qkv_bias);
  EXPECT(c.rope_scaling_type.empty());
  EXPECT(c.eos_token_ids.empty());
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.final_logit_softcap, 0.f);
}

TEST_CASE("model config: reads every field, explicit head_dim, eos list and llama3 rope_scaling") {
  auto c = kvf::parse_config(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 3,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 96, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000, "final_logit_softcapping": 30.0})", "c.json");
  EXPECT_EQ(c.L, 3);
  EXPECT_EQ(c.D, 64);
  EXPECT_EQ(c.H, 8);
  EXPECT_EQ(c.Hk, 2);
  EXPECT_EQ(c.d, 32);  // not D / H
  EXPECT_EQ(c.F, 96);
  EXPECT_EQ(c.V, 128256);
  EXPECT_EQ(c.max_pos, 131072);
  EXPECT_NEAR(c.rms_eps, 1e-5, 1e-12);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT(c.tie_embeddings);
  EXPECT(c.rope_scaling_type == "llama3");
  EXPECT_EQ(c.rope_factor, 8.0);
  EXPECT_EQ(c.rope_low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_original_max_pos, 8192);
  EXPECT_EQ(c.eos_token_ids.size(), (size_t)3);
  EXPECT_EQ(c.eos_token_ids[2], 128009);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.final_logit_softcap, 30.f);

  auto q = kvf::parse_config(R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 10,
    "max_position_embeddings": 32768, "eos_token_id": 7, "sliding_window": 4096, "use_sliding_window": false,
    "rope_scaling": {"type": "default"}})", "q.json");
  EXPECT(q.arch == kvf::Arch::Qwen2 && q.qkv_bias);
  EXPECT_EQ(q.eos_token_ids.size(), (size_t)1);
  EXPECT_EQ(q.eos_token_ids[0], 7);
  EXPECT(q.rope_scaling_type.empty());
}

TEST_CASE("model config: rejects bad values naming the file and the field") {
  const std::string base = R"("architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 512)";
  auto cfg = [&](const std::string& more) { return "{" + base + more + "}"; };
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 6, "num_key_value_heads": 4)"), "x/config.json"),
                   "x/config.json", "not a multiple of num_key_value_heads");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4, "head_dim": 5)"), "config.json"),
                   "config.json", "odd");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 0)"), "config.json"), "num_attention_heads",
                   "positive");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4.5)"), "config.json"), "num_attention_heads",
                   "must be an integer");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4, "rms_norm_eps": "small")"), "config.json"),
                   "rms_norm_eps", "must be a number");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(""), "config.json"), "'num_attention_heads' is missing");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 6)"), "config.json"), "hidden_size 64",
                   "not a multiple of num_attention_heads");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 4.0})"),
                                     "config.json"),
                   "rope_scaling", "'yarn'", "supported: llama3");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})"),
                                     "config.json"),
                   "rope_scaling.low_freq_factor", "missing");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4, "hidden_act": "gelu")"), "config.json"),
                   "hidden_act", "silu");
  EXPECT_BAD_MODEL(kvf::parse_config(cfg(R"(, "num_attention_heads": 4, "eos_token_id": [2, "x"])"), "config.json"),
                   "eos_token_id", "integer");
  EXPECT_BAD_MODEL(kvf::parse_config("[1, 2]", "config.json"), "config.json", "expected a JSON object");
}

TEST_CASE("model config: Mistral sliding_window shorter than the context is rejected, longer accepted") {
  const std::string base = R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 128, "vocab_size": 100,
    "max_position_embeddings": 32768, "sliding_window": )";
  EXPECT_BAD_MODEL(kvf::parse_config(base + "4096}", "mistral/config.json"), "mistral/config.json",
                   "'sliding_window' is 4096, smaller than max_position_embeddings 32768", "not supported");
  auto a = kvf::parse_config(base + "32768}", "config.json");
  EXPECT(a.arch == kvf::Arch::Mistral && a.Hk == 1);
  auto b = kvf::parse_config(base + "null}", "config.json");
  EXPECT_EQ(b.max_pos, 32768);
  // Qwen2 applies its window only with use_sliding_window: true.
  const std::string qwen = R"({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 32768,
    "sliding_window": 4096, "use_sliding_window": )";
  EXPECT(kvf::parse_config(qwen + "false}", "config.json").arch == kvf::Arch::Qwen2);
  EXPECT_BAD_MODEL(kvf::parse_config(qwen + "true}", "config.json"), "sliding_window");
}

// ---- load_model: valid models ----------------------------------------------------------------------------

TEST_CASE("model load: single-file F32 untied model maps every tensor with the written values") {
  TempDir dir;
  Tiny m;
  write_tiny(dir, m);
  auto model = kvf::load_model(dir.path);
  const auto& c = model->cfg;
  EXPECT(c.arch == kvf::Arch::Llama);
  EXPECT_EQ(c.L, 2);
  EXPECT_EQ(c.D, 16);
  EXPECT_EQ(c.H, 4);
  EXPECT_EQ(c.Hk, 2);
  EXPECT_EQ(c.d, 4);
  EXPECT_EQ(c.F, 24);
  EXPECT_EQ(c.V, 40);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_NEAR(c.rms_eps, 1e-5, 1e-12);
  EXPECT(c.dtype == kvf::DType::F32);
  EXPECT_EQ(c.eos_token_ids.size(), (size_t)1);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT(model->dir == dir.path);
  EXPECT_EQ(model->layers.size(), (size_t)2);

  expect_weight(model->embed, "F32", 1, 40, 16);
  expect_weight(model->lm_head, "F32", 2, 40, 16);
  EXPECT(model->lm_head.data != model->embed.data);
  expect_vec(model->final_norm, "F32", 3, 16);
  for (int l = 0; l < 2; l++) {
    const auto& lw = model->layers[(size_t)l];
    int s = 100 + 20 * l;
    expect_vec(lw.attn_norm, "F32", s + 0, 16);
    expect_weight(lw.wq, "F32", s + 1, 16, 16);
    expect_weight(lw.wk, "F32", s + 2, 8, 16);
    expect_weight(lw.wv, "F32", s + 3, 8, 16);
    expect_weight(lw.wo, "F32", s + 4, 16, 16);
    EXPECT(lw.bq.empty() && lw.bk.empty() && lw.bv.empty());
    expect_vec(lw.mlp_norm, "F32", s + 8, 16);
    expect_weight(lw.w_gate, "F32", s + 9, 24, 16);
    expect_weight(lw.w_up, "F32", s + 10, 24, 16);
    expect_weight(lw.w_down, "F32", s + 11, 16, 24);
  }
  // Matrices: embed + lm_head + per layer (q, k, v, o, gate, up, down), 4 bytes each.
  size_t per_layer = 16 * 16 + 8 * 16 + 8 * 16 + 16 * 16 + 3 * 24 * 16;
  EXPECT_EQ(model->weight_bytes, (size_t)4 * (2 * 40 * 16 + 2 * per_layer));
  // Views into the read-only file mapping, not copies.
  EXPECT(points_into_mapping_of(model->layers[1].w_down.data, "/model.safetensors"));
  EXPECT(points_into_mapping_of(model->embed.data, "/model.safetensors"));
}

TEST_CASE("model load: F16 and BF16 weights keep their file dtype, tied embeddings share the embedding") {
  for (const char* dt : {"F16", "BF16"}) {
    TempDir dir;
    Tiny m;
    m.dtype = dt;
    m.norm_dtype = dt;
    m.tied = true;
    write_tiny(dir, m);
    auto model = kvf::load_model(dir.path + "/");  // a trailing slash is fine
    EXPECT(std::string(kvf::dtype_name(model->cfg.dtype)) == dt);
    EXPECT(model->cfg.tie_embeddings);
    EXPECT(model->lm_head.data == model->embed.data);
    EXPECT(model->lm_head.dtype == model->embed.dtype);
    EXPECT_EQ(model->lm_head.rows, 40);
    expect_weight(model->embed, dt, 1, 40, 16);
    expect_weight(model->layers[0].wk, dt, 102, 8, 16);
    expect_weight(model->layers[1].w_down, dt, 131, 16, 24);
    expect_vec(model->final_norm, dt, 3, 16);  // widened to float exactly
    expect_vec(model->layers[1].mlp_norm, dt, 128, 16);
    size_t per_layer = 16 * 16 + 8 * 16 + 8 * 16 + 16 * 16 + 3 * 24 * 16;
    EXPECT_EQ(model->weight_bytes, (size_t)2 * (40 * 16 + 2 * per_layer));  // tied: embedding counted once
  }
}

TEST_CASE("model load: matrices and norms may differ in dtype; an unused lm_head is ignored when tied") {
  TempDir dir;
  Tiny m;
  m.dtype = "BF16";
  m.norm_dtype = "F32";
  write_tiny(dir, m);  // untied: writes lm_head.weight ...
  m.tied = true;       // ... but the config says tied
  write_file(dir.file("config.json"), tiny_config(m));
  auto model = kvf::load_model(dir.path);
  EXPECT(model->cfg.dtype == kvf::DType::BF16);
  EXPECT(model->lm_head.data == model->embed.data);
  expect_vec(model->layers[0].attn_norm, "F32", 100, 16);
  expect_weight(model->layers[0].wq, "BF16", 101, 16, 16);
}

TEST_CASE("model load: sharded safetensors with model.safetensors.index.json") {
  TempDir dir;
  Tiny m;
  m.dtype = "F16";
  write_file(dir.file("config.json"), tiny_config(m));
  auto ts = tiny_tensors(m);
  // Shard 1: embedding and layer 0; shard 2: the rest (as transformers splits by size, in name order).
  auto in_first = [](const std::string& name) {
    return name.rfind("model.embed", 0) == 0 || name.rfind("model.layers.0.", 0) == 0;
  };
  std::vector<TensorSpec> s1, s2;
  for (const auto& t : ts) (in_first(t.name) ? s1 : s2).push_back(t);
  write_file(dir.file("model-00001-of-00002.safetensors"), safetensors_bytes(s1));
  write_file(dir.file("model-00002-of-00002.safetensors"), safetensors_bytes(s2));
  std::string idx = "{\"metadata\": {\"total_size\": 12345}, \"weight_map\": {";
  for (size_t k = 0; k < ts.size(); k++)
    idx += std::string(k ? ",\n" : "") + "\"" + ts[k].name + "\": \"" +
           (in_first(ts[k].name) ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors") + "\"";
  idx += "}}";
  write_file(dir.file("model.safetensors.index.json"), idx);

  auto model = kvf::load_model(dir.path);
  EXPECT(model->cfg.dtype == kvf::DType::F16);
  expect_weight(model->embed, "F16", 1, 40, 16);
  expect_weight(model->layers[0].wv, "F16", 103, 8, 16);
  expect_weight(model->layers[1].wq, "F16", 121, 16, 16);
  expect_weight(model->lm_head, "F16", 2, 40, 16);
  expect_vec(model->final_norm, "F32", 3, 16);
  EXPECT(points_into_mapping_of(model->layers[0].wv.data, "/model-00001-of-00002.safetensors"));
  EXPECT(points_into_mapping_of(model->layers[1].wq.data, "/model-00002-of-00002.safetensors"));

  // A tensor missing from its shard names the shard; one missing from weight_map names the index.
  std::vector<TensorSpec> s2_less;
  for (const auto& t : s2)
    if (t.name != "model.layers.1.mlp.up_proj.weight") s2_less.push_back(t);
  write_file(dir.file("model-00002-of-00002.safetensors"), safetensors_bytes(s2_less));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model-00002-of-00002.safetensors",
                   "tensor 'model.layers.1.mlp.up_proj.weight' is missing");
  write_file(dir.file("model-00002-of-00002.safetensors"), safetensors_bytes(s2));
  std::string idx_less = idx;
  size_t at = idx_less.find("\"model.norm.weight\"");
  idx_less.replace(at, std::string("\"model.norm.weight\"").size(), "\"model.norm.weight_x\"");
  write_file(dir.file("model.safetensors.index.json"), idx_less);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors.index.json",
                   "tensor 'model.norm.weight' is missing from weight_map");
  // A shard the index names but the directory lacks.
  write_file(dir.file("model.safetensors.index.json"), idx);
  fs::remove(dir.file("model-00002-of-00002.safetensors"));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors.index.json",
                   "shard 'model-00002-of-00002.safetensors'", "not found");
  // An index pointing outside the directory.
  write_file(dir.file("model.safetensors.index.json"),
             "{\"weight_map\": {\"model.embed_tokens.weight\": \"../elsewhere.safetensors\"}}");
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "not a plain file name");
  write_file(dir.file("model.safetensors.index.json"), "{\"weight_map\": [}");
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors.index.json", "invalid JSON at byte 16");
}

TEST_CASE("model load: Qwen2 reads q/k/v biases and fails without them") {
  TempDir dir;
  Tiny m;
  m.arch = "Qwen2ForCausalLM";
  m.dtype = "BF16";
  m.norm_dtype = "BF16";
  write_tiny(dir, m);
  auto model = kvf::load_model(dir.path);
  EXPECT(model->cfg.arch == kvf::Arch::Qwen2 && model->cfg.qkv_bias);
  for (int l = 0; l < 2; l++) {
    const auto& lw = model->layers[(size_t)l];
    expect_vec(lw.bq, "BF16", 100 + 20 * l + 5, 16);
    expect_vec(lw.bk, "BF16", 100 + 20 * l + 6, 8);
    expect_vec(lw.bv, "BF16", 100 + 20 * l + 7, 8);
  }
  // The same files declared Llama load too (biases ignored), but Qwen2 files without biases do not.
  Tiny llama = m;
  llama.arch = "LlamaForCausalLM";
  write_file(dir.file("model.safetensors"), safetensors_bytes(tiny_tensors(llama)));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "'model.layers.0.self_attn.q_proj.bias' is missing");
}

// ---- load_model: bad model directories -------------------------------------------------------------------

TEST_CASE("model bad: missing directory, missing config.json, invalid JSON, unsupported architecture") {
  TempDir dir;
  EXPECT_BAD_MODEL(kvf::load_model(dir.file("nope")), "model directory not found", "nope");
  write_file(dir.file("plain"), "x");
  EXPECT_BAD_MODEL(kvf::load_model(dir.file("plain")), "not a directory");

  Tiny m;
  std::string st = safetensors_bytes(tiny_tensors(m));
  write_file(dir.file("model.safetensors"), st);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), dir.file("config.json"), "not found");

  write_file(dir.file("config.json"), "{\"architectures\": [\"LlamaForCausalLM\"],\n \"hidden_size\": 16,,}");
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), dir.file("config.json"), "invalid JSON at byte 59",
                   "expected a string key");

  Tiny gpt = m;
  gpt.arch = "GPT2LMHeadModel";
  write_file(dir.file("config.json"), tiny_config(gpt));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "config.json", "unsupported architecture 'GPT2LMHeadModel'",
                   "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM");

  fs::create_directory(dir.file("cfgdir"));
  fs::create_directory(dir.file("cfgdir/config.json"));
  EXPECT_BAD_MODEL(kvf::load_model(dir.file("cfgdir")), "config.json", "not a regular file");
}

TEST_CASE("model bad: missing weights file, missing tensor, missing untied lm_head") {
  TempDir dir;
  Tiny m;
  write_file(dir.file("config.json"), tiny_config(m));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "no weights found", "model.safetensors",
                   "model.safetensors.index.json");

  auto ts = tiny_tensors(m);
  std::vector<TensorSpec> less;
  for (const auto& t : ts)
    if (t.name != "model.layers.1.self_attn.k_proj.weight") less.push_back(t);
  write_file(dir.file("model.safetensors"), safetensors_bytes(less));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), dir.file("model.safetensors"),
                   "tensor 'model.layers.1.self_attn.k_proj.weight' is missing");

  less.clear();
  for (const auto& t : ts)
    if (t.name != "lm_head.weight") less.push_back(t);
  write_file(dir.file("model.safetensors"), safetensors_bytes(less));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "'lm_head.weight' is missing",
                   "tie_word_embeddings is false");
}

TEST_CASE("model bad: wrong tensor shape names tensor, expected and actual shape") {
  TempDir dir;
  Tiny m;
  write_file(dir.file("config.json"), tiny_config(m));
  auto ts = tiny_tensors(m);
  for (auto& t : ts)
    if (t.name == "model.layers.0.self_attn.q_proj.weight") t.shape = {32, 8};  // same bytes, wrong shape
  write_file(dir.file("model.safetensors"), safetensors_bytes(ts));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors",
                   "tensor 'model.layers.0.self_attn.q_proj.weight' has shape [32, 8], expected [16, 16]");
  // A model whose config disagrees with its files in one dimension.
  Tiny wide = m;
  wide.F = 32;
  write_file(dir.file("config.json"), tiny_config(wide));
  write_file(dir.file("model.safetensors"), safetensors_bytes(tiny_tensors(m)));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "'model.layers.0.mlp.gate_proj.weight' has shape [24, 16], expected [32, 16]");
}

TEST_CASE("model bad: unsupported dtype names the dtype and the tensor") {
  TempDir dir;
  Tiny m;
  write_file(dir.file("config.json"), tiny_config(m));
  auto ts = tiny_tensors(m);
  for (auto& t : ts)
    if (t.name == "model.layers.1.mlp.up_proj.weight") {
      t.dtype = "I8";
      t.bytes = std::string(24 * 16, '\x05');
    }
  write_file(dir.file("model.safetensors"), safetensors_bytes(ts));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "'model.layers.1.mlp.up_proj.weight'",
                   "dtype I8", "supported: F32, F16, BF16");
  // A dtype safetensors does not define at all is rejected when the file is opened.
  ts = tiny_tensors(m);
  ts[0].dtype = "Q4_K";
  write_file(dir.file("model.safetensors"), safetensors_bytes(ts));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "'model.embed_tokens.weight'", "unknown dtype 'Q4_K'");
  // An extra tensor of another dtype that the model does not use is tolerated.
  ts = tiny_tensors(m);
  ts.push_back({"model.rotary_emb.step", "I64", {2}, std::string(16, '\0')});
  write_file(dir.file("model.safetensors"), safetensors_bytes(ts));
  EXPECT(kvf::load_model(dir.path)->layers.size() == 2);
}

TEST_CASE("model bad: truncated safetensors and header length larger than the file") {
  TempDir dir;
  Tiny m;
  std::string st = write_tiny(dir, m);
  write_file(dir.file("model.safetensors"), st.substr(0, st.size() - 100));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), dir.file("model.safetensors"), "'lm_head.weight'",
                   "past the end of the data section", "truncated");

  std::string huge = u64le(1ull << 40) + st.substr(8);
  write_file(dir.file("model.safetensors"), huge);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), dir.file("model.safetensors"),
                   "header length 1099511627776 is larger than the file");
  uint64_t n = 0;
  for (int k = 7; k >= 0; k--) n = n << 8 | (unsigned char)st[k];
  write_file(dir.file("model.safetensors"), st.substr(0, 8 + n - 10));  // cut inside the header
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "header length " + std::to_string(n) + " is larger than the file");

  write_file(dir.file("model.safetensors"), "");
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "0 bytes", "too short");
  write_file(dir.file("model.safetensors"), std::string("\x02\x00\x00", 3));
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "3 bytes");
}

TEST_CASE("model bad: safetensors header that is not JSON, overlapping or inconsistent offsets") {
  TempDir dir;
  Tiny m;
  write_file(dir.file("config.json"), tiny_config(m));
  auto raw = [&](const std::string& header, size_t data_bytes) {
    write_file(dir.file("model.safetensors"), u64le(header.size()) + header + std::string(data_bytes, '\0'));
  };
  raw("this is not json", 0);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "header is not valid JSON", "header byte 0");
  raw("[1, 2]", 0);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "header is a JSON array");
  raw(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
          "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", 24);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "model.safetensors", "tensors 'a' and 'b' overlap");
  raw(R"({"a": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 16]}})", 16);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "tensor 'a'", "hold 16 bytes", "shape [4, 2] of F32 needs 32");
  raw(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}})", 16);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "tensor 'a'", "begin after end");
  raw(R"({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", 16);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "tensor 'a'", "non-negative integer");
  raw(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 16]}})", 16);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "tensor 'a'", "too large");
  raw(R"({"a": {"dtype": "F32", "shape": [4]}})", 16);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "tensor 'a'", "data_offsets");
  raw(R"({"a": [1]})", 16);
  EXPECT_BAD_MODEL(kvf::load_model(dir.path), "tensor 'a'", "expected an object");
  // Zero-element tensors take no bytes and never overlap anything.
  raw(R"({"z": {"dtype": "F32", "shape": [0, 4], "data_offsets": [0, 0]},
          "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 16);
  auto f = kvf::SafetensorsFile::open(dir.file("model.safetensors"));
  EXPECT_EQ(f->tensors().size(), (size_t)2);
  EXPECT_EQ(f->find("z")->bytes, (size_t)0);
  EXPECT_EQ(f->find("a")->bytes, (size_t)16);
  EXPECT(f->find("nope") == nullptr);
}

TEST_CASE("model bad: every truncation and header corruption is a BadModel error, never a crash") {
  TempDir dir;
  Tiny m;
  m.dtype = "F16";
  std::string st = write_tiny(dir, m);
  uint64_t n = 0;
  for (int k = 7; k >= 0; k--) n = n << 8 | (unsigned char)st[k];
  std::string path = dir.file("model.safetensors");
  // Every cut inside the header, then every 61st byte of the data: all must fail cleanly. The file is shrunk
  // in place (longest cut first), so no cut rewrites it.
  std::vector<size_t> lens;
  for (size_t len = 0; len < st.size(); len += len < 8 + n + 16 ? 1 : 61) lens.push_back(len);
  for (auto it = lens.rbegin(); it != lens.rend(); ++it) {
    if (truncate(path.c_str(), (off_t)*it) != 0) throw kvt::Failure{"truncate failed"};
    EXPECT_BAD_MODEL(kvf::load_model(dir.path), path);
  }
  EXPECT(lens.size() > n);
  // Corrupt each header byte in turn (written in place, then restored): the load either succeeds (a harmless
  // change, e.g. in padding or a metadata value) or fails with BadModel; nothing else may happen.
  write_file(path, st);
  FILE* fp = std::fopen(path.c_str(), "r+b");
  if (!fp) throw kvt::Failure{"cannot reopen " + path};
  auto put = [&](size_t pos, char c) {
    std::fseek(fp, (long)pos, SEEK_SET);
    std::fputc((unsigned char)c, fp);
    std::fflush(fp);
  };
  int ok = 0, bad = 0;
  for (size_t pos = 8; pos < 8 + n; pos++) {
    for (char c : {'\0', '9', '"', '}'}) {
      put(pos, c);
      try {
        kvf::load_model(dir.path);
        ok++;
      } catch (const kvf::Error& e) {
        if (e.kind != kvf::ErrorKind::BadModel) throw kvt::Failure{std::string("non-BadModel error: ") + e.what()};
        bad++;
      }
    }
    put(pos, st[pos]);
  }
  std::fclose(fp);
  EXPECT(bad > 0 && ok > 0);
  write_file(path, st);
  EXPECT(kvf::load_model(dir.path)->cfg.dtype == kvf::DType::F16);
}

TEST_CASE("model load: weights stay valid after the directory's files are deleted") {
  std::shared_ptr<kvf::Model> model;
  {
    TempDir dir;
    Tiny m;
    write_tiny(dir, m);
    model = kvf::load_model(dir.path);
  }  // directory removed; the mappings keep the data
  expect_weight(model->layers[1].wo, "F32", 124, 16, 16);
  expect_weight(model->lm_head, "F32", 2, 40, 16);
}
