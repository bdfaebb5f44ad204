// Read-only access to one .safetensors file (https://huggingface.co/docs/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
// then the data section; offsets are relative to the start of the data section.
//
// The file is memory-mapped and every header entry is validated before any tensor byte is touched: header
// length within the file, header is a JSON object, offsets inside the data section, no two tensors overlap,
// and end - begin == product(shape) * element size for every dtype whose element size is known.
// Tensors of dtypes the engine does not compute with (I8, F64, ...) are listed (supported = false) so the caller
// can name them in its error; only a dtype string the safetensors format does not define is rejected here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common.h"

namespace kvf {

struct TensorInfo {
  std::string name;
  std::string dtype_name;       // as written in the header: "F32", "BF16", "I8", ...
  bool supported = false;       // dtype is F32, F16 or BF16
  DType dtype = DType::F32;     // meaningful only when supported
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping; valid while the SafetensorsFile lives
  size_t bytes = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws Error(BadModel) naming the path and the problem.
  static std::shared_ptr<const SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  size_t file_size() const { return size_; }
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// "[64, 32]"
std::string shape_str(const std::vector<int64_t>& shape);

// Largest header accepted (the reference implementation's limit): a larger length is taken as corruption.
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

}  // namespace kvf
