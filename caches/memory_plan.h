// Memory planning for the paged KV cache: from a byte budget (or free device memory times a
// fraction) and the model's per-layer specs, how many blocks the shared pool gets, how many state
// slots, which layers share storage tensors, and a table to print at start-up. When not even one
// max-length request fits, the error gives the budget, the bytes per block and the largest
// max_model_len that would fit. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "caches/kv_cache_manager.h"
#include "caches/kv_cache_spec.h"

namespace tessera::caches {

struct MemoryPlan {
  std::vector<SpecPtr> layer_specs;  // as given, one per layer
  std::vector<CacheGroup> groups;    // as KVCacheManager takes them (split, see layer_slot)
  CacheLimits limits;
  int64_t budget_bytes = 0;
  // Attention storage: block id b has one page in every tensor slot. When all attention groups
  // have the same page layout, groups are split into chunks of equal layer count (each chunk a
  // group with its own block table) and chunk layer j of every group shares slot j: block ids of
  // different groups never collide, and no page of a block goes unused. Otherwise every layer
  // has its own slot. layer_slot[l] = -1 for layers without paged storage.
  std::vector<int64_t> layer_slot;
  int64_t num_slots = 0;
  int64_t bytes_per_block = 0;    // one block id over all slots
  int32_t num_blocks = 0;         // including the null block
  int64_t pages_per_request = 0;  // blocks one max_model_len request may hold, all groups
  int32_t num_state_slots = 0;    // including the null slot
  int64_t state_bytes = 0;        // all state layers, all slots
  int64_t kv_bytes() const { return bytes_per_block * num_blocks; }
  int64_t total_bytes() const { return kv_bytes() + state_bytes; }
  // Requests of max_model_len that fit together (pool blocks / pages_per_request).
  double max_concurrency() const;

  KVCacheManagerConfig manager_config(bool enable_prefix_caching) const;
  std::string table() const;  // human-readable plan, one group per row
};

// Throws (naming the budget, bytes per block and the largest fitting max_model_len) when one
// max_model_len request does not fit in budget_bytes.
MemoryPlan plan_memory(const std::vector<SpecPtr>& layer_specs, const CacheLimits& limits,
                       int64_t budget_bytes);

// fraction x the free memory of CUDA device `device` (throws without CUDA or without the device).
int64_t device_budget_bytes(int device, double fraction);

}  // namespace tessera::caches
