// An AutoFocusFormer-style classifier for 8x8 digit images: every pixel is a token at its (x, y)
// position, embedded from its 3x3 neighbourhood (a convolutional stem); tokens are grouped into
// balanced clusters along a Hilbert curve and each attends to the tokens of its k nearest clusters
// (kernels/ops/cluster_neighbors_ops.h) through the fused cluster-attention autograd Function
// (kernels/ops/cluster_attention_autograd.h) with the learned relative-position bias and a blank
// token. Pre-norm blocks (attention, GELU MLP), mean pooling, a linear head. Heads and the MLP
// split over the tensor-parallel group (q/k/v and fc1 column-parallel, proj and fc2 row-parallel).
//
// Checkpoint layout (model.safetensors, float32, full tensors whatever the TP size):
//   patch_embed.weight [C, 9] (over the pixel's 3x3 neighbourhood / 16, row-major, zero padded),
//   patch_embed.bias [C], pos_embed [64, C]
//   blocks.{l}.norm1.{weight,bias} [C]
//   blocks.{l}.attn.{q,k,v}.weight [C, C], .bias [C]    (rows: head-major, head_dim within)
//   blocks.{l}.attn.pos_bias.weight [H, 5], .bias [H]   (over dx, dy, dist, dy/dist, dx/dist)
//   blocks.{l}.attn.blank_k [H, D], blank_v [H, D]
//   blocks.{l}.attn.proj.{weight [C, C], bias [C]}
//   blocks.{l}.norm2.{weight,bias} [C], blocks.{l}.mlp.fc1.{weight [F, C], bias [F]},
//   blocks.{l}.mlp.fc2.{weight [C, F], bias [C]}, norm.{weight,bias} [C], head.{weight [10, C],
//   bias [10]}
// and config.json {"model_type": "tessera_digits_cluster_classifier", dim, depth, heads,
// mlp_ratio, cluster_size, nearest, num_classes, image_size, pos_scale}.
#pragma once

#include <torch/types.h>

#include <nlohmann/json.hpp>

#include "runtime/training/sharded_params.h"
#include "sharding/communicator.h"

namespace tessera::training {

struct DigitsModelConfig {
  int64_t dim = 48;
  int64_t depth = 2;
  int64_t heads = 4;
  int64_t mlp_ratio = 2;
  int64_t cluster_size = 8;
  int64_t nearest = 3;
  int64_t num_classes = 10;
  int64_t image_size = 8;
  double pos_scale = 0.25;  // token positions are (column, row) * pos_scale
  nlohmann::json to_json() const;
  static DigitsModelConfig from_json(const nlohmann::json& j);
};

class DigitsClassifier {
 public:
  DigitsClassifier(const DigitsModelConfig& config, uint64_t seed, sharding::Communicator* tp);

  // pixels [B, 64] float (0..16) -> logits [B, num_classes] (float32).
  torch::Tensor forward(const torch::Tensor& pixels);

  ShardedParams& params() { return params_; }
  const DigitsModelConfig& config() const { return config_; }
  // The neighbour structure every image shares (the token grid is fixed): [1, N, M] each.
  const torch::Tensor& neighbor_idx() const { return idx_; }
  const torch::Tensor& neighbor_mask() const { return mask_; }
  const torch::Tensor& positions() const { return pos_; }  // [1, N, 2]

 private:
  struct Block {
    torch::Tensor n1w, n1b, qw, qb, kw, kb, vw, vb, pew, peb, blank_k, blank_v, pw, pb;
    torch::Tensor n2w, n2b, f1w, f1b, f2w, f2b;
  };
  DigitsModelConfig config_;
  sharding::Communicator* tp_;
  ShardedParams params_;
  int64_t local_heads_ = 0;
  torch::Tensor embed_w_, embed_b_, pos_embed_, norm_w_, norm_b_, head_w_, head_b_;
  std::vector<Block> blocks_;
  torch::Tensor pos_, idx_, mask_;
  torch::Tensor taps_;  // [N * 9] the stem's input pixel per (token, tap); N = zero padding
};

}  // namespace tessera::training
