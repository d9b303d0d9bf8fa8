// Loads checkpoint tensors into torch, optionally only one rank's slice along a dimension, so a
// tensor-parallel rank never materialises weights it does not own. Reads the weight files of a
// ModelFolder (model.safetensors, or the shards of model.safetensors.index.json).
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "runtime/models/model_folder.h"
#include "runtime/models/safetensors.h"
#include "sharding/tensor_parallel.h"

namespace tessera::models {

class WeightLoader {
 public:
  explicit WeightLoader(const ModelFolder& folder);

  bool has(const std::string& name) const;
  // The whole tensor, converted to `dtype`, contiguous. Throws naming the tensor and the expected
  // shape when `expected_shape` is given and differs.
  torch::Tensor load(const std::string& name, const std::vector<int64_t>& expected_shape,
                     torch::ScalarType dtype = torch::kFloat) const;
  // Rows [range.begin, range.begin + range.size) along `dim` only.
  torch::Tensor load_slice(const std::string& name, const std::vector<int64_t>& expected_shape,
                           int64_t dim, sharding::ShardRange range,
                           torch::ScalarType dtype = torch::kFloat) const;
  // Bytes copied out of the files so far (to show that ranks read only their slices).
  int64_t bytes_loaded() const { return bytes_loaded_; }
  // Tensors of the checkpoint never loaded, in name order, leaving out names that end with one
  // of `ignorable` (buffers such as rotary_emb.inv_freq that transformers may save).
  std::vector<std::string> unused(const std::vector<std::string>& ignorable = {}) const;

 private:
  const TensorEntry& entry(const std::string& name) const;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
  mutable int64_t bytes_loaded_ = 0;
  mutable std::set<std::string> used_;
};

}  // namespace tessera::models
