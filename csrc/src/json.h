// A small, strict JSON parser (RFC 8259) for config.json, model.safetensors.index.json and safetensors headers.
// Strict means: no comments, no trailing commas, no leading zeros, no control characters inside strings,
// no lone UTF-16 surrogates, no duplicate object keys, nothing but whitespace after the value.
// Errors carry the byte offset where the problem was found.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kvf {
namespace json {

enum class Type { Null, Bool, Int, Double, String, Array, Object };

const char* type_name(Type t);  // "null", "boolean", "integer", "number", "string", "array", "object"

// One JSON value. Numbers without fraction or exponent that fit int64 are Int; every other number is Double.
// Objects keep their keys in file order (keys are unique: the parser rejects duplicates).
struct Value {
  Type type = Type::Null;
  bool b = false;
  int64_t i = 0;
  double d = 0.0;
  std::string s;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;

  bool is_null() const { return type == Type::Null; }
  bool is_number() const { return type == Type::Int || type == Type::Double; }
  double number() const { return type == Type::Int ? (double)i : d; }  // requires is_number()
  // Member lookup; nullptr when this is not an object or has no such key.
  const Value* get(const std::string& key) const;
};

struct ParseError : std::runtime_error {
  size_t offset;       // byte offset into the text
  std::string reason;  // without the offset
  ParseError(size_t off, const std::string& why)
      : std::runtime_error("invalid JSON at byte " + std::to_string(off) + ": " + why), offset(off), reason(why) {}
};

// Nesting deeper than this is an error (bounds the recursion, so hostile input cannot overflow the stack).
constexpr int kMaxDepth = 256;

// Parses a complete JSON text. Throws ParseError.
Value parse(const std::string& text);
Value parse(const char* data, size_t size);

}  // namespace json
}  // namespace kvf
