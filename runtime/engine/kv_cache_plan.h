// The one KV path's set-up: the model config becomes one cache spec per layer (full attention or
// sliding window, with this rank's KV heads), the memory plan sizes the block pool from a byte
// budget (--kv-cache-memory, or a fraction of free device memory on a GPU), every rank of the
// tensor-parallel group takes the smallest pool any of them can afford, and the scheduler's
// KV cache manager gets the groups it counts in. With decode context parallel a block of the
// manager spans the dcp ranks sharing a KV head (block_size tokens each), so its groups count
// block_size * dcp tokens per block.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "caches/memory_plan.h"
#include "runtime/models/decoder_model.h"

namespace tessera::engine {

struct KVCacheOptions {
  int64_t block_size = 16;              // slots per block on one rank
  DType dtype = DType::kF32;            // pages: float32, bfloat16 or float16
  int64_t budget_bytes = 0;             // this rank's KV budget; 0 = default (see below)
  double device_memory_fraction = 0.9;  // on a GPU without budget_bytes: of its free memory
  caches::CacheLimits limits;           // max_model_len, max_num_batched_tokens, batch_size
};

struct KVCachePlan {
  caches::MemoryPlan storage;              // this rank's tensors (block_size slots per block)
  std::vector<caches::CacheGroup> groups;  // as the scheduler's manager counts tokens
  int dcp = 1;
  std::string table;  // the start-up table
};

// Specs of every layer for this rank's KV heads, pages of `block_size` slots of `dtype`.
std::vector<caches::SpecPtr> layer_specs(const models::ModelConfig& config,
                                         const models::ShardLayout& layout, int64_t block_size,
                                         DType dtype = DType::kF32);

// The CPU default budget when none is given: enough for every sequence of limits.batch_size at
// max_model_len, capped at kDefaultCpuBudget.
inline constexpr int64_t kDefaultCpuBudget = int64_t{1} << 30;

// Plans this rank's cache and agrees on the pool size over `tp` (collective; null = one rank).
// `device` < 0 means CPU. Throws naming the budget when one max_model_len request does not fit.
KVCachePlan plan_kv_cache(const models::ModelConfig& config, const models::ShardLayout& layout,
                          const KVCacheOptions& options, int device, sharding::Communicator* tp);

}  // namespace tessera::engine
