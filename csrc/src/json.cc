#include "json.h"

#include <charconv>
#include <cstdio>
#include <set>

namespace kvf {
namespace json {

const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Int: return "integer";
    case Type::Double: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

const Value* Value::get(const std::string& key) const {
  if (type != Type::Object) return nullptr;
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

// Recursive descent over [p, end). Every read checks `p < end` first, so no input reads out of bounds.
struct Parser {
  const char* begin;
  const char* p;
  const char* end;

  [[noreturn]] void fail(const char* at, const std::string& why) { throw ParseError((size_t)(at - begin), why); }

  void skip_ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  }

  static std::string describe(char c) {
    unsigned char u = (unsigned char)c;
    if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
    char buf[8];
    std::snprintf(buf, sizeof buf, "0x%02x", u);
    return buf;
  }

  Value parse_value(int depth) {
    skip_ws();
    if (p >= end) fail(p, "unexpected end of input, expected a value");
    switch (*p) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': {
        Value v;
        v.type = Type::String;
        v.s = parse_string();
        return v;
      }
      case 't': expect_word("true"); return boolean(true);
      case 'f': expect_word("false"); return boolean(false);
      case 'n': expect_word("null"); return Value{};
      default:
        if (*p == '-' || (*p >= '0' && *p <= '9')) return parse_number();
        fail(p, "unexpected character " + describe(*p) + ", expected a value");
    }
  }

  static Value boolean(bool b) {
    Value v;
    v.type = Type::Bool;
    v.b = b;
    return v;
  }

  void expect_word(const char* w) {
    const char* start = p;
    for (const char* q = w; *q; q++, p++)
      if (p >= end || *p != *q) fail(start, std::string("invalid literal, expected '") + w + "'");
  }

  Value parse_object(int depth) {
    if (depth >= kMaxDepth) fail(p, "nesting deeper than " + std::to_string(kMaxDepth));
    p++;  // '{'
    Value v;
    v.type = Type::Object;
    std::set<std::string> seen;
    skip_ws();
    if (p < end && *p == '}') {
      p++;
      return v;
    }
    for (;;) {
      skip_ws();
      if (p >= end) fail(p, "unexpected end of input inside an object");
      if (*p != '"') fail(p, "expected a string key, got " + describe(*p));
      const char* key_at = p;
      std::string key = parse_string();
      if (!seen.insert(key).second) fail(key_at, "duplicate key \"" + key + "\"");
      skip_ws();
      if (p >= end) fail(p, "unexpected end of input, expected ':'");
      if (*p != ':') fail(p, "expected ':' after key, got " + describe(*p));
      p++;
      Value member = parse_value(depth + 1);
      v.obj.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (p >= end) fail(p, "unexpected end of input inside an object");
      if (*p == ',') {
        p++;
        continue;
      }
      if (*p == '}') {
        p++;
        return v;
      }
      fail(p, "expected ',' or '}' in object, got " + describe(*p));
    }
  }

  Value parse_array(int depth) {
    if (depth >= kMaxDepth) fail(p, "nesting deeper than " + std::to_string(kMaxDepth));
    p++;  // '['
    Value v;
    v.type = Type::Array;
    skip_ws();
    if (p < end && *p == ']') {
      p++;
      return v;
    }
    for (;;) {
      v.arr.push_back(parse_value(depth + 1));
      skip_ws();
      if (p >= end) fail(p, "unexpected end of input inside an array");
      if (*p == ',') {
        p++;
        continue;
      }
      if (*p == ']') {
        p++;
        return v;
      }
      fail(p, "expected ',' or ']' in array, got " + describe(*p));
    }
  }

