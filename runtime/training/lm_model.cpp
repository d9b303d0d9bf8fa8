#include "runtime/training/lm_model.h"

#include <cmath>

#include "common/error.h"
#include "runtime/training/tp_autograd.h"

namespace tessera::training {

DecoderLM::DecoderLM(const models::ModelConfig& c, uint64_t seed, sharding::Communicator* tp)
    : config_(c), tp_(tp), params_(tp) {
  c.validate();
  c.check_tensor_parallel(params_.tp_size());
  const int64_t h = c.hidden_size, D = c.head_dim, q = c.num_attention_heads * D,
                kv = c.num_key_value_heads * D, inter = c.intermediate_size;
  local_q_ = c.num_attention_heads / params_.tp_size();
  local_kv_ = c.num_key_value_heads / params_.tp_size();
  auto u = [&](const std::string& name, std::vector<int64_t> shape, double bound) {
    return deterministic_uniform(seed, name, shape, bound);
  };
  auto lin = [](int64_t fan_in) { return 1.0 / std::sqrt(static_cast<double>(fan_in)); };
  embed_ = params_.add("model.embed_tokens.weight",
                       u("model.embed_tokens.weight", {c.vocab_size, h}, 1.0), -1, false);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.window = c.layer_windows[l];
    L.in_norm = params_.add(p + "input_layernorm.weight", torch::ones({h}), -1, false);
    L.qw = params_.add(p + "self_attn.q_proj.weight",
                       u(p + "self_attn.q_proj.weight", {q, h}, lin(h)), 0, true);
    L.kw = params_.add(p + "self_attn.k_proj.weight",
                       u(p + "self_attn.k_proj.weight", {kv, h}, lin(h)), 0, true);
    L.vw = params_.add(p + "self_attn.v_proj.weight",
                       u(p + "self_attn.v_proj.weight", {kv, h}, lin(h)), 0, true);
    if (c.qkv_bias) {
      L.qb = params_.add(p + "self_attn.q_proj.bias", torch::zeros({q}), 0, false);
      L.kb = params_.add(p + "self_attn.k_proj.bias", torch::zeros({kv}), 0, false);
      L.vb = params_.add(p + "self_attn.v_proj.bias", torch::zeros({kv}), 0, false);
    }
    L.ow = params_.add(
        p + "self_attn.o_proj.weight",
        u(p + "self_attn.o_proj.weight", {h, q}, lin(q) / std::sqrt(2.0 * c.num_hidden_layers)), 1,
        true);
    L.post_norm = params_.add(p + "post_attention_layernorm.weight", torch::ones({h}), -1, false);
    L.gate = params_.add(p + "mlp.gate_proj.weight",
                         u(p + "mlp.gate_proj.weight", {inter, h}, lin(h)), 0, true);
    L.up = params_.add(p + "mlp.up_proj.weight", u(p + "mlp.up_proj.weight", {inter, h}, lin(h)), 0,
                       true);
    L.down = params_.add(p + "mlp.down_proj.weight",
                         u(p + "mlp.down_proj.weight", {h, inter},
                           lin(inter) / std::sqrt(2.0 * c.num_hidden_layers)),
                         1, true);
    layers_.push_back(L);
  }
  norm_ = params_.add("model.norm.weight", torch::ones({h}), -1, false);
  TESSERA_CHECK(!c.o_bias && !c.mlp_bias,
                "training a model with o_proj or MLP biases is not supported (model_type ",
                c.model_type, ")");
  TESSERA_CHECK(!c.tie_word_embeddings,
                "training a model with tie_word_embeddings is not supported");
  lm_head_ =
      params_.add("lm_head.weight", u("lm_head.weight", {c.vocab_size, h}, lin(h)), -1, true);
  // HF rotary: inv_freq[i] = theta^(-2i/d), computed in double as transformers does, then float.
  inv_freq_ =
      torch::pow(c.rope_theta, torch::arange(0, D, 2, torch::kDouble) / static_cast<double>(D))
          .reciprocal()
          .to(torch::kFloat);
}

torch::Tensor DecoderLM::rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
  auto xf = x.to(torch::kFloat);
  auto var = xf.pow(2).mean(-1, true);
  return w * (xf * torch::rsqrt(var + config_.rms_norm_eps)).to(x.scalar_type());
}

torch::Tensor DecoderLM::forward(const torch::Tensor& tokens) {
  TESSERA_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", tokens.sizes());
  const int64_t B = tokens.size(0), T = tokens.size(1), D = config_.head_dim;
  auto x = torch::embedding(embed_, tokens);
  auto pos = torch::arange(T, torch::kFloat);
  auto freqs = pos.unsqueeze(1) * inv_freq_.unsqueeze(0);  // [T, D/2]
  auto emb = torch::cat({freqs, freqs}, -1);               // [T, D]
  auto cos = emb.cos().view({1, 1, T, D}), sin = emb.sin().view({1, 1, T, D});
  auto rope = [&](const torch::Tensor& t) {
    auto x1 = t.narrow(-1, 0, D / 2), x2 = t.narrow(-1, D / 2, D / 2);
    return t * cos + torch::cat({-x2, x1}, -1) * sin;
  };
  auto qi = torch::arange(T, torch::kLong).unsqueeze(1),
       ki = torch::arange(T, torch::kLong).unsqueeze(0);
  auto causal = ki.le(qi);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t group = local_q_ / local_kv_;
  for (auto& L : layers_) {
    auto a = copy_to_tp(rms_norm(x, L.in_norm), tp_);
    auto q = torch::linear(a, L.qw, L.qb).view({B, T, local_q_, D}).transpose(1, 2);
    auto k = torch::linear(a, L.kw, L.kb).view({B, T, local_kv_, D}).transpose(1, 2);
    auto v = torch::linear(a, L.vw, L.vb).view({B, T, local_kv_, D}).transpose(1, 2);
    q = rope(q);
    k = rope(k);
    if (group > 1) {
      k = k.repeat_interleave(group, 1);
      v = v.repeat_interleave(group, 1);
    }
    auto allowed = L.window > 0 ? causal.logical_and(qi - ki < L.window) : causal;
    auto s = torch::matmul(q, k.transpose(-1, -2)) * scale;
    s = s.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    auto p = torch::softmax(s, -1, torch::kFloat).to(q.scalar_type());
    auto o = torch::matmul(p, v).transpose(1, 2).reshape({B, T, local_q_ * D});
    x = x + row_parallel(o, L.ow, {}, tp_);
    auto m = copy_to_tp(rms_norm(x, L.post_norm), tp_);
    auto g = torch::linear(m, L.gate);
    auto up = torch::linear(m, L.up);
    x = x + row_parallel(torch::silu(g) * up, L.down, {}, tp_);
  }
  return torch::linear(rms_norm(x, norm_), lm_head_).to(torch::kFloat);
}

}  // namespace tessera::training
