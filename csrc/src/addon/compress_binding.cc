// N-API exports of the compression math (compress.h), typed in worker/compress-native.ts. They let the tests
// compare the engine's scoring, budgets and allocation with the independent reference (tests/reference/adakv.ts),
// and give the JS side one validator for budgets. Every export is guarded: errors reach JS with `code` set.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "budget_js.h"
#include "compress.h"
#include "registry.h"

namespace kvf::napi {

namespace {

bool absent(const Napi::Value& v) { return v.IsUndefined() || v.IsNull(); }

std::string describe(const Napi::Value& v) {
  if (v.IsString()) return "'" + v.As<Napi::String>().Utf8Value() + "'";
  if (v.IsNumber()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v.As<Napi::Number>().DoubleValue());
    return buf;
  }
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "true" : "false";
  if (absent(v)) return v.IsNull() ? "null" : "undefined";
  return v.IsObject() ? "an object" : "a value of another type";
}

// A non-negative integer that fits int32 (proto uint32 fields; larger values are rejected, not wrapped).
int32_t to_count(const Napi::Value& v, const std::string& field) {
  if (!v.IsNumber()) bad_argument(field + " must be a number, got " + describe(v));
  double x = v.As<Napi::Number>().DoubleValue();
  if (!(x >= 0) || x != std::floor(x) || x > (double)std::numeric_limits<int32_t>::max())
    bad_argument(field + " must be a non-negative integer, got " + describe(v));
  return (int32_t)x;
}

// Any integer that fits int32 (function arguments; range rules are checked by the C++ function itself).
int32_t to_int(const Napi::Value& v, const std::string& field) {
  if (!v.IsNumber()) bad_argument(field + " must be a number, got " + describe(v));
  double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x) || x != std::floor(x) || x < (double)std::numeric_limits<int32_t>::min() ||
      x > (double)std::numeric_limits<int32_t>::max())
    bad_argument(field + " must be an integer, got " + describe(v));
  return (int32_t)x;
}

float to_float(const Napi::Value& v, const std::string& field) {
  if (!v.IsNumber()) bad_argument(field + " must be a number, got " + describe(v));
  return (float)v.As<Napi::Number>().DoubleValue();
}

// An enum given by proto name or number; returns `dflt` for absent, *_UNSPECIFIED and 0, -1 for unknown names.
int32_t to_enum(const Napi::Value& v, const std::string& field, const char* unspecified,
                const std::vector<std::pair<const char*, int32_t>>& names, int32_t dflt) {
  if (absent(v)) return dflt;
  if (v.IsNumber()) {
    int32_t x = to_int(v, field);
    return x == 0 ? dflt : x;  // unknown numbers are rejected by validate_budget, which names the field
  }
  if (!v.IsString()) bad_argument(field + " must be a string, got " + describe(v));
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s == unspecified) return dflt;
  std::string all;
  for (auto& [name, value] : names) {
    if (s == name) return value;
    all += (all.empty() ? "" : ", ") + std::string(name);
  }
  bad_argument(field + " must be one of " + all + ", got '" + s + "'");
}

Napi::Float32Array f32_arg(const Napi::Value& v, const std::string& name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    bad_argument(name + " must be a Float32Array, got " + describe(v));
  return v.As<Napi::Float32Array>();
}

Napi::Int32Array i32_arg(const Napi::Value& v, const std::string& name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    bad_argument(name + " must be an Int32Array, got " + describe(v));
  return v.As<Napi::Int32Array>();
}

void need_length(size_t have, size_t want, const std::string& name, const std::string& shape) {
  if (have != want)
    bad_argument(name + " must have " + std::to_string(want) + " elements (" + shape + "), got " + std::to_string(have));
}

BudgetSpec validated_budget(const Napi::Value& v) {
  BudgetSpec b = budget_from_js(v);
  validate_budget(b);
  return b;
}

Napi::Value ValidateBudget(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    validated_budget(cb[0]);
    return cb.Env().Undefined();
  });
}

