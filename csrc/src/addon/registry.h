// Lets each addon source file add its exports without editing addon.cc:
//   static kvf::napi::Register reg([](Napi::Env env, Napi::Object exports) { exports.Set(...); });
// and converts engine errors into JS errors in one place.
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "common.h"

namespace kvf::napi {

using Registrar = std::function<void(Napi::Env, Napi::Object)>;
inline std::vector<Registrar>& registrars() {
  static std::vector<Registrar> r;
  return r;
}
struct Register {
  explicit Register(Registrar f) { registrars().push_back(std::move(f)); }
};

// A JS Error with `code` set to the engine error kind (worker/engine.ts maps it to a class).
inline Napi::Error js_error(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// Call inside `catch (...)`: rethrows the current C++ exception as a JS error. Nothing else escapes.
[[noreturn]] inline void rethrow_js(Napi::Env env) {
  try {
    throw;
  } catch (const Napi::Error&) {
    throw;
  } catch (const kvf::Error& e) {
    throw js_error(env, kvf::error_kind_name(e.kind), e.what());
  } catch (const std::bad_alloc&) {
    throw js_error(env, "INTERNAL", "out of host memory");
  } catch (const std::exception& e) {
    throw js_error(env, "INTERNAL", std::string("internal error (this is a bug): ") + e.what());
  } catch (...) {
    throw js_error(env, "INTERNAL", "internal error (this is a bug): unknown C++ exception");
  }
}

// Wraps a callback so any C++ exception becomes a JS error with a code.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& cb, F&& fn) {
  try {
    return fn();
  } catch (...) {
    rethrow_js(cb.Env());
  }
}

}  // namespace kvf::napi
