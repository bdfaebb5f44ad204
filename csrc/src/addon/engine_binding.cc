// N-API binding of the engine: loadEngine (async) -> an Engine object with addSequence, step (async, off the
// event loop), release, stats. Declared with types in worker/engine.ts.
//
// Concurrency contract: while a step runs on the thread pool, the engine's state belongs to it; the caller
// mutates (addSequence, release) only between steps — worker/engine.ts enforces this — and a call that breaks it
// fails with INTERNAL instead of racing. poolStats reads a snapshot taken at the end of the last call.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "budget_js.h"
#include "engine.h"
#include "registry.h"

namespace {

using kvf::napi::guarded;
using kvf::napi::js_error;

kvf::DType parse_kv_dtype(const std::string& s) {
  if (s == "f16" || s == "F16") return kvf::DType::F16;
  if (s == "f32" || s == "F32") return kvf::DType::F32;
  kvf::bad_argument("kvDtype must be f16 or f32, got '" + s + "'");
}

double num_or(const Napi::Object& o, const char* key, double dflt) {
  if (!o.Has(key) || o.Get(key).IsUndefined() || o.Get(key).IsNull()) return dflt;
  Napi::Value v = o.Get(key);
  if (v.IsBigInt()) {
    bool lossless;
    return (double)v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  if (!v.IsNumber()) kvf::bad_argument(std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::vector<int32_t> int_array(const Napi::Value& v, const char* what) {
  std::vector<int32_t> out;
  if (v.IsUndefined() || v.IsNull()) return out;
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() == napi_int32_array) {
      auto a = v.As<Napi::Int32Array>();
      out.assign(a.Data(), a.Data() + a.ElementLength());
      return out;
    }
    if (ta.TypedArrayType() == napi_uint32_array) {
      auto a = v.As<Napi::Uint32Array>();
      for (size_t i = 0; i < a.ElementLength(); i++) {
        if (a[i] > (uint32_t)INT32_MAX) kvf::bad_argument(std::string(what) + " holds an id out of range");
        out.push_back((int32_t)a[i]);
      }
      return out;
    }
  }
  if (!v.IsArray()) kvf::bad_argument(std::string(what) + " must be an array of token ids");
  auto a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber()) kvf::bad_argument(std::string(what) + "[" + std::to_string(i) + "] is not a number");
    double d = e.As<Napi::Number>().DoubleValue();
    if (d != (double)(int64_t)d || d < 0 || d > INT32_MAX)
      kvf::bad_argument(std::string(what) + "[" + std::to_string(i) + "] is not a valid token id");
    out.push_back((int32_t)d);
  }
  return out;
}

kvf::SamplingSpec sampling_from_js(const Napi::Value& v) {
  kvf::SamplingSpec s;
  if (v.IsUndefined() || v.IsNull()) return s;
  if (!v.IsObject()) kvf::bad_argument("sampling must be an object");
  auto o = v.As<Napi::Object>();
  s.temperature = (float)num_or(o, "temperature", 1.0);
  s.top_p = (float)num_or(o, "topP", 1.0);
  s.top_k = (int32_t)num_or(o, "topK", 0);
  s.max_new_tokens = (int32_t)num_or(o, "maxNewTokens", 256);
  s.ignore_eos = o.Has("ignoreEos") && o.Get("ignoreEos").ToBoolean().Value();
  if (o.Has("seed")) {
    Napi::Value sv = o.Get("seed");
    if (sv.IsBigInt()) {
      bool lossless;
      s.seed = sv.As<Napi::BigInt>().Uint64Value(&lossless);
    } else if (sv.IsNumber()) {
      double d = sv.As<Napi::Number>().DoubleValue();
      if (d < 0 || d != (double)(uint64_t)d) kvf::bad_argument("sampling.seed must be a non-negative integer");
      s.seed = (uint64_t)d;
    } else if (sv.IsString()) {
      const std::string str = sv.As<Napi::String>().Utf8Value();
      try {
        size_t used = 0;
        s.seed = std::stoull(str, &used, 10);
        if (used != str.size()) throw std::invalid_argument("trailing");
      } catch (...) {
        kvf::bad_argument("sampling.seed must be a decimal uint64, got '" + str + "'");
      }
    } else if (!sv.IsUndefined()) {
      kvf::bad_argument("sampling.seed must be a number, bigint or decimal string");
    }
  }
  if (o.Has("stopIds")) s.stop_ids = int_array(o.Get("stopIds"), "sampling.stopIds");
  return s;
}