Napi::Value BudgetTokens(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    BudgetSpec b = validated_budget(cb[0]);
    return Napi::Number::New(cb.Env(), budget_tokens(b, to_count(cb[1], "n")));
  });
}

Napi::Value Compresses(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    BudgetSpec b = validated_budget(cb[0]);
    return Napi::Boolean::New(cb.Env(), compresses(b, to_count(cb[1], "n")));
  });
}

Napi::Value LayerPrefixBudgets(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    BudgetSpec b = validated_budget(cb[0]);
    std::vector<int32_t> v = layer_prefix_budgets(b, to_int(cb[1], "L"), to_count(cb[2], "n"));
    Napi::Array out = Napi::Array::New(cb.Env(), v.size());
    for (uint32_t l = 0; l < v.size(); l++) out.Set(l, Napi::Number::New(cb.Env(), v[l]));
    return out;
  });
}

// snapkvScores(q, qpos, w, k, kpos, m, mPrefix, H, Hk, d, pooling, reduce, kernel) -> Float32Array [Hk, mPrefix]
Napi::Value SnapkvScores(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    Napi::Float32Array q = f32_arg(cb[0], "q"), k = f32_arg(cb[3], "k");
    Napi::Int32Array qpos = i32_arg(cb[1], "qpos"), kpos = i32_arg(cb[4], "kpos");
    const int32_t w = to_int(cb[2], "w"), m = to_int(cb[5], "m"), mp = to_int(cb[6], "mPrefix");
    const int32_t H = to_int(cb[7], "H"), Hk = to_int(cb[8], "Hk"), d = to_int(cb[9], "d");
    const auto pooling = (Pooling)to_enum(cb[10], "pooling", "POOLING_UNSPECIFIED", {{"MAX", 1}, {"AVG", 2}}, 1);
    const auto reduce = (GqaReduce)to_enum(cb[11], "reduce", "GQA_REDUCE_UNSPECIFIED", {{"MEAN", 1}, {"MAXIMUM", 2}}, 1);
    const int32_t kernel = to_int(cb[12], "kernel");
    if (w < 1 || m < 0 || mp < 0 || H < 1 || Hk < 1 || d < 1)
      bad_argument("snapkvScores: need w, H, Hk, d >= 1 and m, mPrefix >= 0");
    need_length(q.ElementLength(), (size_t)w * H * d, "q", "[w, H, d]");
    need_length(qpos.ElementLength(), (size_t)w, "qpos", "[w]");
    need_length(k.ElementLength(), (size_t)m * Hk * d, "k", "[m, Hk, d]");
    need_length(kpos.ElementLength(), (size_t)m, "kpos", "[m]");
    if (mp > m) bad_argument("mPrefix must be <= m, got " + std::to_string(mp) + " > " + std::to_string(m));
    Napi::Float32Array S = Napi::Float32Array::New(cb.Env(), (size_t)Hk * mp);
    snapkv_scores(q.Data(), qpos.Data(), w, k.Data(), kpos.Data(), m, mp, H, Hk, d, pooling, reduce, kernel, S.Data());
    return S;
  });
}

// allocate(S [Hk, m], Hk, m, Bp, alpha, ada) -> number[][]: kept prefix positions per head, ascending
Napi::Value Allocate(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    Napi::Float32Array S = f32_arg(cb[0], "S");
    const int32_t Hk = to_int(cb[1], "Hk"), m = to_int(cb[2], "m"), Bp = to_int(cb[3], "Bp");
    const float alpha = to_float(cb[4], "alpha");
    if (!cb[5].IsBoolean()) bad_argument("ada must be a boolean, got " + describe(cb[5]));
    const bool ada = cb[5].As<Napi::Boolean>().Value();
    if (Hk < 1 || m < 0) bad_argument("allocate: need Hk >= 1 and m >= 0");
    need_length(S.ElementLength(), (size_t)Hk * m, "S", "[Hk, m]");
    std::vector<std::vector<int32_t>> kept;
    allocate(S.Data(), Hk, m, Bp, alpha, ada, kept);
    Napi::Env env = cb.Env();
    Napi::Array out = Napi::Array::New(env, kept.size());
    for (uint32_t h = 0; h < kept.size(); h++) {
      Napi::Array row = Napi::Array::New(env, kept[h].size());
      for (uint32_t i = 0; i < kept[h].size(); i++) row.Set(i, Napi::Number::New(env, kept[h][i]));
      out.Set(h, row);
    }
    return out;
  });
}

