// Contiguous per-layer KV cache: one [batch, capacity, kv_heads, head_dim] buffer per layer and
// the token position held in each slot. Full-attention layers hold max_len slots; sliding-window
// layers are ring buffers of min(max_len, window - 1 + max_chunk_tokens) slots, so a layer never
// holds more than its window needs while a chunk of up to max_chunk_tokens new tokens still sees
// every key its window covers. Encoder-decoder models also keep, per layer, the cross-attention
// K/V of the encoder output (written once per request).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace tessera::caches {

struct ContiguousKVCacheConfig {
  int64_t num_layers = 0;
  int64_t batch_size = 0;
  int64_t max_len = 0;  // positions 0 .. max_len-1 may be written
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_chunk_tokens = 0;  // most tokens one append() may write per sequence
  std::vector<int64_t> windows;  // per layer: 0 = full attention, w > 0 = sliding window of w
  int64_t encoder_len = 0;       // cross-attention slots per layer (encoder-decoder); 0 = none
  torch::ScalarType dtype = torch::kFloat;
  torch::Device device = torch::kCPU;

  // Throws naming the field and value: "batch_size must be positive, got 0".
  void validate() const;
  int64_t capacity(int64_t layer) const;  // slots held for `layer`
  int64_t bytes() const;     // K, V, position and cross-attention storage over all layers
  int64_t kv_bytes() const;  // K and V storage only (what tensor parallelism splits)
};

class ContiguousKVCache {
 public:
  explicit ContiguousKVCache(ContiguousKVCacheConfig config);

  const ContiguousKVCacheConfig& config() const { return config_; }

  // k, v: [batch, T, kv_heads, head_dim]; positions: [batch, T] int64, each < max_len.
  // Writes slot (position % capacity) of `layer`.
  void append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
              const torch::Tensor& positions);

  struct LayerView {
    torch::Tensor k;          // [batch, capacity, kv_heads, head_dim]
    torch::Tensor v;          // [batch, capacity, kv_heads, head_dim]
    torch::Tensor positions;  // [batch, capacity] int64, -1 = empty slot
  };
  LayerView layer(int64_t layer) const;

  // Which slots of `layer` each query may attend to: bool [batch, T, capacity], true where the
  // slot holds a token at a position <= the query's and, for a sliding window w, within w of it.
  // q_positions: [batch, T] int64. For attention implementations that take a dense mask.
  torch::Tensor attention_mask(int64_t layer, const torch::Tensor& q_positions) const;

  // Encoder-decoder: stores the encoder's K/V for `layer`, k / v [batch, S, kv_heads, head_dim]
  // with S <= encoder_len; slots beyond S stay empty (position -1).
  void set_cross(int64_t layer, const torch::Tensor& k, const torch::Tensor& v);
  // k / v [batch, encoder_len, kv_heads, head_dim]; positions [batch, encoder_len] int64 holding
  // 0 .. S-1 and -1 for empty slots (cross attention is not causal: pass a query position >= S).
  LayerView cross(int64_t layer) const;

  // Slots currently holding a token, per sequence, for `layer`.
  std::vector<int64_t> occupied(int64_t layer) const;
  void reset();

 private:
  ContiguousKVCacheConfig config_;
  std::vector<LayerView> layers_;
  std::vector<LayerView> cross_;  // empty without encoder
};

}  // namespace tessera::caches