// Every step and load runs on one long-lived compute thread, whichever libuv pool thread picked up the
// AsyncWorker (that thread only waits). OpenMP (libgomp) keeps one thread team per master thread: with steps
// arriving on the 4 libuv threads in turn, up to 4 teams existed and the idle ones spun on the 2 cores while
// another team worked (decode at 1K context: 13.3 ms/step with the pool threads, 10.8 ms/step on one thread).
class ComputeThread {
 public:
  static ComputeThread& get() {
    static ComputeThread* t = new ComputeThread();  // never destroyed: the detached thread may outlive statics
    return *t;
  }
  // Runs fn on the compute thread and returns when it has run (fn must not throw: CaughtError wraps it).
  void run(const std::function<void()>& fn) {
    std::mutex done_mu;
    std::condition_variable done_cv;
    bool done = false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      q_.push_back([&] {
        fn();
        std::lock_guard<std::mutex> dl(done_mu);
        done = true;
        done_cv.notify_one();
      });
    }
    cv_.notify_one();
    std::unique_lock<std::mutex> dl(done_mu);
    done_cv.wait(dl, [&] { return done; });
  }

 private:
  ComputeThread() {
    std::thread([this] {
      for (;;) {
        std::function<void()> task;
        {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return !q_.empty(); });
          task = std::move(q_.front());
          q_.pop_front();
        }
        task();
      }
    }).detach();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
};

