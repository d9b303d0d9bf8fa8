// KV cache sharded by heads (tensor parallelism): rank r of `world` holds kv heads
// [r * Hkv / world, (r + 1) * Hkv / world) of every layer and serves the query heads that map onto
// them, the heads its column-parallel q / k / v projections produce. Attention needs no
// communication; the row-parallel output projection's all-reduce combines the heads.
#pragma once

#include <torch/types.h>

#include "caches/contiguous_kv_cache.h"
#include "sharding/tensor_parallel.h"

namespace tessera::models {

class HeadShardedKVCache {
 public:
  // `global` describes the unsharded cache; throws naming the value when its num_kv_heads is not
  // divisible by `world`.
  HeadShardedKVCache(const caches::ContiguousKVCacheConfig& global, int rank, int world);

  sharding::ShardRange kv_heads() const { return kv_heads_; }
  // This rank's query heads out of `num_q_heads` (a multiple of the global num_kv_heads).
  sharding::ShardRange q_heads(int64_t num_q_heads) const;

  // k, v: [batch, T, local kv heads, head_dim]; positions [batch, T] int64.
  void append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
              const torch::Tensor& positions);
  // q [batch, T, local q heads, head_dim] -> out [batch, T, local q heads, head_dim], over the
  // layer's window.
  torch::Tensor attention(int64_t layer, const torch::Tensor& q, const torch::Tensor& q_pos,
                          double scale) const;

  const caches::ContiguousKVCache& local() const { return local_; }

 private:
  static caches::ContiguousKVCacheConfig local_config(caches::ContiguousKVCacheConfig global,
                                                      int rank, int world);
  int64_t global_kv_heads_ = 0;
  int rank_ = 0;
  int world_ = 1;
  sharding::ShardRange kv_heads_;
  caches::ContiguousKVCache local_;
};

}  // namespace tessera::models
