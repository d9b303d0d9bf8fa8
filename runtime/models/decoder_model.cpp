#include "runtime/models/decoder_model.h"

#include <cmath>
#include <string>

#include "common/error.h"
#include "kernels/ops/attention_ops.h"
#include "sharding/tensor_parallel.h"

namespace tessera::models {

DecoderModel::DecoderModel(const ModelConfig& config, const WeightLoader& w,
                           sharding::Communicator* comm)
    : config_(config), comm_(comm) {
  config_.validate();
  if (comm_ != nullptr) {
    tp_rank_ = comm_->rank();
    tp_size_ = comm_->size();
  }
  config_.check_tensor_parallel(tp_size_);
  const auto& c = config_;
  const int64_t h = c.hidden_size, d = c.head_dim, inter = c.intermediate_size;
  const int64_t q = c.num_attention_heads * d, kv = c.num_key_value_heads * d;
  const auto qs = sharding::even_shard(q, tp_rank_, tp_size_, "num_attention_heads*head_dim");
  const auto kvs = sharding::even_shard(kv, tp_rank_, tp_size_, "num_key_value_heads*head_dim");
  const auto ms = sharding::even_shard(inter, tp_rank_, tp_size_, "intermediate_size");

  embed_ = w.load("model.embed_tokens.weight", {c.vocab_size, h});
  final_norm_ = w.load("model.norm.weight", {h});
  if (c.tie_word_embeddings || !w.has("lm_head.weight")) {
    TESSERA_CHECK(c.tie_word_embeddings,
                  "checkpoint has no 'lm_head.weight' and "
                  "tie_word_embeddings is false");
    lm_head_ = embed_;
  } else {
    lm_head_ = w.load("lm_head.weight", {c.vocab_size, h});
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.window = c.layer_windows[l];
    L.input_norm = w.load(p + "input_layernorm.weight", {h});
    L.post_norm = w.load(p + "post_attention_layernorm.weight", {h});
    L.q_w = w.load_slice(p + "self_attn.q_proj.weight", {q, h}, 0, qs);
    L.k_w = w.load_slice(p + "self_attn.k_proj.weight", {kv, h}, 0, kvs);
    L.v_w = w.load_slice(p + "self_attn.v_proj.weight", {kv, h}, 0, kvs);
    if (c.attention_bias) {
      L.q_b = w.load_slice(p + "self_attn.q_proj.bias", {q}, 0, qs);
      L.k_b = w.load_slice(p + "self_attn.k_proj.bias", {kv}, 0, kvs);
      L.v_b = w.load_slice(p + "self_attn.v_proj.bias", {kv}, 0, kvs);
    }
    L.o_w = w.load_slice(p + "self_attn.o_proj.weight", {h, q}, 1, qs);
    L.gate_w = w.load_slice(p + "mlp.gate_proj.weight", {inter, h}, 0, ms);
    L.up_w = w.load_slice(p + "mlp.up_proj.weight", {inter, h}, 0, ms);
    L.down_w = w.load_slice(p + "mlp.down_proj.weight", {h, inter}, 1, ms);
    layers_.push_back(std::move(L));
  }
  // HF rotary: inv_freq[i] = theta^(-2i/d), applied as x*cos + rotate_half(x)*sin.
  inv_freq_ =
      torch::pow(c.rope_theta, torch::arange(0, d, 2, torch::kDouble) / static_cast<double>(d))
          .reciprocal()
          .to(torch::kFloat);
}

caches::ContiguousKVCacheConfig DecoderModel::cache_config(int64_t batch, int64_t max_len,
                                                           int64_t max_chunk_tokens) const {
  caches::ContiguousKVCacheConfig cc;
  cc.num_layers = config_.num_hidden_layers;
  cc.batch_size = batch;
  cc.max_len = max_len;
  cc.num_kv_heads = local_kv_heads();
  cc.head_dim = config_.head_dim;
  cc.max_chunk_tokens = max_chunk_tokens;
  cc.windows = config_.layer_windows;
  return cc;
}

torch::Tensor DecoderModel::rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
  auto var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * torch::rsqrt(var + config_.rms_norm_eps) * w;
}

torch::Tensor DecoderModel::rope(const torch::Tensor& x, const torch::Tensor& cos,
                                 const torch::Tensor& sin) const {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  auto rotated = torch::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

torch::Tensor DecoderModel::forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                                    caches::ContiguousKVCache& cache) {
  TESSERA_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kLong,
                "tokens must be int64 [batch, T], got ", tokens.scalar_type(), " ", tokens.sizes());
  TESSERA_CHECK(positions.sizes() == tokens.sizes(), "positions shape ", positions.sizes(),
                " must equal tokens shape ", tokens.sizes());
  int64_t min_id = 0, max_id = 0;
  if (tokens.numel() > 0) {
    const auto [lo, hi] = torch::aminmax(tokens);
    const auto range = torch::stack({lo, hi}).to(torch::kCPU);
    min_id = range[0].item<int64_t>();
    max_id = range[1].item<int64_t>();
  }
  TESSERA_CHECK(min_id >= 0 && max_id < config_.vocab_size,
                "token ids must lie in [0, vocab_size=", config_.vocab_size, "), got [", min_id,
                ", ", max_id, "]");
  const int64_t b = tokens.size(0), t = tokens.size(1), d = config_.head_dim;
  const int64_t hq = local_q_heads(), hkv = local_kv_heads();

  auto freqs = positions.to(torch::kFloat).unsqueeze(-1) * inv_freq_;  // [b, t, d/2]
  auto emb = torch::cat({freqs, freqs}, -1).unsqueeze(2);              // [b, t, 1, d]
  auto cos = emb.cos(), sin = emb.sin();
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));

  torch::Tensor x = embed_.index_select(0, tokens.reshape({-1})).view({b, t, -1});
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    auto h = rms_norm(x, L.input_norm);
    auto q = sharding::column_parallel_linear(h, L.q_w, L.q_b).view({b, t, hq, d});
    auto k = sharding::column_parallel_linear(h, L.k_w, L.k_b).view({b, t, hkv, d});
    auto v = sharding::column_parallel_linear(h, L.v_w, L.v_b).view({b, t, hkv, d});
    q = rope(q, cos, sin);
    k = rope(k, cos, sin);
    cache.append(static_cast<int64_t>(l), k, v, positions);
    auto view = cache.layer(static_cast<int64_t>(l));
    auto [attn, lse] =
        kernels::attention(q, view.k, view.v, positions, view.positions, scale, L.window);
    x = x + sharding::row_parallel_linear(attn.view({b, t, hq * d}), L.o_w, comm_);
    h = rms_norm(x, L.post_norm);
    auto m = torch::silu(sharding::column_parallel_linear(h, L.gate_w)) *
             sharding::column_parallel_linear(h, L.up_w);
    x = x + sharding::row_parallel_linear(m, L.down_w, comm_);
  }
  return torch::linear(rms_norm(x, final_norm_), lm_head_);
}

}  // namespace tessera::models
