// Named model parameters that may be split over the tensor-parallel group: each knows its full
// shape and the dimension it is split along, so a model can be initialised identically for any
// TP size (values drawn for the full tensor, then sliced), saved as full tensors (gathered) and
// loaded from full tensors (sliced).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/training/data_parallel.h"
#include "sharding/communicator.h"

namespace tessera::training {

struct ShardedParam {
  std::string name;
  std::vector<int64_t> full_shape;
  int shard_dim = -1;   // -1 = replicated on every TP rank
  bool decay = false;   // weight decay applies
  torch::Tensor local;  // this rank's slice, a leaf that requires grad
};

// Uniform in [-bound, bound): splitmix64 keyed by (seed, name), the same on every platform.
torch::Tensor deterministic_uniform(uint64_t seed, const std::string& name,
                                    const std::vector<int64_t>& shape, double bound);

class ShardedParams {
 public:
  explicit ShardedParams(sharding::Communicator* tp) : tp_(tp) {}
  // Registers a parameter initialised from `full` (the full tensor); returns this rank's slice.
  torch::Tensor add(const std::string& name, const torch::Tensor& full, int shard_dim, bool decay);
  const std::vector<ShardedParam>& all() const { return params_; }
  std::vector<ParamInfo> infos() const;
  // Full tensors in registration order; collective over the TP group (all-gather per split one).
  std::vector<std::pair<std::string, torch::Tensor>> gather_full() const;
  // Copies this rank's slices out of full tensors; throws naming a missing or mis-shaped one.
  void load_full(const std::map<std::string, torch::Tensor>& full);
  int tp_rank() const { return tp_ == nullptr ? 0 : tp_->rank(); }
  int tp_size() const { return tp_ == nullptr ? 1 : tp_->size(); }

 private:
  torch::Tensor slice(const torch::Tensor& full, int shard_dim, const std::string& name) const;
  sharding::Communicator* tp_;
  std::vector<ShardedParam> params_;
};

}  // namespace tessera::training
