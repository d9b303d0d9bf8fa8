#include "runtime/models/layers/sequence_sharded_kv.h"

#include <algorithm>

#include "common/error.h"
#include "kernels/ops/attention_ops.h"
#include "kernels/ops/merge_ops.h"

namespace tessera::models {

namespace {

// Slots this rank keeps for `layer`: every token it may own for full-attention layers; for a
// sliding window of w, the owned tokens among the w - 1 + max_chunk_tokens positions that one
// append-then-attend step can see (local indices of owned tokens are gap-free, so a ring of that
// many slots never overwrites a key a query still sees).
int64_t local_slots(const SequenceShardedKVConfig& c, const SequencePlacement& p, int64_t layer) {
  const auto& cc = c.cache;
  // Whole rounds of world * block_tokens positions: the most any rank may own below max_len.
  const int64_t round = p.block_tokens * p.world;
  const int64_t all = (cc.max_len + round - 1) / round * p.block_tokens;
  const int64_t w = cc.windows.at(static_cast<size_t>(layer));
  if (w == 0) return all;
  return std::min(all, p.max_local_tokens(w - 1 + cc.max_chunk_tokens));
}

}  // namespace

SequenceShardedKVCache::SequenceShardedKVCache(SequenceShardedKVConfig config,
                                               sharding::Communicator* comm)
    : config_(std::move(config)), comm_(comm) {
  config_.cache.validate();
  TESSERA_CHECK(config_.block_tokens > 0, "block_tokens must be positive, got ",
                config_.block_tokens);
  TESSERA_CHECK(config_.cache.dtype == torch::kFloat,
                "sequence-sharded KV cache stores float32 (the attention kernels' dtype), got ",
                config_.cache.dtype);
  placement_.block_tokens = config_.block_tokens;
  placement_.world = comm_ != nullptr ? comm_->size() : 1;
  rank_ = comm_ != nullptr ? comm_->rank() : 0;
  const auto& c = config_.cache;
  auto opts = torch::TensorOptions().dtype(c.dtype).device(c.device);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const int64_t slots = local_slots(config_, placement_, l);
    layers_.push_back({torch::zeros({c.batch_size, slots, c.num_kv_heads, c.head_dim}, opts),
                       torch::zeros({c.batch_size, slots, c.num_kv_heads, c.head_dim}, opts),
                       torch::full({c.batch_size, slots}, -1, opts.dtype(torch::kLong))});
  }
  used_slots_.assign(layers_.size(), 0);
}

void SequenceShardedKVCache::append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
                                    const torch::Tensor& positions) {
  const auto& c = config_.cache;
  TESSERA_CHECK(layer >= 0 && layer < c.num_layers, "layer=", layer, " is outside [0, ",
                c.num_layers, ")");
  TESSERA_CHECK(k.dim() == 4 && k.size(0) == c.batch_size && k.size(2) == c.num_kv_heads &&
                    k.size(3) == c.head_dim,
                "k shape ", k.sizes(), " must be [batch_size=", c.batch_size,
                ", T, num_kv_heads=", c.num_kv_heads, ", head_dim=", c.head_dim, "]");
  TESSERA_CHECK(v.sizes() == k.sizes(), "v shape ", v.sizes(), " differs from k shape ", k.sizes());
  TESSERA_CHECK(positions.dim() == 2 && positions.size(0) == k.size(0) &&
                    positions.size(1) == k.size(1) && positions.scalar_type() == torch::kLong,
                "positions must be int64 [batch, T] = [", k.size(0), ", ", k.size(1), "], got ",
                positions.scalar_type(), " ", positions.sizes());
  const int64_t t = k.size(1);
  if (t == 0) return;
  TESSERA_CHECK(t <= c.max_chunk_tokens, "append of ", t,
                " tokens exceeds max_chunk_tokens=", c.max_chunk_tokens);
  auto pos = positions.to(c.device);
  const int64_t max_pos = pos.max().item<int64_t>();
  TESSERA_CHECK(max_pos < c.max_len, "positions must be < max_len=", c.max_len, ", got ", max_pos);

  auto& l = layers_[static_cast<size_t>(layer)];
  const int64_t slots = l.positions.size(1);
  const int64_t bt = placement_.block_tokens, w = placement_.world;
  auto owned = pos.ge(0) & pos.div(bt, "floor").remainder(w).eq(rank_);  // [batch, T]
  auto local = pos.div(bt * w, "floor") * bt + pos.remainder(bt);
  auto flat =
      torch::arange(c.batch_size, pos.options()).unsqueeze(1) * slots + local.remainder(slots);
  auto keep = owned.view(-1).nonzero().squeeze(1);
  if (keep.numel() == 0) return;
  const int64_t per_slot = c.num_kv_heads * c.head_dim;
  auto index = flat.view(-1).index_select(0, keep);
  l.k.view({-1, per_slot})
      .index_copy_(0, index, k.reshape({-1, per_slot}).index_select(0, keep).to(l.k.dtype()));
  l.v.view({-1, per_slot})
      .index_copy_(0, index, v.reshape({-1, per_slot}).index_select(0, keep).to(l.v.dtype()));
  l.positions.view({-1}).index_copy_(0, index, pos.reshape({-1}).index_select(0, keep));
  // Slots at or past the high-water mark were never written: attention skips them.
  const int64_t top = local.view(-1).index_select(0, keep).max().item<int64_t>() + 1;
  auto& used = used_slots_[static_cast<size_t>(layer)];
  used = std::max(used, std::min(top, slots));
}

