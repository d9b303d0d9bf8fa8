// Reading and writing safetensors files (Hugging Face's format: an 8-byte little-endian header
// length, a JSON header naming each tensor's dtype, shape and byte range, then the raw data).
// The reader maps the file and validates every entry before anything is read; torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace tessera::models {

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapped file
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws naming the file and the offending entry: a truncated file,
  // a header that is not JSON, a byte range outside the data, a size that does not match the
  // shape, overlapping tensors, an unknown dtype.
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // Throws "tensor 'x' not found in <path>" when absent.
  const TensorEntry& get(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drops this process's mapping of the file pages around bytes [p, p + n) of the mapping (they
  // stay in the page cache; a later read maps them again), so consumed tensor data stops counting
  // in the resident set. Rounded outwards to 2 MiB, never past the mapping.
  void release(const void* p, size_t n) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // little-endian, row-major
};

// Writes atomically: to a temporary file in the same folder, then rename(2), so that concurrent
// writers (several ranks, several jobs) never expose a half-written file.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tessera::models