// Runs fn on a worker thread, keeping any failure as (code, message) for the JS side: no exception leaves Execute.
struct CaughtError {
  std::string code, message;
  bool empty() const { return message.empty(); }
  template <typename F>
  void run(F&& fn, const char* doing) {
    ComputeThread::get().run([&] { run_here(fn, doing); });
  }
  template <typename F>
  void run_here(F&& fn, const char* doing) {
    try {
      fn();
    } catch (const kvf::Error& e) {
      code = kvf::error_kind_name(e.kind);
      message = e.what();
    } catch (const std::bad_alloc&) {
      code = "INTERNAL";
      message = std::string("out of host memory ") + doing;
    } catch (const std::exception& e) {
      code = "INTERNAL";
      message = std::string("internal error (this is a bug): ") + e.what();
    } catch (...) {
      code = "INTERNAL";
      message = std::string("internal error (this is a bug): unknown exception ") + doing;
    }
  }
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::FunctionReference* ctor;

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("addSequence", &EngineWrap::AddSequence),
                        InstanceMethod("release", &EngineWrap::Release),
                        InstanceMethod("step", &EngineWrap::Step),
                        InstanceMethod("seqStats", &EngineWrap::SeqStats),
                        InstanceMethod("poolStats", &EngineWrap::PoolStats),
                        InstanceMethod("config", &EngineWrap::Config),
                        InstanceMethod("headPositions", &EngineWrap::HeadPositions),
                        InstanceMethod("headKv", &EngineWrap::HeadKv),
                        InstanceMethod("close", &EngineWrap::Close)});
  }

  explicit EngineWrap(const Napi::CallbackInfo& cb) : Napi::ObjectWrap<EngineWrap>(cb) {
    if (cb.Length() != 1 || !cb[0].IsExternal())
      throw js_error(cb.Env(), "BAD_ARGUMENT", "Engine objects are made by loadEngine()");
    engine_.reset(cb[0].As<Napi::External<kvf::Engine>>().Data());
    snapshot();
  }

  kvf::Engine& engine(Napi::Env env) {
    if (!engine_) throw js_error(env, "BAD_ARGUMENT", "the engine is closed");
    return *engine_;
  }
  void not_busy(Napi::Env env) {
    if (busy_.load()) throw js_error(env, "INTERNAL", "internal error (this is a bug): engine call during a running step");
  }
  void snapshot() {
    if (engine_) stats_ = engine_->pool_stats();
  }

  Napi::Value AddSequence(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      not_busy(cb.Env());
      auto prompt = int_array(cb[0], "prompt");
      auto sampling = sampling_from_js(cb[1]);
      kvf::BudgetSpec budget = kvf::napi::budget_from_js(cb[2]);
      auto forced = int_array(cb[3], "resume");
      int64_t id = engine(cb.Env()).add_sequence(prompt, sampling, budget, forced);
      snapshot();
      return Napi::Number::New(cb.Env(), (double)id);
    });
  }

  Napi::Value Release(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      not_busy(cb.Env());
      engine(cb.Env()).release((int64_t)cb[0].As<Napi::Number>().Int64Value());
      snapshot();
      return cb.Env().Undefined();
    });
  }

  class StepWorker : public Napi::AsyncWorker {
   public:
    StepWorker(Napi::Env env, EngineWrap* self, std::vector<kvf::StepSeq> batch, bool want_logits, bool want_attn)
        : Napi::AsyncWorker(env), self_(self), batch_(std::move(batch)), want_logits_(want_logits), want_attn_(want_attn),
          deferred_(Napi::Promise::Deferred::New(env)) {
      self_->Ref();
    }
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
      err_.run([&] { result_ = self_->engine_->step(batch_, want_logits_, want_attn_); }, "during a step");
    }
    void OnOK() override {
      Napi::Env env = Env();
      self_->busy_ = false;
      self_->snapshot();
      self_->Unref();
      if (!err_.empty()) {
        deferred_.Reject(js_error(env, err_.code.c_str(), err_.message).Value());
        return;
      }
      Napi::Object out = Napi::Object::New(env);
      Napi::Array seqs = Napi::Array::New(env, result_.seqs.size());
      for (size_t i = 0; i < result_.seqs.size(); i++) {
        const auto& r = result_.seqs[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("id", Napi::Number::New(env, (double)r.id));
        o.Set("token", Napi::Number::New(env, r.token));
        o.Set("forced", Napi::Boolean::New(env, r.forced));
        o.Set("prefillDone", Napi::Boolean::New(env, r.prefill_done));
        o.Set("outOfPages", Napi::Boolean::New(env, r.out_of_pages));
        o.Set("finish", Napi::Number::New(env, (int)r.finish));
        if (!r.logits.empty()) {
          auto a = Napi::Float32Array::New(env, r.logits.size());
          std::memcpy(a.Data(), r.logits.data(), r.logits.size() * sizeof(float));
          o.Set("logits", a);
        }
        if (!r.attn.empty()) {
          auto a = Napi::Float32Array::New(env, r.attn.size());
          std::memcpy(a.Data(), r.attn.data(), r.attn.size() * sizeof(float));
          o.Set("attn", a);
        }
        seqs.Set((uint32_t)i, o);
      }
      out.Set("seqs", seqs);
      out.Set("decodeRows", Napi::Number::New(env, result_.decode_rows));
      out.Set("prefillRows", Napi::Number::New(env, result_.prefill_rows));
      out.Set("sequences", Napi::Number::New(env, result_.sequences));
      out.Set("ms", Napi::Number::New(env, result_.ms));
      deferred_.Resolve(out);
    }
    void OnError(const Napi::Error& e) override {  // only if the worker itself failed to run
      self_->busy_ = false;
      self_->Unref();
      deferred_.Reject(e.Value());
    }

   private:
    EngineWrap* self_;
    std::vector<kvf::StepSeq> batch_;
    bool want_logits_, want_attn_;
    Napi::Promise::Deferred deferred_;
    kvf::StepResult result_;
    CaughtError err_;
  };

  Napi::Value Step(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      Napi::Env env = cb.Env();
      engine(env);
      if (busy_.load()) throw js_error(env, "INTERNAL", "internal error (this is a bug): a step is already running");
      if (!cb[0].IsArray()) kvf::bad_argument("step(batch): batch must be an array of {id, maxLayers?}");
      auto arr = cb[0].As<Napi::Array>();
      std::vector<kvf::StepSeq> batch;
      for (uint32_t i = 0; i < arr.Length(); i++) {
        Napi::Value e = arr.Get(i);
        if (!e.IsObject()) kvf::bad_argument("step(batch): entries must be objects");
        auto o = e.As<Napi::Object>();
        kvf::StepSeq s;
        s.id = (int64_t)num_or(o, "id", -1);
        s.max_layers = (int32_t)num_or(o, "maxLayers", 0);
        if (!engine_->has(s.id)) kvf::bad_argument("step(batch): unknown sequence id " + std::to_string(s.id));
        batch.push_back(s);
      }
      bool want_logits = cb.Length() > 1 && cb[1].ToBoolean().Value();
      bool want_attn = cb.Length() > 2 && cb[2].ToBoolean().Value();
      busy_ = true;
      auto* w = new StepWorker(env, this, std::move(batch), want_logits, want_attn);
      Napi::Promise p = w->Promise();
      w->Queue();
      return p;
    });
  }

  Napi::Value SeqStats(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      not_busy(cb.Env());
      Napi::Env env = cb.Env();
      auto st = engine(env).seq_stats((int64_t)cb[0].As<Napi::Number>().Int64Value());
      Napi::Object o = Napi::Object::New(env);
      o.Set("id", (double)st.id);
      o.Set("promptTokens", st.prompt_tokens);
      o.Set("generatedTokens", st.generated_tokens);
      o.Set("positions", st.positions);
      o.Set("keptTokens", (double)st.kept_tokens);
      o.Set("fullTokens", (double)st.full_tokens);
      o.Set("minHeadTokens", st.min_head_tokens);
      o.Set("maxHeadTokens", st.max_head_tokens);
      o.Set("pages", st.pages);
      o.Set("peakPages", st.peak_pages);
      o.Set("layersDone", st.layers_done);
      o.Set("prefilling", st.prefilling);
      o.Set("finish", (int)st.finish);
      o.Set("recompressions", st.recompressions);
      return o;
    });
  }

  Napi::Value PoolStats(const Napi::CallbackInfo& cb) {
    Napi::Env env = cb.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("totalPages", stats_.total_pages);
    o.Set("freePages", stats_.free_pages);
    o.Set("pageSize", stats_.page_size);
    o.Set("numLayers", stats_.num_layers);
    o.Set("numKvHeads", stats_.num_kv_heads);
    o.Set("headDim", stats_.head_dim);
    o.Set("pageBytes", (double)stats_.page_bytes);
    o.Set("sequences", stats_.sequences);
    return o;
  }

  Napi::Value Config(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      Napi::Env env = cb.Env();
      const auto& c = engine(env).config();
      Napi::Object o = Napi::Object::New(env);
      o.Set("architecture", c.arch_name);
      o.Set("numLayers", c.L);
      o.Set("hiddenSize", c.D);
      o.Set("numHeads", c.H);
      o.Set("numKvHeads", c.Hk);
      o.Set("headDim", c.d);
      o.Set("intermediateSize", c.F);
      o.Set("vocabSize", c.V);
      o.Set("maxPositionEmbeddings", c.max_pos);
      o.Set("weightDtype", kvf::dtype_name(c.dtype));
      o.Set("weightBytes", (double)engine(env).model().weight_bytes);
      o.Set("bosTokenId", c.bos_token_id);
      Napi::Array eos = Napi::Array::New(env, c.eos_token_ids.size());
      for (size_t i = 0; i < c.eos_token_ids.size(); i++) eos.Set((uint32_t)i, c.eos_token_ids[i]);
      o.Set("eosTokenIds", eos);
      o.Set("backend", engine(env).backend().name());
      // the op table's entries this backend runs itself (ops.h; a CUDA op never falls back to the CPU)
      Napi::Array ops = Napi::Array::New(env);
      for (int32_t i = 0; i < (int32_t)kvf::Op::Count; i++)
        if (engine(env).backend().supports((kvf::Op)i)) ops.Set(ops.Length(), kvf::op_name((kvf::Op)i));
      o.Set("ops", ops);
      return o;
    });
  }

  Napi::Value HeadPositions(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      not_busy(cb.Env());
      auto pos = engine(cb.Env()).head_positions((int64_t)cb[0].As<Napi::Number>().Int64Value(),
                                                 cb[1].As<Napi::Number>().Int32Value(),
                                                 cb[2].As<Napi::Number>().Int32Value());
      auto a = Napi::Int32Array::New(cb.Env(), pos.size());
      std::memcpy(a.Data(), pos.data(), pos.size() * sizeof(int32_t));
      return a;
    });
  }

  Napi::Value HeadKv(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      not_busy(cb.Env());
      std::vector<float> k, v;
      engine(cb.Env()).head_kv((int64_t)cb[0].As<Napi::Number>().Int64Value(), cb[1].As<Napi::Number>().Int32Value(),
                               cb[2].As<Napi::Number>().Int32Value(), k, v);
      Napi::Object o = Napi::Object::New(cb.Env());
      auto ka = Napi::Float32Array::New(cb.Env(), k.size());
      auto va = Napi::Float32Array::New(cb.Env(), v.size());
      std::memcpy(ka.Data(), k.data(), k.size() * sizeof(float));
      std::memcpy(va.Data(), v.data(), v.size() * sizeof(float));
      o.Set("k", ka);
      o.Set("v", va);
      return o;
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& cb) {
    return guarded(cb, [&]() -> Napi::Value {
      not_busy(cb.Env());
      engine_.reset();
      return cb.Env().Undefined();
    });
  }

 private:
  std::unique_ptr<kvf::Engine> engine_;
  std::atomic<bool> busy_{false};
  kvf::PoolStats stats_;
};

