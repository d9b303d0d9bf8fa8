#include "runtime/models/decoder_model.h"

#include <cmath>
#include <string>

#include "common/error.h"

namespace tessera::models {

ShardLayout ShardLayout::make(const ModelConfig& c, int tp_rank, int tp_size) {
  ShardLayout s;
  s.tp_rank = tp_rank;
  s.tp_size = tp_size;
  s.dcp_size = c.decode_context_parallel(tp_size);
  s.dcp_rank = tp_rank % s.dcp_size;
  s.q_heads = sharding::even_shard(c.num_attention_heads, tp_rank, tp_size, "num_attention_heads");
  s.kv_heads = s.dcp_size > 1 ? sharding::ShardRange{tp_rank / s.dcp_size, 1}
                              : sharding::even_shard(c.num_key_value_heads, tp_rank, tp_size,
                                                     "num_key_value_heads");
  s.mlp = sharding::even_shard(c.intermediate_size, tp_rank, tp_size, "intermediate_size");
  return s;
}

namespace {

sharding::ShardRange times(sharding::ShardRange r, int64_t k) { return {r.begin * k, r.size * k}; }

// x [T, in] @ wt [in, out] (+ b [out]). Weights are stored transposed (input-major): OpenBLAS'
// sgemm then packs them faster than the [out, in] layout torch::linear passes as transposed.
torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& wt, const torch::Tensor& b = {}) {
  return b.defined() ? torch::addmm(b, x, wt) : torch::mm(x, wt);
}

}  // namespace

DecoderModel::DecoderModel(const ModelConfig& config, const WeightLoader& w,
                           sharding::Communicator* comm, int64_t max_positions,
                           torch::Device device)
    : config_(config), comm_(comm), device_(device), rotary_(config, max_positions, device) {
  config_.validate();
  const int tp_rank = comm_ != nullptr ? comm_->rank() : 0;
  const int tp_size = comm_ != nullptr ? comm_->size() : 1;
  layout_ = ShardLayout::make(config_, tp_rank, tp_size);
  const auto& c = config_;
  const int64_t h = c.hidden_size, d = c.head_dim, inter = c.intermediate_size;
  const int64_t q = c.num_attention_heads * d, kv = c.num_key_value_heads * d;
  const auto qs = times(layout_.q_heads, d), kvs = times(layout_.kv_heads, d), ms = layout_.mlp;
  const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device_);
  // Every tensor goes from the checkpoint straight into its final place (fused, input-major, on
  // the device), streamed under the loader's memory budget: no whole-tensor temporaries.
  auto whole = [&](const std::string& name, std::vector<int64_t> shape) {
    auto t = torch::empty(shape, opts);
    w.load_into(name, shape, t);
    return t;
  };
  // Columns [col, col + range.size) of an input-major dst [in, out] receive rows `range` of the
  // stored [rows, in] weight.
  auto rows_into = [&](const torch::Tensor& dst, int64_t col, const std::string& name,
                       std::vector<int64_t> shape, sharding::ShardRange range) {
    w.load_into(name, shape, 0, range, dst.narrow(1, col, range.size).t());
  };
  auto vec_into = [&](const torch::Tensor& dst, int64_t at, const std::string& name, int64_t n,
                      sharding::ShardRange range) {
    w.load_into(name, {n}, 0, range, dst.narrow(0, at, range.size));
  };
  const int64_t ql = qs.size, kvl = kvs.size, ml = ms.size;

  embed_ = whole("model.embed_tokens.weight", {c.vocab_size, h});
  final_norm_ = whole("model.norm.weight", {h});
  if (c.tie_word_embeddings) {
    lm_head_ = embed_.t().contiguous();
  } else {
    TESSERA_CHECK(w.has("lm_head.weight"),
                  "checkpoint has no 'lm_head.weight' and tie_word_embeddings is false");
    lm_head_ = torch::empty({h, c.vocab_size}, opts);
    rows_into(lm_head_, 0, "lm_head.weight", {c.vocab_size, h}, {0, c.vocab_size});
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string a = p + "self_attn.", m = p + "mlp.";
    Layer L;
    L.input_norm = whole(p + "input_layernorm.weight", {h});
    L.post_norm = whole(p + "post_attention_layernorm.weight", {h});
    // Fused at load: one GEMM for q, k and v, one for gate and up.
    L.qkv_w = torch::empty({h, ql + 2 * kvl}, opts);
    rows_into(L.qkv_w, 0, a + "q_proj.weight", {q, h}, qs);
    rows_into(L.qkv_w, ql, a + "k_proj.weight", {kv, h}, kvs);
    rows_into(L.qkv_w, ql + kvl, a + "v_proj.weight", {kv, h}, kvs);
    if (c.qkv_bias) {
      L.qkv_b = torch::empty({ql + 2 * kvl}, opts);
      vec_into(L.qkv_b, 0, a + "q_proj.bias", q, qs);
      vec_into(L.qkv_b, ql, a + "k_proj.bias", kv, kvs);
      vec_into(L.qkv_b, ql + kvl, a + "v_proj.bias", kv, kvs);
    }
    L.o_w = torch::empty({ql, h}, opts);
    w.load_into(a + "o_proj.weight", {h, q}, 1, qs, L.o_w.t());
    if (c.o_bias) L.o_b = whole(a + "o_proj.bias", {h});
    L.gate_up_w = torch::empty({h, 2 * ml}, opts);
    rows_into(L.gate_up_w, 0, m + "gate_proj.weight", {inter, h}, ms);
    rows_into(L.gate_up_w, ml, m + "up_proj.weight", {inter, h}, ms);
    L.down_w = torch::empty({ml, h}, opts);
    w.load_into(m + "down_proj.weight", {h, inter}, 1, ms, L.down_w.t());
    if (c.mlp_bias) {
      L.gate_up_b = torch::empty({2 * ml}, opts);
      vec_into(L.gate_up_b, 0, m + "gate_proj.bias", inter, ms);
      vec_into(L.gate_up_b, ml, m + "up_proj.bias", inter, ms);
      L.down_b = whole(m + "down_proj.bias", {h});
    }
    layers_.push_back(std::move(L));
  }
  w.finish_progress();
  // A tensor the config does not account for means the arithmetic would differ from the
  // checkpoint's: refuse rather than compute something else.
  std::vector<std::string> ignorable = {"rotary_emb.inv_freq"};
  if (c.tie_word_embeddings) ignorable.push_back("lm_head.weight");
  const auto unused = w.unused(ignorable);
  TESSERA_CHECK(unused.empty(), "checkpoint tensor '", unused.empty() ? "" : unused.front(),
                "' is not used by a ", c.model_type, " model with this config (", unused.size(),
                " unused tensors; attention_bias / mlp_bias / "
                "tie_word_embeddings disagree with the weights?)");
}

