// kvfleet engine: shared definitions.
//
// Letters used everywhere (ENGINE.md):
//   L layers, H query heads, Hk KV heads, G = H / Hk, d head dim, D model dim, F MLP hidden dim, V vocab,
//   P page size in tokens, n prompt length, w observation window, B budget per head, T tokens in a step's batch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace kvf {

// Expected failures are values (see PagePool::alloc); these are the errors that cross the Node boundary,
// each mapped to one EngineError subclass in worker/engine.ts.
enum class ErrorKind { BadModel, OutOfPages, BadArgument, Internal };

inline const char* error_kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::BadModel: return "BAD_MODEL";
    case ErrorKind::OutOfPages: return "OUT_OF_PAGES";
    case ErrorKind::BadArgument: return "BAD_ARGUMENT";
    case ErrorKind::Internal: return "INTERNAL";
  }
  return "INTERNAL";
}

struct Error : std::runtime_error {
  ErrorKind kind;
  Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

[[noreturn]] inline void fail(ErrorKind k, const std::string& msg) { throw Error(k, msg); }
[[noreturn]] inline void bad_model(const std::string& msg) { throw Error(ErrorKind::BadModel, msg); }
[[noreturn]] inline void bad_argument(const std::string& msg) { throw Error(ErrorKind::BadArgument, msg); }

// A broken invariant is a bug, never an expected condition: it says so.
#define KVF_CHECK(cond, msg)                                                                          \
  do {                                                                                               \
    if (!(cond))                                                                                     \
      throw ::kvf::Error(::kvf::ErrorKind::Internal, std::string("internal error (this is a bug): ") + \
                                                         (msg) + " [" #cond "] at " __FILE__ ":" +    \
                                                         std::to_string(__LINE__));                  \
  } while (0)

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F32 ? "F32" : t == DType::F16 ? "F16" : "BF16"; }

// IEEE half <-> float, round to nearest even; exact for every half value.
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { mant <<= 1; e++; } while ((mant & 0x400) == 0);
      mant &= 0x3ff;
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | mant << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));  // inf/nan
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);                                    // overflow
  if (absx < 0x38800000u) {  // subnormal or zero in half
    if (absx < 0x33000000u) return (uint16_t)sign;
    uint32_t e = absx >> 23;                       // biased exponent, 102..112
    uint32_t m = (absx & 0x7fffff) | 0x800000;     // value = m * 2^(e-150); half's subnormal unit is 2^-24
    uint32_t s = 126 - e;                          // bits dropped from m, 14..24
    uint32_t q = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t e = (absx >> 23) - 127 + 15;
  uint32_t m = absx & 0x7fffff;
  uint32_t q = (e << 10) | (m >> 13);
  uint32_t rem = m & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
  return (uint16_t)(sign | q);
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);  // quiet nan
  uint32_t lsb = (x >> 16) & 1;
  x += 0x7fff + lsb;
  return (uint16_t)(x >> 16);
}

inline float load_as_f32(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
  return 0.f;
}

}  // namespace kvf
