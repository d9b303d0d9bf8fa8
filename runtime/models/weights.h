// Loads checkpoint tensors into torch, optionally only one rank's slice along a dimension, so a
// tensor-parallel rank never materialises weights it does not own. Reads the weight files of a
// ModelFolder (model.safetensors, or the shards of model.safetensors.index.json).
// Streamed under a budget (seed 002): load_into copies a tensor from the memory map straight into
// its final place (a slice of a fused, transposed or device tensor, converted on the way) in
// chunks of rows, and releases each chunk's mapped pages once copied, so the loader's own
// resident memory stays within WeightLoadOptions::memory_budget whatever the checkpoint's size.
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

struct WeightLoadOptions {
  // Bytes of checkpoint data resident at once while loading (mapped pages of the rows being
  // copied plus any conversion staging). 0 = unbounded: whole tensors at a time, and the mapped
  // pages stay resident until the loader closes.
  int64_t memory_budget = 0;
  // A progress bar on stderr ("loading weights [####....] 45% 180/400 MiB"); callers pass true on
  // one rank when stderr is a terminal.
  bool progress = false;
};

class WeightLoader {
 public:
  explicit WeightLoader(const ModelFolder& folder, WeightLoadOptions options = {});
  ~WeightLoader();

  bool has(const std::string& name) const;
  // The whole tensor, converted to `dtype`, contiguous. Throws naming the tensor and the expected
  // shape when `expected_shape` is given and differs.
  torch::Tensor load(const std::string& name, const std::vector<int64_t>& expected_shape,
                     torch::ScalarType dtype = torch::kFloat) const;
  // Rows [range.begin, range.begin + range.size) along `dim` only.
  torch::Tensor load_slice(const std::string& name, const std::vector<int64_t>& expected_shape,
                           int64_t dim, sharding::ShardRange range,
                           torch::ScalarType dtype = torch::kFloat) const;
  // Copies tensor `name` (rows [range.begin, range.begin + range.size) along `dim`, or all of it)
  // into `dst`, whose shape must be that slice's: `dst` may be a strided view (a part of a fused
  // weight, a transposed layout) on any device and of any floating dtype. Under a budget the copy
  // runs in chunks of the tensor's leading rows and each chunk's pages are released after it.
  void load_into(const std::string& name, const std::vector<int64_t>& expected_shape, int64_t dim,
                 sharding::ShardRange range, const torch::Tensor& dst) const;
  void load_into(const std::string& name, const std::vector<int64_t>& expected_shape,
                 const torch::Tensor& dst) const;
  // Ends the progress bar's line (also done by the destructor).
  void finish_progress() const;
  // Bytes copied out of the files so far (to show that ranks read only their slices).
  int64_t bytes_loaded() const { return bytes_loaded_; }
  // Tensors of the checkpoint never loaded, in name order, leaving out names that end with one
  // of `ignorable` (buffers such as rotary_emb.inv_freq that transformers may save).
  std::vector<std::string> unused(const std::vector<std::string>& ignorable = {}) const;

 private:
  const TensorEntry& entry(const std::string& name) const;
  void advance_progress(int64_t bytes) const;
  WeightLoadOptions options_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  int64_t total_bytes_ = 0;
  mutable int64_t progress_bytes_ = 0;
  mutable int progress_shown_ = -1;  // last percentage drawn
  std::map<std::string, const SafetensorsFile*> where_;
  mutable int64_t bytes_loaded_ = 0;
  mutable std::set<std::string> used_;
};

}  // namespace tessera::models