  unsigned hex4(const char* at) {
    if (end - p < 4) fail(at, "truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; k++, p++) {
      char c = *p;
      unsigned h;
      if (c >= '0' && c <= '9') h = c - '0';
      else if (c >= 'a' && c <= 'f') h = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') h = c - 'A' + 10;
      else fail(p, "invalid hex digit " + describe(c) + " in \\u escape");
      u = u << 4 | h;
    }
    return u;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += (char)cp;
    } else if (cp < 0x800) {
      out += (char)(0xc0 | cp >> 6);
      out += (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += (char)(0xe0 | cp >> 12);
      out += (char)(0x80 | (cp >> 6 & 0x3f));
      out += (char)(0x80 | (cp & 0x3f));
    } else {
      out += (char)(0xf0 | cp >> 18);
      out += (char)(0x80 | (cp >> 12 & 0x3f));
      out += (char)(0x80 | (cp >> 6 & 0x3f));
      out += (char)(0x80 | (cp & 0x3f));
    }
  }

  // Raw bytes >= 0x80 are passed through unchanged (the text is taken to be UTF-8; keys and names are compared
  // byte-wise, so no decoding is needed).
  std::string parse_string() {
    const char* start = p;
    p++;  // opening quote
    std::string out;
    for (;;) {
      if (p >= end) fail(start, "unterminated string");
      char c = *p;
      if (c == '"') {
        p++;
        return out;
      }
      if ((unsigned char)c < 0x20) fail(p, "control character " + describe(c) + " in string (must be escaped)");
      if (c != '\\') {
        out += c;
        p++;
        continue;
      }
      const char* esc = p;
      p++;
      if (p >= end) fail(start, "unterminated string");
      char e = *p++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t u = hex4(esc);
          if (u >= 0xdc00 && u <= 0xdfff) fail(esc, "lone low surrogate in \\u escape");
          if (u >= 0xd800 && u <= 0xdbff) {
            // A high surrogate must be followed at once by an escaped low surrogate.
            if (end - p < 2 || p[0] != '\\' || p[1] != 'u') fail(esc, "high surrogate not followed by a low surrogate");
            const char* esc2 = p;
            p += 2;
            uint32_t lo = hex4(esc2);
            if (lo < 0xdc00 || lo > 0xdfff) fail(esc2, "high surrogate not followed by a low surrogate");
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
          }
          put_utf8(out, u);
          break;
        }
        default: fail(esc, "invalid escape \\" + describe(e) + " in string");
      }
    }
  }

  Value parse_number() {
    const char* start = p;
    bool integral = true;
    if (*p == '-') p++;
    if (p >= end) fail(start, "invalid number: '-' without digits");
    if (*p == '0') {
      p++;
      if (p < end && *p >= '0' && *p <= '9') fail(start, "invalid number: leading zero");
    } else if (*p >= '1' && *p <= '9') {
      while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
      fail(start, "invalid number: expected a digit");
    }
    if (p < end && *p == '.') {
      integral = false;
      p++;
      if (p >= end || *p < '0' || *p > '9') fail(start, "invalid number: expected a digit after '.'");
      while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      integral = false;
      p++;
      if (p < end && (*p == '+' || *p == '-')) p++;
      if (p >= end || *p < '0' || *p > '9') fail(start, "invalid number: expected a digit in the exponent");
      while (p < end && *p >= '0' && *p <= '9') p++;
    }
    Value v;
    if (integral) {
      int64_t x = 0;
      auto r = std::from_chars(start, p, x);
      if (r.ec == std::errc() && r.ptr == p) {
        v.type = Type::Int;
        v.i = x;
        return v;
      }
      // Out of int64 range: falls through to a double, as JavaScript and Python's float() would read it.
    }
    double d = 0;
    auto r = std::from_chars(start, p, d);
    if (r.ec == std::errc::result_out_of_range) fail(start, "number out of range");
    if (r.ec != std::errc() || r.ptr != p) fail(start, "invalid number");
    v.type = Type::Double;
    v.d = d;
    return v;
  }
};

}  // namespace

Value parse(const char* data, size_t size) {
  Parser ps{data, data, data + size};
  Value v = ps.parse_value(0);
  ps.skip_ws();
  if (ps.p != ps.end) ps.fail(ps.p, "unexpected " + Parser::describe(*ps.p) + " after the JSON value");
  return v;
}

Value parse(const std::string& text) { return parse(text.data(), text.size()); }

}  // namespace json
}  // namespace kvf