Napi::FunctionReference* EngineWrap::ctor = nullptr;

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, std::string dir, kvf::EngineOptions opts)
      : Napi::AsyncWorker(env), dir_(std::move(dir)), opts_(opts), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    err_.run([&] { engine_ = std::make_unique<kvf::Engine>(kvf::load_model(dir_), opts_); }, "while loading the model");
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!err_.empty()) {
      deferred_.Reject(js_error(env, err_.code.c_str(), err_.message).Value());
      return;
    }
    auto ext = Napi::External<kvf::Engine>::New(env, engine_.release());
    deferred_.Resolve(EngineWrap::ctor->New({ext}));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string dir_;
  kvf::EngineOptions opts_;
  Napi::Promise::Deferred deferred_;
  std::unique_ptr<kvf::Engine> engine_;
  CaughtError err_;
};

Napi::Value LoadEngine(const Napi::CallbackInfo& cb) {
  return guarded(cb, [&]() -> Napi::Value {
    Napi::Env env = cb.Env();
    if (cb.Length() < 1 || !cb[0].IsString()) kvf::bad_argument("loadEngine(dir, options): dir must be a string");
    kvf::EngineOptions opts;
    if (cb.Length() > 1 && cb[1].IsObject()) {
      auto o = cb[1].As<Napi::Object>();
      opts.page_size = (int32_t)num_or(o, "pageSize", 16);
      opts.kv_memory_bytes = (int64_t)num_or(o, "kvMemoryBytes", 0);
      opts.num_pages = (int32_t)num_or(o, "numPages", 0);
      opts.threads = (int32_t)num_or(o, "threads", 0);
      if (o.Has("kvDtype") && o.Get("kvDtype").IsString())
        opts.kv_dtype = parse_kv_dtype(o.Get("kvDtype").As<Napi::String>().Utf8Value());
      if (o.Has("backend") && o.Get("backend").IsString()) opts.backend = o.Get("backend").As<Napi::String>().Utf8Value();
    }
    if (opts.num_pages <= 0 && opts.kv_memory_bytes <= 0)
      kvf::bad_argument("loadEngine: give kvMemoryBytes or numPages (the KV page pool size)");
    auto* w = new LoadWorker(env, cb[0].As<Napi::String>().Utf8Value(), opts);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  });
}

kvf::napi::Register reg([](Napi::Env env, Napi::Object exports) {
  Napi::Function cls = EngineWrap::Define(env);
  EngineWrap::ctor = new Napi::FunctionReference(Napi::Persistent(cls));
  exports.Set("Engine", cls);
  exports.Set("loadEngine", Napi::Function::New(env, LoadEngine, "loadEngine"));
});

}  // namespace