int64_t DecoderModel::weight_bytes() const {
  int64_t total = embed_.numel() + final_norm_.numel() + lm_head_.numel();
  for (const auto& L : layers_) {
    for (const auto* t : {&L.input_norm, &L.post_norm, &L.qkv_w, &L.qkv_b, &L.o_w, &L.o_b,
                          &L.gate_up_w, &L.gate_up_b, &L.down_w, &L.down_b}) {
      if (t->defined()) total += t->numel();
    }
  }
  return total * static_cast<int64_t>(sizeof(float));
}

torch::Tensor DecoderModel::rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
  // transformers: x * rsqrt(mean(x^2) + eps) * w, in float32.
  auto var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * torch::rsqrt(var + config_.rms_norm_eps) * w;
}

torch::Tensor DecoderModel::mlp_activation(const torch::Tensor& gate_up) const {
  const int64_t n = gate_up.size(-1) / 2;
  auto gate = gate_up.narrow(-1, 0, n), up = gate_up.narrow(-1, n, n);
  switch (config_.hidden_act) {
    case Activation::kSilu:
      return torch::silu(gate) * up;
    case Activation::kGelu:
      return torch::gelu(gate) * up;
    case Activation::kGeluTanh:
      return torch::gelu(gate, "tanh") * up;
  }
  TESSERA_FAIL("unknown activation");
}

torch::Tensor DecoderModel::all_reduce(torch::Tensor partial, const torch::Tensor& bias) const {
  if (comm_ != nullptr && comm_->size() > 1) comm_->all_reduce(partial, sharding::ReduceOp::kSum);
  if (bias.defined()) partial.add_(bias);
  return partial;
}

torch::Tensor DecoderModel::hidden_states(const ForwardInputs& in,
                                          AttentionBackend& attention) const {
  TESSERA_CHECK(in.tokens.dim() == 1 && in.tokens.scalar_type() == torch::kLong,
                "tokens must be int64 [T], got ", in.tokens.scalar_type(), " ", in.tokens.sizes());
  TESSERA_CHECK(in.positions.sizes() == in.tokens.sizes(), "positions shape ", in.positions.sizes(),
                " must equal tokens shape ", in.tokens.sizes());
  const int64_t t = in.tokens.size(0), d = config_.head_dim;
  const int64_t hq = local_q_heads(), hkv = local_kv_heads();
  auto [cos, sin] = rotary_.cos_sin(in.positions, in.seq_lens);

  torch::Tensor x = embed_.index_select(0, in.tokens.to(device_));
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    auto qkv = dense(rms_norm(x, L.input_norm), L.qkv_w, L.qkv_b);
    auto q = RotaryEmbedding::apply(qkv.narrow(1, 0, hq * d).view({t, hq, d}), cos, sin);
    auto k = RotaryEmbedding::apply(qkv.narrow(1, hq * d, hkv * d).view({t, hkv, d}), cos, sin);
    auto v = qkv.narrow(1, (hq + hkv) * d, hkv * d).view({t, hkv, d});
    auto attn = attention.attend(static_cast<int64_t>(l), q, k, v);
    x = x + all_reduce(dense(attn, L.o_w), L.o_b);
    auto gate_up = dense(rms_norm(x, L.post_norm), L.gate_up_w, L.gate_up_b);
    x = x + all_reduce(dense(mlp_activation(gate_up), L.down_w), L.down_b);
  }
  return x;
}

torch::Tensor DecoderModel::logits(const torch::Tensor& hidden_rows) const {
  return dense(rms_norm(hidden_rows, final_norm_), lm_head_);
}

}  // namespace tessera::models
