// The decoder language model in training mode: the Qwen2 / LLaMA layout of runtime/models (the
// same config.json via models::ModelConfig and the same Hugging Face tensor names, so a checkpoint
// loads in `tessera generate` and in transformers), with a full-sequence causal forward (no KV
// cache; sliding-window layers masked) built from differentiable torch ops and the TP autograd
// Functions: q/k/v and gate/up column-parallel, o and down row-parallel, heads split over the TP
// group. Embeddings, norms and the LM head are replicated.
// The inference decoder (runtime/models/decoder_model.*) is being rewritten on the engine branch
// (paged KV); this file shares its layout and formulas, not its code, until that lands.
#pragma once

#include <torch/types.h>

#include "runtime/models/model_config.h"
#include "runtime/training/sharded_params.h"
#include "sharding/communicator.h"

namespace tessera::training {

class DecoderLM {
 public:
  // Initialised from (seed, tensor name): the same weights for any TP size.
  DecoderLM(const models::ModelConfig& config, uint64_t seed, sharding::Communicator* tp);

  // tokens [B, T] int64 -> logits [B, T, vocab] float32 (identical on every TP rank).
  torch::Tensor forward(const torch::Tensor& tokens);

  ShardedParams& params() { return params_; }
  const models::ModelConfig& config() const { return config_; }

 private:
  struct Layer {
    torch::Tensor in_norm, post_norm, qw, qb, kw, kb, vw, vb, ow, gate, up, down;
    int64_t window = 0;
  };
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const;
  models::ModelConfig config_;
  sharding::Communicator* tp_;
  ShardedParams params_;
  int64_t local_q_ = 0, local_kv_ = 0;
  torch::Tensor embed_, norm_, lm_head_, inv_freq_;
  std::vector<Layer> layers_;
};

}  // namespace tessera::training
