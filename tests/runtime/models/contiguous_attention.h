// A test oracle for the decoder: attention over the contiguous per-layer cache (one sequence,
// ring buffers for sliding windows) through the fp64 reference kernel, behind the decoder's
// AttentionBackend. The product runs the paged cache; tests compare the two.
#pragma once

#include <torch/types.h>

#include <algorithm>

#include "caches/contiguous_kv_cache.h"
#include "kernels/ops/attention_ops.h"
#include "runtime/models/decoder_model.h"

namespace tessera::models::testing {

class ContiguousAttention : public AttentionBackend {
 public:
  ContiguousAttention(const DecoderModel& model, int64_t max_len, int64_t max_chunk_tokens)
      : config_(model.config()), cache_(cache_config(model, max_len, max_chunk_tokens)) {}

  const caches::ContiguousKVCache& cache() const { return cache_; }

  // Logits [T, vocab] of the next T tokens of the sequence (positions [T] int64).
  torch::Tensor forward(const DecoderModel& model, const torch::Tensor& tokens,
                        const torch::Tensor& positions) {
    positions_ = positions;
    return model.logits(model.hidden_states({tokens, positions, {}}, *this));
  }

  torch::Tensor attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                       const torch::Tensor& v) override {
    const auto pos = positions_.view({1, -1});
    cache_.append(layer, k.unsqueeze(0), v.unsqueeze(0), pos);
    const auto view = cache_.layer(layer);
    auto [out, lse] = kernels::attention(q.unsqueeze(0), view.k, view.v, pos, view.positions,
                                         config_.attention_scale(), config_.layer_windows[layer]);
    return out.reshape({q.size(0), -1});
  }

 private:
  static caches::ContiguousKVCacheConfig cache_config(const DecoderModel& model, int64_t max_len,
                                                      int64_t max_chunk_tokens) {
    caches::ContiguousKVCacheConfig cc;
    cc.num_layers = model.config().num_hidden_layers;
    cc.batch_size = 1;
    cc.max_len = max_len;
    cc.num_kv_heads = model.local_kv_heads();
    cc.head_dim = model.config().head_dim;
    cc.max_chunk_tokens = max_chunk_tokens;
    cc.windows = model.config().layer_windows;
    return cc;
  }

  ModelConfig config_;
  caches::ContiguousKVCache cache_;
  torch::Tensor positions_;
};

}  // namespace tessera::models::testing
