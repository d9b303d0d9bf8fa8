// A LLaMA/Mistral/Qwen2-style decoder with tensor parallelism: each rank holds its share of the
// attention heads (q, k, v column-parallel, o row-parallel) and of the MLP (gate/up column-,
// down row-parallel); the partial outputs are all-reduced. Embeddings, norms and the LM head are
// replicated, so every rank ends with the full logits.
#pragma once

#include <torch/types.h>

#include <vector>

#include "caches/contiguous_kv_cache.h"
#include "runtime/models/model_config.h"
#include "runtime/models/weights.h"
#include "sharding/communicator.h"

namespace tessera::models {

class DecoderModel {
 public:
  // `comm` spans the tensor-parallel group (null or size 1: the whole model on this rank).
  // Throws when the group size does not divide the heads or the MLP.
  DecoderModel(const ModelConfig& config, const WeightLoader& weights,
               sharding::Communicator* comm);

  const ModelConfig& config() const { return config_; }
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  int64_t local_q_heads() const { return config_.num_attention_heads / tp_size_; }
  int64_t local_kv_heads() const { return config_.num_key_value_heads / tp_size_; }

  // A contiguous KV cache shaped for this rank's heads and the model's sliding windows.
  caches::ContiguousKVCacheConfig cache_config(int64_t batch, int64_t max_len,
                                               int64_t max_chunk_tokens) const;

  // tokens, positions: [batch, T] int64. Appends the new K/V to `cache` and returns the logits
  // [batch, T, vocab] (float32, identical on every rank).
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                        caches::ContiguousKVCache& cache);

 private:
  struct Layer {
    torch::Tensor input_norm, post_norm;
    torch::Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w;  // this rank's heads
    torch::Tensor gate_w, up_w, down_w;               // this rank's MLP slice
    int64_t window = 0;
  };
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const;
  torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos,
                     const torch::Tensor& sin) const;

  ModelConfig config_;
  sharding::Communicator* comm_ = nullptr;
  int tp_rank_ = 0;
  int tp_size_ = 1;
  torch::Tensor embed_, final_norm_, lm_head_, inv_freq_;
  std::vector<Layer> layers_;
};

}  // namespace tessera::models