Register reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("validateBudget", Napi::Function::New(env, ValidateBudget, "validateBudget"));
  exports.Set("budgetTokens", Napi::Function::New(env, BudgetTokens, "budgetTokens"));
  exports.Set("compresses", Napi::Function::New(env, Compresses, "compresses"));
  exports.Set("layerPrefixBudgets", Napi::Function::New(env, LayerPrefixBudgets, "layerPrefixBudgets"));
  exports.Set("snapkvScores", Napi::Function::New(env, SnapkvScores, "snapkvScores"));
  exports.Set("allocate", Napi::Function::New(env, Allocate, "allocate"));
});

}  // namespace

BudgetSpec budget_from_js(const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return BudgetSpec{};  // absent: the built-in default budget
  if (!v.IsObject() || v.IsArray()) bad_argument("budget must be an object, got " + describe(v));
  Napi::Object o = v.As<Napi::Object>();
  BudgetSpec b;
  b.method = (Method)to_enum(o.Get("method"), "budget.method", "METHOD_UNSPECIFIED",
                             {{"FULL", 1}, {"SNAPKV", 2}, {"PYRAMIDKV", 3}, {"ADA_SNAPKV", 4}, {"ADA_PYRAMIDKV", 5}},
                             (int32_t)b.method);
  b.pooling = (Pooling)to_enum(o.Get("pooling"), "budget.pooling", "POOLING_UNSPECIFIED", {{"MAX", 1}, {"AVG", 2}},
                               (int32_t)b.pooling);
  b.gqa_reduce = (GqaReduce)to_enum(o.Get("gqaReduce"), "budget.gqa_reduce", "GQA_REDUCE_UNSPECIFIED",
                                    {{"MEAN", 1}, {"MAXIMUM", 2}}, (int32_t)b.gqa_reduce);
  Napi::Value x;
  if (!absent(x = o.Get("window"))) b.window = to_count(x, "budget.window");
  if (!absent(x = o.Get("poolKernel"))) b.pool_kernel = to_count(x, "budget.pool_kernel");
  if (!absent(x = o.Get("floorAlpha"))) b.floor_alpha = to_float(x, "budget.floor_alpha");
  if (!absent(x = o.Get("pyramidBeta"))) b.pyramid_beta = to_float(x, "budget.pyramid_beta");
  if (!absent(x = o.Get("decodeMaxTokensPerHead")))
    b.decode_max_tokens_per_head = to_count(x, "budget.decode_max_tokens_per_head");

  // In BudgetSpec 0 means "unset" for both sizes, so a present 0 must be rejected here, where presence is known.
  Napi::Value tph = o.Get("tokensPerHead"), kr = o.Get("keepRatio");
  if (!absent(kr)) {
    b.keep_ratio = to_float(kr, "budget.keep_ratio");
    if (b.keep_ratio == 0.f) bad_argument("budget.keep_ratio must be in (0, 1], got " + describe(kr));
    b.tokens_per_head = 0;  // the default 1024 does not apply when a ratio is given
  }
  if (!absent(tph)) {
    b.tokens_per_head = to_count(tph, "budget.tokens_per_head");
    if (b.tokens_per_head == 0 && b.method != Method::Full)
      bad_argument("budget.tokens_per_head must be >= window + 1 = " + std::to_string(b.window + 1) + ", got 0");
  }
  return b;
}

}  // namespace kvf::napi
