#include "runtime/training/digits_model.h"

#include <cmath>

#include "common/error.h"
#include "kernels/ops/cluster_attention_autograd.h"
#include "kernels/ops/cluster_neighbors_ops.h"
#include "runtime/training/tp_autograd.h"

namespace tessera::training {

nlohmann::json DigitsModelConfig::to_json() const {
  return {{"model_type", "tessera_digits_cluster_classifier"},
          {"dim", dim},
          {"depth", depth},
          {"heads", heads},
          {"mlp_ratio", mlp_ratio},
          {"cluster_size", cluster_size},
          {"nearest", nearest},
          {"num_classes", num_classes},
          {"image_size", image_size},
          {"pos_scale", pos_scale}};
}

DigitsModelConfig DigitsModelConfig::from_json(const nlohmann::json& j) {
  DigitsModelConfig c;
  c.dim = j.at("dim").get<int64_t>();
  c.depth = j.at("depth").get<int64_t>();
  c.heads = j.at("heads").get<int64_t>();
  c.mlp_ratio = j.at("mlp_ratio").get<int64_t>();
  c.cluster_size = j.at("cluster_size").get<int64_t>();
  c.nearest = j.at("nearest").get<int64_t>();
  c.num_classes = j.at("num_classes").get<int64_t>();
  c.image_size = j.at("image_size").get<int64_t>();
  c.pos_scale = j.at("pos_scale").get<double>();
  return c;
}

DigitsClassifier::DigitsClassifier(const DigitsModelConfig& c, uint64_t seed,
                                   sharding::Communicator* tp)
    : config_(c), tp_(tp), params_(tp) {
  const int64_t C = c.dim, H = c.heads, D = C / H, F = C * c.mlp_ratio;
  const int64_t N = c.image_size * c.image_size;
  TESSERA_CHECK(C % H == 0, "dim=", C, " is not divisible by heads=", H);
  const int tps = params_.tp_size();
  TESSERA_CHECK(H % tps == 0, "heads=", H, " is not divisible by tp=", tps);
  TESSERA_CHECK(F % tps == 0, "dim * mlp_ratio=", F, " is not divisible by tp=", tps);
  const int64_t K = (N + c.cluster_size - 1) / c.cluster_size;
  TESSERA_CHECK(c.nearest >= 1 && c.nearest <= K, "nearest=", c.nearest, " must be in [1, ", K,
                "] (clusters of ", c.cluster_size, " among ", N, " tokens)");
  local_heads_ = H / tps;
  auto u = [&](const std::string& name, std::vector<int64_t> shape, double bound) {
    return deterministic_uniform(seed, name, shape, bound);
  };
  auto zeros = [](std::vector<int64_t> shape) { return torch::zeros(shape); };
  auto ones = [](std::vector<int64_t> shape) { return torch::ones(shape); };
  const double lin = 1.0 / std::sqrt(static_cast<double>(C));
  embed_w_ =
      params_.add("patch_embed.weight", u("patch_embed.weight", {C, 9}, 1.0 / 3.0), -1, true);
  embed_b_ = params_.add("patch_embed.bias", zeros({C}), -1, false);
  pos_embed_ = params_.add("pos_embed", u("pos_embed", {N, C}, 0.035), -1, false);
  for (int64_t l = 0; l < c.depth; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    Block b;
    b.n1w = params_.add(p + "norm1.weight", ones({C}), -1, false);
    b.n1b = params_.add(p + "norm1.bias", zeros({C}), -1, false);
    b.qw = params_.add(p + "attn.q.weight", u(p + "attn.q.weight", {C, C}, lin), 0, true);
    b.qb = params_.add(p + "attn.q.bias", zeros({C}), 0, false);
    b.kw = params_.add(p + "attn.k.weight", u(p + "attn.k.weight", {C, C}, lin), 0, true);
    b.kb = params_.add(p + "attn.k.bias", zeros({C}), 0, false);
    b.vw = params_.add(p + "attn.v.weight", u(p + "attn.v.weight", {C, C}, lin), 0, true);
    b.vb = params_.add(p + "attn.v.bias", zeros({C}), 0, false);
    b.pew = params_.add(p + "attn.pos_bias.weight",
                        u(p + "attn.pos_bias.weight", {H, 5}, 1.0 / std::sqrt(5.0)), 0, false);
    b.peb = params_.add(p + "attn.pos_bias.bias", zeros({H}), 0, false);
    b.blank_k = params_.add(p + "attn.blank_k", u(p + "attn.blank_k", {H, D}, 0.5), 0, false);
    b.blank_v = params_.add(p + "attn.blank_v", u(p + "attn.blank_v", {H, D}, 0.5), 0, false);
    b.pw = params_.add(p + "attn.proj.weight", u(p + "attn.proj.weight", {C, C}, lin), 1, true);
    b.pb = params_.add(p + "attn.proj.bias", zeros({C}), -1, false);
    b.n2w = params_.add(p + "norm2.weight", ones({C}), -1, false);
    b.n2b = params_.add(p + "norm2.bias", zeros({C}), -1, false);
    b.f1w = params_.add(p + "mlp.fc1.weight", u(p + "mlp.fc1.weight", {F, C}, lin), 0, true);
    b.f1b = params_.add(p + "mlp.fc1.bias", zeros({F}), 0, false);
    b.f2w = params_.add(p + "mlp.fc2.weight",
                        u(p + "mlp.fc2.weight", {C, F}, 1.0 / std::sqrt(static_cast<double>(F))), 1,
                        true);
    b.f2b = params_.add(p + "mlp.fc2.bias", zeros({C}), -1, false);
    blocks_.push_back(b);
  }
  norm_w_ = params_.add("norm.weight", ones({C}), -1, false);
  norm_b_ = params_.add("norm.bias", zeros({C}), -1, false);
  head_w_ = params_.add("head.weight", u("head.weight", {c.num_classes, C}, lin), -1, true);
  head_b_ = params_.add("head.bias", zeros({c.num_classes}), -1, false);

  // Token positions (column, row) and the neighbour structure they give, once for every image.
  auto grid = torch::arange(N, torch::kLong);
  pos_ = torch::stack(
             {torch::remainder(grid, c.image_size), torch::div(grid, c.image_size, "floor")}, 1)
             .to(torch::kFloat)
             .mul_(c.pos_scale)
             .unsqueeze(0);
  // The stem's 3x3 neighbourhood of every pixel (row-major offsets, index N = zero padding).
  const int64_t S = c.image_size;
  std::vector<int64_t> taps;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t dy = -1; dy <= 1; ++dy) {
      for (int64_t dx = -1; dx <= 1; ++dx) {
        const int64_t y = n / S + dy, x = n % S + dx;
        taps.push_back(y >= 0 && y < S && x >= 0 && x < S ? y * S + x : N);
      }
    }
  }
  taps_ = torch::tensor(taps, torch::kLong);
  auto nb = kernels::build_cluster_neighbors(pos_, c.nearest, c.cluster_size);
  idx_ = nb.idx;
  mask_ = nb.mask;
}

