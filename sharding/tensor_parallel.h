// Tensor parallelism for linear layers (Megatron-style). A column-parallel layer holds a slice of
// the output features and needs no communication; a row-parallel layer holds a slice of the input
// features and all-reduces its partial output. Weights are [out_features, in_features].
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "sharding/communicator.h"

namespace tessera::sharding {

struct ShardRange {
  int64_t begin = 0;
  int64_t size = 0;
};

// The slice of `total` items (heads, features) that `rank` of `world` owns. Throws naming `what`
// when `total` does not divide evenly: "num_key_value_heads=4 is not divisible by 3 ranks".
ShardRange even_shard(int64_t total, int rank, int world, const std::string& what);

// y = x @ W_shard^T (+ b_shard): a slice of the output features.
torch::Tensor column_parallel_linear(const torch::Tensor& x, const torch::Tensor& weight_shard,
                                     const torch::Tensor& bias_shard = {});

// y = all_reduce(x_shard @ W_shard^T) (+ b once): the full output on every rank. `comm` may be
// null for a single rank.
torch::Tensor row_parallel_linear(const torch::Tensor& x_shard, const torch::Tensor& weight_shard,
                                  Communicator* comm, const torch::Tensor& bias = {});

}  // namespace tessera::sharding
