#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "json.h"

namespace kvf {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); k++) {
    if (k) s += ", ";
    s += std::to_string(shape[k]);
  }
  return s + "]";
}

namespace {

// Element sizes of the byte-sized dtypes the safetensors format defines. Sub-byte types (F4, F6_*) have no
// byte size per element; they, like any unknown string, are rejected.
int element_size(const std::string& t) {
  static const std::pair<const char*, int> table[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},  {"BF16", 2}, {"I32", 4}, {"U32", 4},     {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8},
      {"C64", 8}};
  for (const auto& e : table)
    if (t == e.first) return e.second;
  return 0;
}

// Parses one header entry; `region` is the size of the data section.
TensorInfo parse_entry(const std::string& path, const std::string& name, const json::Value& e, size_t region) {
  auto bad = [&](const std::string& why) { bad_model(path + ": tensor '" + name + "': " + why); };
  if (e.type != json::Type::Object) bad("header entry is a " + std::string(json::type_name(e.type)) + ", expected an object");
  TensorInfo t;
  t.name = name;

  const json::Value* dt = e.get("dtype");
  if (!dt || dt->type != json::Type::String) bad("header entry has no string \"dtype\"");
  t.dtype_name = dt->s;
  int esize = element_size(t.dtype_name);
  if (esize == 0) bad("unknown dtype '" + t.dtype_name + "'");
  if (t.dtype_name == "F32") t.supported = true, t.dtype = DType::F32;
  if (t.dtype_name == "F16") t.supported = true, t.dtype = DType::F16;
  if (t.dtype_name == "BF16") t.supported = true, t.dtype = DType::BF16;

  const json::Value* sh = e.get("shape");
  if (!sh || sh->type != json::Type::Array) bad("header entry has no array \"shape\"");
  size_t count = 1;
  bool overflow = false;
  for (const json::Value& dim : sh->arr) {
    if (dim.type != json::Type::Int || dim.i < 0) bad("shape has an entry that is not a non-negative integer");
    t.shape.push_back(dim.i);
    uint64_t u = (uint64_t)dim.i;
    if (u != 0 && count > SIZE_MAX / u) overflow = true;
    else count *= (size_t)u;
  }
  // A shape with a zero dimension has no elements, whatever the other dimensions say.
  if (std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end()) count = 0, overflow = false;
  if (overflow || count > SIZE_MAX / (size_t)esize) bad("shape " + shape_str(t.shape) + " is too large");

  const json::Value* off = e.get("data_offsets");
  if (!off || off->type != json::Type::Array || off->arr.size() != 2 || off->arr[0].type != json::Type::Int ||
      off->arr[1].type != json::Type::Int || off->arr[0].i < 0 || off->arr[1].i < 0)
    bad("\"data_offsets\" must be two non-negative integers [begin, end]");
  uint64_t b = (uint64_t)off->arr[0].i, en = (uint64_t)off->arr[1].i;
  std::string offs = "data_offsets [" + std::to_string(b) + ", " + std::to_string(en) + "]";
  if (b > en) bad(offs + " has begin after end");
  if (en > region)
    bad(offs + " extend past the end of the data section (" + std::to_string(region) +
        " bytes): the file is truncated");
  size_t want = count * (size_t)esize;
  if (en - b != want)
    bad(offs + " hold " + std::to_string(en - b) + " bytes, but shape " + shape_str(t.shape) + " of " +
        t.dtype_name + " needs " + std::to_string(want));
  t.bytes = (size_t)(en - b);
  t.data = nullptr;  // set by the caller once the base address is known
  return t;
}

}  // namespace

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO planted under the weights' name must fail the checks below, not hang.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) bad_model(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    bad_model(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    bad_model(path + ": not a regular file");
  }
  size_t size = (size_t)st.st_size;
  if (size < 8) {
    ::close(fd);
    bad_model(path + ": file is " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping keeps the file open
  if (map == MAP_FAILED) bad_model(path + ": cannot mmap: " + std::strerror(err));

  // From here the mapping is owned by `f`, so every error path below unmaps it.
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = map;
  f->size_ = size;
  const uint8_t* base = static_cast<const uint8_t*>(map);

  uint64_t n = 0;
  for (int k = 7; k >= 0; k--) n = n << 8 | base[k];  // little-endian
  if (n > size - 8)
    bad_model(path + ": header length " + std::to_string(n) + " is larger than the file (" + std::to_string(size) +
              " bytes): the file is truncated or not safetensors");
  if (n > kMaxSafetensorsHeader)
    bad_model(path + ": header length " + std::to_string(n) + " exceeds the " + std::to_string(kMaxSafetensorsHeader) +
              "-byte limit");

  json::Value header;
  try {
    header = json::parse(reinterpret_cast<const char*>(base + 8), (size_t)n);
  } catch (const json::ParseError& e) {
    bad_model(path + ": header is not valid JSON: " + e.reason + " at header byte " + std::to_string(e.offset));
  }
  if (header.type != json::Type::Object)
    bad_model(path + ": header is a JSON " + std::string(json::type_name(header.type)) + ", expected an object");

  const uint8_t* data = base + 8 + n;
  size_t region = size - 8 - (size_t)n;
  std::vector<std::pair<size_t, const TensorInfo*>> spans;  // (begin offset, tensor)
  for (const auto& kv : header.obj) {
    if (kv.first == "__metadata__") {
      if (kv.second.type != json::Type::Object && !kv.second.is_null())
        bad_model(path + ": \"__metadata__\" is a " + std::string(json::type_name(kv.second.type)) + ", expected an object");
      continue;
    }
    TensorInfo t = parse_entry(path, kv.first, kv.second, region);
    size_t begin = (size_t)kv.second.get("data_offsets")->arr[0].i;
    t.data = data + begin;
    auto it = f->tensors_.emplace(kv.first, std::move(t)).first;
    if (it->second.bytes) spans.emplace_back(begin, &it->second);
  }

  // Two tensors sharing bytes would mean a corrupt or hand-crafted header; reject rather than alias them.
  std::sort(spans.begin(), spans.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t k = 1; k < spans.size(); k++) {
    const TensorInfo* prev = spans[k - 1].second;
    const TensorInfo* cur = spans[k].second;
    if (spans[k - 1].first + prev->bytes > spans[k].first)
      bad_model(path + ": tensors '" + prev->name + "' and '" + cur->name + "' overlap in the data section");
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace kvf
