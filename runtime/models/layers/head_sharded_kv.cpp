#include "runtime/models/layers/head_sharded_kv.h"

#include "common/error.h"
#include "kernels/ops/attention_ops.h"

namespace tessera::models {

caches::ContiguousKVCacheConfig HeadShardedKVCache::local_config(
    caches::ContiguousKVCacheConfig global, int rank, int world) {
  global.num_kv_heads = sharding::even_shard(global.num_kv_heads, rank, world, "num_kv_heads").size;
  return global;
}

HeadShardedKVCache::HeadShardedKVCache(const caches::ContiguousKVCacheConfig& global, int rank,
                                       int world)
    : global_kv_heads_(global.num_kv_heads),
      rank_(rank),
      world_(world),
      kv_heads_(sharding::even_shard(global.num_kv_heads, rank, world, "num_kv_heads")),
      local_(local_config(global, rank, world)) {}

sharding::ShardRange HeadShardedKVCache::q_heads(int64_t num_q_heads) const {
  TESSERA_CHECK(num_q_heads > 0 && num_q_heads % global_kv_heads_ == 0, "num_q_heads=", num_q_heads,
                " must be a positive multiple of num_kv_heads=", global_kv_heads_);
  // Query head h reads kv head h / group, so the kv shard's query heads are contiguous too.
  return sharding::even_shard(num_q_heads, rank_, world_, "num_q_heads");
}

void HeadShardedKVCache::append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& positions) {
  local_.append(layer, k, v, positions);
}

torch::Tensor HeadShardedKVCache::attention(int64_t layer, const torch::Tensor& q,
                                            const torch::Tensor& q_pos, double scale) const {
  TESSERA_CHECK(q.dim() == 4 && q.size(2) % kv_heads_.size == 0, "q shape ", q.sizes(),
                " must be [batch, T, local q heads (a multiple of ", kv_heads_.size,
                " local kv heads), head_dim]");
  const auto l = local_.layer(layer);
  const int64_t window = local_.config().windows.at(static_cast<size_t>(layer));
  return std::get<0>(kernels::attention(q, l.k, l.v, q_pos, l.positions, scale, window));
}

}  // namespace tessera::models
