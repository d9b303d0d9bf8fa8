#include "kernels/modules/cluster_attention_module.h"

#include <cmath>

#include "common/error.h"
#include "kernels/cluster_attention/cluster_dropout.h"
#include "kernels/ops/cluster_attention_autograd.h"

namespace tessera::kernels {

namespace {

// nn.Linear's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
torch::Tensor uniform_param(torch::IntArrayRef sizes, int64_t fan_in) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(fan_in, 1)));
  return (torch::rand(sizes) * 2 - 1).mul_(bound).requires_grad_(true);
}

}  // namespace

ClusterAttention::ClusterAttention(const ClusterAttentionOptions& o) : options_(o) {
  TESSERA_CHECK(o.dim > 0, "dim must be positive, got ", o.dim);
  TESSERA_CHECK(o.heads > 0, "heads must be positive, got ", o.heads);
  TESSERA_CHECK(o.dim % o.heads == 0, "dim (C) must be divisible by heads (H), got C = ", o.dim,
                ", H = ", o.heads);
  TESSERA_CHECK(o.attn_drop >= 0 && o.attn_drop < 1, "attn_drop must be in [0, 1), got ",
                o.attn_drop);
  TESSERA_CHECK(o.proj_drop >= 0 && o.proj_drop < 1, "proj_drop must be in [0, 1), got ",
                o.proj_drop);
  const int64_t C = o.dim, H = o.heads;
  scale_ = o.scale.value_or(1.0 / std::sqrt(static_cast<double>(C / H)));
  qkv_weight_ = uniform_param({3 * C, C}, C);
  if (o.qkv_bias) qkv_bias_ = uniform_param({3 * C}, C);
  proj_weight_ = uniform_param({C, C}, C);
  proj_bias_ = uniform_param({C}, C);
  if (o.blank_token) {
    blank_k_ = torch::randn({C}).requires_grad_(true);
    blank_v_ = torch::randn({C}).requires_grad_(true);
  }
  if (o.position_bias) {
    pe_weight_ = uniform_param({H, 5}, 5);
    pe_bias_ = uniform_param({H}, 5);
  }
}

torch::Tensor ClusterAttention::forward(const torch::Tensor& feat, const torch::Tensor& pos,
                                        const torch::Tensor& idx, const torch::Tensor& mask) {
  TESSERA_CHECK(feat.dim() == 3, "feat must be 3-D [B, N, C], got shape ", feat.sizes());
  const int64_t B = feat.size(0), N = feat.size(1), C = options_.dim, H = options_.heads;
  TESSERA_CHECK(feat.size(2) == C, "feat channels must equal dim = ", C, ", got ", feat.size(2));
  TESSERA_CHECK(!options_.position_bias || pos.defined(),
                "pos [B, N, 2] is required with position_bias");
  const int64_t D = C / H;
  // [B, N, 3, H, D] viewed as q, k, v [B, H, N, D] without copies (the kernel takes strides).
  auto qkv = torch::linear(feat, qkv_weight_, qkv_bias_).view({B, N, 3, H, D});
  ClusterAttentionInputs in;
  in.q = qkv.select(2, 0).permute({0, 2, 1, 3});
  in.k = qkv.select(2, 1).permute({0, 2, 1, 3});
  in.v = qkv.select(2, 2).permute({0, 2, 1, 3});
  in.idx = idx;
  if (mask.defined()) {
    TESSERA_CHECK(mask.dim() == 3, "mask must be 3-D [B, N, M], got shape ", mask.sizes());
    in.mask = mask.unsqueeze(1);
  }
  if (options_.position_bias) {
    in.pos = pos;
    in.pe_w = pe_weight_;
    in.pe_b = pe_bias_;
  }
  if (options_.blank_token) {
    in.blank_k = blank_k_.view({H, D});
    in.blank_v = blank_v_.view({H, D});
  }
  in.scale = scale_;
  if (training_ && options_.attn_drop > 0) {
    in.dropout_p = options_.attn_drop;
    in.seed = static_cast<int64_t>(mix64(options_.seed + step_) >> 1);
  }
  if (training_) ++step_;
  auto out = std::get<0>(cluster_attention(in, options_.deterministic));
  auto merged = out.permute({0, 2, 1, 3}).reshape({B, N, C});
  auto y = torch::linear(merged, proj_weight_, proj_bias_);
  if (training_ && options_.proj_drop > 0) y = torch::dropout(y, options_.proj_drop, true);
  return y;
}

void ClusterAttention::to(const torch::Device& device, torch::ScalarType dtype) {
  for (auto* p : {&qkv_weight_, &qkv_bias_, &proj_weight_, &proj_bias_, &blank_k_, &blank_v_,
                  &pe_weight_, &pe_bias_}) {
    if (p->defined()) *p = p->detach().to(device, dtype).requires_grad_(true);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> ClusterAttention::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto add = [&](const char* name, const torch::Tensor& t) {
    if (t.defined()) out.emplace_back(name, t);
  };
  add("qkv.weight", qkv_weight_);
  add("qkv.bias", qkv_bias_);
  add("proj.weight", proj_weight_);
  add("proj.bias", proj_bias_);
  add("blank_k", blank_k_);
  add("blank_v", blank_v_);
  add("pos_embed.weight", pe_weight_);
  add("pos_embed.bias", pe_bias_);
  return out;
}

std::vector<torch::Tensor> ClusterAttention::parameters() const {
  std::vector<torch::Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

}  // namespace tessera::kernels
