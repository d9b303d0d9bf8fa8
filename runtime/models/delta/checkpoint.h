// A safetensors checkpoint as the delta tools read it: one .safetensors file, or a folder with
// model.safetensors or a sharded model.safetensors.index.json (config.json not needed). Tensors
// are found by name across shards; each file's header bytes are kept verbatim so a rebuilt
// checkpoint can match the original byte for byte. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/models/safetensors.h"

namespace tessera::models::delta {

// The bytes of one file mapping: page release never reaches outside it.
struct MappedSpan {
  const uint8_t* begin = nullptr;
  const uint8_t* end = nullptr;
};

class Checkpoint {
 public:
  // `what` names the argument in errors ("--base", "--tuned").
  static Checkpoint open(const std::string& path, const std::string& what);

  struct File {
    std::string name;         // file name within the checkpoint folder ("model.safetensors")
    std::string path;         // full path
    std::string header;       // the JSON header exactly as stored (padding included)
    uint64_t data_start = 0;  // 8 + header length
    uint64_t size = 0;        // bytes of the whole file
    MappedSpan span;          // the file's mapping (empty for a file without tensors)
    std::unique_ptr<SafetensorsFile> st;
  };

  const std::string& path() const { return path_; }
  bool sharded() const { return index_json_.has_value(); }
  const std::optional<std::string>& index_json() const { return index_json_; }  // verbatim
  const std::vector<File>& files() const { return files_; }
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  // Throws "<what> checkpoint '<path>' has no tensor 'x'".
  const TensorEntry& get(const std::string& name) const;
  size_t file_of(const std::string& name) const;  // index into files()
  const MappedSpan& span_of(const std::string& name) const { return files_[file_of(name)].span; }
  // Every tensor, file by file, each file's in data-offset order (the order they sit on disk).
  std::vector<std::string> names_in_file_order() const;
  uint64_t data_bytes() const;  // sum of all tensors' bytes
  uint64_t largest_tensor_bytes() const;

 private:
  std::string path_;
  std::string what_;
  std::optional<std::string> index_json_;
  std::vector<File> files_;
  std::map<std::string, size_t> where_;
};

// Drops the pages of [p, p + n) (inside the mapping `span`) from this process's memory: streamed
// readers call it after each chunk so resident memory stays constant however large the file.
void release_mapped(const MappedSpan& span, const void* p, size_t n);

}  // namespace tessera::models::delta
