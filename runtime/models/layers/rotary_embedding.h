// Rotary position embeddings as Hugging Face transformers 4.44 computes them (rotate_half layout,
// float32), with the rope_scaling variants of config.json: default, linear, dynamic NTK, llama3
// and yarn. cos / sin come from a table built once for every position up to max_positions;
// dynamic NTK recomputes the frequencies of a sequence that has grown past
// max_position_embeddings, per token from its sequence's length.
#pragma once

#include <torch/types.h>

#include <optional>
#include <utility>

#include "runtime/models/model_config.h"

namespace tessera::models {

class RotaryEmbedding {
 public:
  RotaryEmbedding(const ModelConfig& config, int64_t max_positions, torch::Device device);

  // Inverse frequencies [head_dim / 2] float32 of `config`'s scaling; `seq_len` is the sequence
  // length dynamic NTK scales for (ignored by the other types).
  static torch::Tensor inv_freq(const ModelConfig& config, std::optional<int64_t> seq_len = {});
  // The factor yarn applies to cos and sin (1 for the other types).
  static double attention_factor(const ModelConfig& config);

  // Dynamic NTK needs each token's sequence length (ForwardInputs::seq_lens).
  bool needs_seq_lens() const;
  // cos, sin [T, head_dim] float32 for positions [T] int64 (< max_positions); seq_lens [T] int64,
  // each token's sequence length after this step, for dynamic NTK only.
  std::pair<torch::Tensor, torch::Tensor> cos_sin(const torch::Tensor& positions,
                                                  const torch::Tensor& seq_lens = {}) const;
  // x [T, H, head_dim] -> x * cos + rotate_half(x) * sin (a new tensor).
  static torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& cos,
                             const torch::Tensor& sin);

 private:
  ModelConfig config_;
  int64_t max_positions_ = 0;
  torch::Tensor cos_, sin_;  // [max_positions, head_dim]
};

}  // namespace tessera::models
