// A minimal test framework for the C++ tests (the GPU machine has CMake and nvcc, nothing else is assumed).
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace kvt {
struct Case { const char* name; std::function<void()> fn; };
inline std::vector<Case>& registry() { static std::vector<Case> r; return r; }
struct Reg { Reg(const char* n, std::function<void()> f) { registry().push_back({n, std::move(f)}); } };
struct Failure { std::string msg; };
}  // namespace kvt

#define KVT_CAT2(a, b) a##b
#define KVT_CAT(a, b) KVT_CAT2(a, b)
#define TEST_CASE(name) \
  static void KVT_CAT(kvt_fn_, __LINE__)(); \
  static kvt::Reg KVT_CAT(kvt_reg_, __LINE__)(name, KVT_CAT(kvt_fn_, __LINE__)); \
  static void KVT_CAT(kvt_fn_, __LINE__)()
#define EXPECT(cond) \
  do { if (!(cond)) throw kvt::Failure{std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": expected " #cond}; } while (0)
#define EXPECT_EQ(a, b) \
  do { auto _a = (a); auto _b = (b); if (!(_a == _b)) throw kvt::Failure{std::string(__FILE__) + ":" + \
    std::to_string(__LINE__) + ": expected " #a " == " #b " (" + std::to_string(_a) + " vs " + std::to_string(_b) + ")"}; } while (0)
#define EXPECT_NEAR(a, b, tol) \
  do { double _a = (a), _b = (b); if (!(std::fabs(_a - _b) <= (tol))) throw kvt::Failure{std::string(__FILE__) + ":" + \
    std::to_string(__LINE__) + ": expected " #a " ~= " #b " (" + std::to_string(_a) + " vs " + std::to_string(_b) + ")"}; } while (0)
#define EXPECT_THROWS(stmt) \
  do { bool _t = false; try { stmt; } catch (...) { _t = true; } \
    if (!_t) throw kvt::Failure{std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": expected an exception from " #stmt}; } while (0)
