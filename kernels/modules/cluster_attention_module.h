// ClusterAttention: AutoFocusFormer's attention block as a trainable module — qkv projection,
// fused cluster attention over neighbour indices (or global), learned relative-position bias,
// blank token, mask, attention and projection dropout, output projection. Parameters are plain
// leaf tensors (requires_grad), so any optimiser over parameters() trains it.
#pragma once

#include <torch/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tessera::kernels {

struct ClusterAttentionOptions {
  int64_t dim = 0;    // C, the feature width
  int64_t heads = 1;  // H, divides dim
  bool qkv_bias = true;
  bool position_bias = true;  // the learned [H, 5] relative-position bias (needs positions)
  bool blank_token = true;
  std::optional<double> scale;  // default head_dim^-0.5
  double attn_drop = 0.0;
  double proj_drop = 0.0;
  uint64_t seed = 0;           // first attention-dropout seed; each training forward advances it
  bool deterministic = false;  // inverse-index backward (bitwise reproducible on CUDA)
};

class ClusterAttention {
 public:
  explicit ClusterAttention(const ClusterAttentionOptions& options);

  // feat [B, N, C]; pos [B, N, 2] (required with position_bias); idx [B, N, M] int32 / int64 or
  // undefined for global attention; mask [B, N, M] (or [B, N, N] in global mode) bool, true =
  // attend, may be undefined. Returns [B, N, C].
  torch::Tensor forward(const torch::Tensor& feat, const torch::Tensor& pos,
                        const torch::Tensor& idx, const torch::Tensor& mask = {});

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool is_training() const { return training_; }
  // Moves (and casts) every parameter, keeping them leaves that require grad.
  void to(const torch::Device& device, torch::ScalarType dtype = torch::kFloat);

  std::vector<torch::Tensor> parameters() const;
  // ("qkv.weight", [3C, C]), ("qkv.bias", [3C]), ("proj.weight", [C, C]), ("proj.bias", [C]),
  // ("blank_k", [C]), ("blank_v", [C]), ("pos_embed.weight", [H, 5]), ("pos_embed.bias", [H])
  // as present.
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;
  const ClusterAttentionOptions& options() const { return options_; }

 private:
  ClusterAttentionOptions options_;
  double scale_ = 1.0;
  bool training_ = true;
  uint64_t step_ = 0;  // training forwards so far: seeds the next dropout mask
  torch::Tensor qkv_weight_, qkv_bias_, proj_weight_, proj_bias_;
  torch::Tensor blank_k_, blank_v_, pe_weight_, pe_bias_;
};

}  // namespace tessera::kernels
