// The N-API boundary. Every function exported here is declared once, with types, in worker/engine.ts.
// No C++ exception crosses into Node: each call converts kvf::Error into a JS Error with `code` set to the
// error kind (BAD_MODEL, OUT_OF_PAGES, BAD_ARGUMENT, INTERNAL), which engine.ts maps to a typed class.
#include <napi.h>

#include "common.h"
#include "device.h"
#include "registry.h"

namespace {

Napi::Value DeviceInfoJs(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  kvf::DeviceInfo d = kvf::query_device();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cudaCompiled", d.cuda_compiled);
  o.Set("cudaUsable", d.cuda_usable);
  o.Set("deviceCount", d.device_count);
  o.Set("name", d.name);
  o.Set("reason", d.reason);
  o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
  o.Set("totalMemory", Napi::Number::New(env, (double)d.total_memory));
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfoJs, "deviceInfo"));
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  for (auto& reg : kvf::napi::registrars()) reg(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(kvfleet, Init)