torch::Tensor SequenceShardedKVCache::attention(int64_t layer, const torch::Tensor& q,
                                                const torch::Tensor& q_pos, double scale) const {
  const auto& l = local_layer(layer);
  const int64_t window = config_.cache.windows[static_cast<size_t>(layer)];
  // Partial attention over this rank's tokens: out [B, T, Hq, D], lse [B, Hq, T].
  // Only the slots written so far: a cache sized for a long max_len costs what its context costs.
  const int64_t used = used_slots_[static_cast<size_t>(layer)];
  auto [out, lse] = kernels::attention(q, l.k.narrow(1, 0, used), l.v.narrow(1, 0, used), q_pos,
                                       l.positions.narrow(1, 0, used), scale, window);
  if (comm_ == nullptr || comm_->size() == 1) return out;
  // One message per rank: out and lse side by side, [B, T, Hq, D + 1]. Its size depends on the
  // queries only, so a decode step moves the same bytes at 4 K or 256 K tokens of context.
  const int64_t d = out.size(3);
  auto packed = torch::cat({out, lse.permute({0, 2, 1}).unsqueeze(3)}, 3);
  auto all = comm_->all_gather(packed);  // [P, B, T, Hq, D + 1]
  auto outs = all.narrow(4, 0, d).contiguous();
  auto lses = all.select(4, d).contiguous();  // [P, B, T, Hq]
  return std::get<0>(kernels::merge_attention_states(outs, lses));
}

caches::ContiguousKVCache::LayerView SequenceShardedKVCache::local_layer(int64_t layer) const {
  TESSERA_CHECK(layer >= 0 && layer < config_.cache.num_layers, "layer=", layer, " is outside [0, ",
                config_.cache.num_layers, ")");
  return layers_[static_cast<size_t>(layer)];
}

int64_t SequenceShardedKVCache::local_bytes() const {
  int64_t total = 0;
  for (const auto& l : layers_) {
    total += (l.k.numel() + l.v.numel()) * static_cast<int64_t>(l.k.itemsize()) +
             l.positions.numel() * 8;
  }
  return total;
}

void SequenceShardedKVCache::reset() {
  for (auto& l : layers_) l.positions.fill_(-1);
  std::fill(used_slots_.begin(), used_slots_.end(), 0);
}

int64_t min_blocks_over_ranks(sharding::Communicator* comm, int64_t local_blocks) {
  TESSERA_CHECK(local_blocks >= 0, "local_blocks must be >= 0, got ", local_blocks);
  if (comm == nullptr || comm->size() == 1) return local_blocks;
  auto t = torch::full({1}, local_blocks, torch::kLong);
  comm->all_reduce(t, sharding::ReduceOp::kMin);
  return t.item<int64_t>();
}

}  // namespace tessera::models