torch::Tensor DigitsClassifier::forward(const torch::Tensor& pixels) {
  const auto& c = config_;
  const int64_t N = c.image_size * c.image_size;
  TESSERA_CHECK(pixels.dim() == 2 && pixels.size(1) == N, "pixels must be [B, ", N, "], got ",
                pixels.sizes());
  const int64_t B = pixels.size(0), C = c.dim, D = C / c.heads, Hl = local_heads_;
  const int64_t M = idx_.size(2);
  // Convolutional stem (as AutoFocusFormer's): each token sees its pixel's 3x3 neighbourhood.
  auto padded = torch::cat({pixels / 16.0, torch::zeros({B, 1}, pixels.options())}, 1);
  auto patches = padded.index_select(1, taps_).view({B, N, 9});
  auto x = torch::linear(patches, embed_w_, embed_b_) + pos_embed_;
  auto idx = idx_.expand({B, N, M});
  auto mask = mask_.unsqueeze(1).expand({B, 1, N, M});
  auto pos = pos_.expand({B, N, 2});
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (auto& b : blocks_) {
    auto a = copy_to_tp(torch::layer_norm(x, {C}, b.n1w, b.n1b), tp_);
    auto heads = [&](const torch::Tensor& w, const torch::Tensor& bias) {
      return torch::linear(a, w, bias).view({B, N, Hl, D}).permute({0, 2, 1, 3});
    };
    kernels::ClusterAttentionInputs in;
    in.q = heads(b.qw, b.qb);
    in.k = heads(b.kw, b.kb);
    in.v = heads(b.vw, b.vb);
    in.idx = idx;
    in.mask = mask;
    in.pos = pos;
    in.pe_w = b.pew;
    in.pe_b = b.peb;
    in.blank_k = b.blank_k;
    in.blank_v = b.blank_v;
    in.scale = scale;
    auto out = std::get<0>(kernels::cluster_attention(in, /*deterministic=*/true));
    auto merged = out.permute({0, 2, 1, 3}).reshape({B, N, Hl * D});
    x = x + row_parallel(merged, b.pw, b.pb, tp_);
    auto m = column_parallel(torch::layer_norm(x, {C}, b.n2w, b.n2b), b.f1w, b.f1b, tp_);
    x = x + row_parallel(torch::gelu(m), b.f2w, b.f2b, tp_);
  }
  x = torch::layer_norm(x, {C}, norm_w_, norm_b_).mean(1);
  return torch::linear(x, head_w_, head_b_).to(torch::kFloat);
}

}  // namespace tessera::training
