// Megatron's two tensor-parallel communication Functions as libtorch autograd Functions, so the
// column- and row-parallel layers of sharding/tensor_parallel.h train:
//   copy_to_tp:     forward identity, backward all-reduce (the input of column-parallel layers:
//                   every TP rank's partial input gradient summed)
//   reduce_from_tp: forward all-reduce, backward identity (the output of row-parallel layers)
// `tp` null or of size 1: both are the identity.
#pragma once

#include <torch/types.h>

#include "sharding/communicator.h"

namespace tessera::training {

torch::Tensor copy_to_tp(const torch::Tensor& x, sharding::Communicator* tp);
torch::Tensor reduce_from_tp(const torch::Tensor& x, sharding::Communicator* tp);

// y = copy_to_tp(x) @ W_shard^T + b_shard: this rank's output features.
torch::Tensor column_parallel(const torch::Tensor& x, const torch::Tensor& weight_shard,
                              const torch::Tensor& bias_shard, sharding::Communicator* tp);
// y = reduce_from_tp(x_shard @ W_shard^T) + b (b replicated, added once).
torch::Tensor row_parallel(const torch::Tensor& x_shard, const torch::Tensor& weight_shard,
                           const torch::Tensor& bias, sharding::Communicator* tp);

}  // namespace tessera::training
