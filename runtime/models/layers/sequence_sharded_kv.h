// KV cache sharded by sequence: the tokens of one long sequence are spread over the ranks of a
// sequence-parallel group, so a context that does not fit one device fits several. Attention is
// exact: each rank attends over the tokens it holds (partial output + log-sum-exp), the partial
// states travel in one all-gather whose size depends on the queries only (never on the context
// length), and the LSE merge (kernels/ops/merge_ops.h) combines them.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "caches/contiguous_kv_cache.h"
#include "sharding/communicator.h"

namespace tessera::models {

// Which rank holds which token: blocks of `block_tokens` consecutive positions are dealt to the
// ranks round-robin, so every rank holds ~1/world of any context and one decode step appends to
// one rank. A token's local index numbers the tokens its owner holds, in position order, without
// gaps: with paged storage, local_index / block_tokens is the owner's logical block.
struct SequencePlacement {
  int64_t block_tokens = 16;
  int world = 1;

  int owner(int64_t pos) const { return static_cast<int>((pos / block_tokens) % world); }
  int64_t local_index(int64_t pos) const {
    return pos / (block_tokens * world) * block_tokens + pos % block_tokens;
  }
  // An upper bound on the tokens one rank holds among any `span` consecutive positions.
  int64_t max_local_tokens(int64_t span) const {
    return ((span + block_tokens * world - 1) / (block_tokens * world) + 1) * block_tokens;
  }
};

struct SequenceShardedKVConfig {
  // The whole cache as one rank would hold it: layers, batch, max_len, kv heads, head_dim,
  // max_chunk_tokens and per-layer windows. float32 only (the attention kernels' dtype).
  caches::ContiguousKVCacheConfig cache;
  int64_t block_tokens = 16;
};

class SequenceShardedKVCache {
 public:
  // `comm` spans the sequence-parallel group (null or size 1: every token on this rank). It must
  // outlive the cache.
  SequenceShardedKVCache(SequenceShardedKVConfig config, sharding::Communicator* comm);

  const SequencePlacement& placement() const { return placement_; }
  int rank() const { return rank_; }

  // k, v: [batch, T, kv_heads, head_dim]; positions [batch, T] int64 (< max_len; -1 = padding).
  // Every rank may pass the same new tokens: each keeps those it owns. Not collective.
  void append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
              const torch::Tensor& positions);

  // q [batch, T, q_heads, head_dim] float32 and q_pos [batch, T] int64, the same on every rank
  // of the group. Returns out [batch, T, q_heads, head_dim]: causal (by position) attention over
  // every token any rank holds for `layer`, within the layer's window. Collective over `comm`:
  // one all-gather of [batch, T, q_heads, head_dim + 1] float32 per call.
  torch::Tensor attention(int64_t layer, const torch::Tensor& q, const torch::Tensor& q_pos,
                          double scale) const;

  // This rank's storage of `layer`: k / v [batch, slots, kv_heads, head_dim], positions
  // [batch, slots] (-1 = empty). Slot = local_index % slots (a ring for sliding-window layers).
  caches::ContiguousKVCache::LayerView local_layer(int64_t layer) const;
  int64_t local_bytes() const;
  void reset();

 private:
  SequenceShardedKVConfig config_;
  SequencePlacement placement_;
  sharding::Communicator* comm_ = nullptr;
  int rank_ = 0;
  std::vector<caches::ContiguousKVCache::LayerView> layers_;
  std::vector<int64_t> used_slots_;  // per layer: slots [0, used) were ever written
};

// Memory planning for caches split over ranks: each rank passes the blocks it can afford, every
// rank gets the minimum (the cache is only as large as its smallest shard). Collective over comm.
int64_t min_blocks_over_ranks(sharding::Communicator* comm, int64_t local_blocks);

}  // namespace tessera::models
