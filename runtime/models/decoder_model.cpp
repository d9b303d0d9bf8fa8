#include "runtime/models/decoder_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "common/error.h"
#include "kernels/fused/fused_cpu.h"
#include "kernels/gemm/small_m_gemm_cpu.h"
#include "kernels/ops/int8_linear_ops.h"

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
  // Decode-sized batches on the CPU: our kernel reads the weights in place, where BLAS would pack
  // all of them again at every step (kernels/gemm/small_m_gemm_cpu.h).
  constexpr int64_t kSmallM = 128;
  // (Inference only: these kernels record nothing for autograd.)
  const auto f32_cpu = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && !t.requires_grad();
  };
  if (x.dim() == 2 && x.size(0) >= 1 && x.size(0) <= kSmallM && f32_cpu(x) && x.stride(1) == 1 &&
      wt.dim() == 2 && f32_cpu(wt) && wt.stride(1) == 1 && x.size(1) == wt.size(0) &&
      (!b.defined() || (f32_cpu(b) && b.dim() == 1 && b.is_contiguous()))) {
    auto out = torch::empty({x.size(0), wt.size(1)}, x.options());
    kernels::small_m_gemm_cpu(x.data_ptr<float>(), x.stride(0), wt.data_ptr<float>(), wt.stride(0),
                              b.defined() ? b.data_ptr<float>() : nullptr, out.data_ptr<float>(),
                              out.stride(0), x.size(0), wt.size(1), x.size(1));
    return out;
  }
  return b.defined() ? torch::addmm(b, x, wt) : torch::mm(x, wt);
}

}  // namespace

DecoderModel::DecoderModel(const ModelConfig& config, const WeightLoader& w,
                           sharding::Communicator* comm, int64_t max_positions,
                           torch::Device device, WeightQuantization quantization,
                           torch::ScalarType dtype)
    : config_(config),
      comm_(comm),
      device_(device),
      rotary_(config, max_positions, device),
      quantization_(quantization),
      dtype_(dtype) {
  config_.validate();
  const int tp_rank = comm_ != nullptr ? comm_->rank() : 0;
  const int tp_size = comm_ != nullptr ? comm_->size() : 1;
  TESSERA_CHECK(dtype_ == torch::kFloat || dtype_ == torch::kDouble,
                "decoder dtype must be float32 or float64, got ", dtype_);
  TESSERA_CHECK(dtype_ == torch::kFloat || (device_.is_cpu() && tp_size == 1 &&
                                            quantization_ == WeightQuantization::kNone),
                "float64 decoder runs on the CPU, on one rank, without quantization (device ",
                device_, ", ", tp_size, " ranks)");
  layout_ = ShardLayout::make(config_, tp_rank, tp_size);
  const auto& c = config_;
  const int64_t h = c.hidden_size, d = c.head_dim, inter = c.intermediate_size;
  const int64_t q = c.num_attention_heads * d, kv = c.num_key_value_heads * d;
  const auto qs = times(layout_.q_heads, d), kvs = times(layout_.kv_heads, d), ms = layout_.mlp;
  const auto opts = torch::TensorOptions().dtype(dtype_).device(device_);
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

  // Gemma's RMSNorm multiplies by (1 + w): the offset is folded in at load (in float32, as
  // transformers adds it).
  auto norm = [&](const std::string& name) {
    auto t = whole(name, {h});
    if (c.norm_weight_offset) t.add_(1.0f);
    return t;
  };
  embed_ = whole("model.embed_tokens.weight", {c.vocab_size, h});
  final_norm_ = norm("model.norm.weight");
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
    L.input_norm = norm(p + "input_layernorm.weight");
    L.post_norm = norm(p + "post_attention_layernorm.weight");
    if (c.sandwich_norms) {
      L.pre_ff_norm = norm(p + "pre_feedforward_layernorm.weight");
      L.post_ff_norm = norm(p + "post_feedforward_layernorm.weight");
    }
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
    if (quantization_ == WeightQuantization::kInt8) {
      // Each layer as soon as it is loaded: one layer's float32 weights at a time.
      for (auto [wt, i8] :
           {std::pair{&L.qkv_w, &L.qkv_i8}, std::pair{&L.o_w, &L.o_i8},
            std::pair{&L.gate_up_w, &L.gate_up_i8}, std::pair{&L.down_w, &L.down_i8}}) {
        std::tie(i8->q, i8->scale) = kernels::quantize_int8_per_channel(wt->t().contiguous());
        *wt = torch::Tensor();
      }
    }
    layers_.push_back(std::move(L));
  }
  if (quantization_ == WeightQuantization::kInt8) {
    std::tie(embed_i8_.q, embed_i8_.scale) = kernels::quantize_int8_per_channel(embed_);
    if (c.tie_word_embeddings) {
      lm_i8_ = embed_i8_;
    } else {
      std::tie(lm_i8_.q, lm_i8_.scale) =
          kernels::quantize_int8_per_channel(lm_head_.t().contiguous());
    }
    embed_ = torch::Tensor();
    lm_head_ = torch::Tensor();
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

WeightQuantization parse_quantization(const std::string& text) {
  if (text == "none") return WeightQuantization::kNone;
  if (text == "int8") return WeightQuantization::kInt8;
  TESSERA_FAIL("--quantization must be none or int8, got '", text, "'");
}

int64_t DecoderModel::weight_bytes() const {
  int64_t total = 0;
  std::vector<const void*> seen;  // storages counted (a tied head shares the embedding's)
  auto add = [&](const torch::Tensor& t) {
    if (!t.defined()) return;
    const void* p = t.storage().data();
    if (std::find(seen.begin(), seen.end(), p) != seen.end()) return;
    seen.push_back(p);
    total += t.numel() * t.element_size();
  };
  for (const auto* t : {&embed_, &final_norm_, &lm_head_, &embed_i8_.q, &embed_i8_.scale, &lm_i8_.q,
                        &lm_i8_.scale}) {
    add(*t);
  }
  for (const auto& L : layers_) {
    for (const auto* t :
         {&L.input_norm, &L.post_norm, &L.pre_ff_norm, &L.post_ff_norm, &L.qkv_w, &L.qkv_b, &L.o_w,
          &L.o_b, &L.gate_up_w, &L.gate_up_b, &L.down_w, &L.down_b}) {
      add(*t);
    }
    for (const auto* i8 : {&L.qkv_i8, &L.o_i8, &L.gate_up_i8, &L.down_i8}) {
      add(i8->q);
      add(i8->scale);
    }
  }
  return total;
}

torch::Tensor DecoderModel::linear(const torch::Tensor& x, const torch::Tensor& w,
                                   const Layer::Int8& i8, const torch::Tensor& b) {
  return i8.q.defined() ? kernels::int8_linear(x, i8.q, i8.scale, b) : dense(x, w, b);
}

// The fused CPU row kernels apply to float32 rows in memory on the CPU.
static bool fused_rows_apply(const torch::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 2 &&
         x.is_contiguous() && !x.requires_grad();  // inference only: nothing recorded for autograd
}

torch::Tensor DecoderModel::rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
  // transformers: x * rsqrt(mean(x^2) + eps) * w, in float32.
  if (fused_rows_apply(x) && w.scalar_type() == torch::kFloat && w.is_contiguous() &&
      !w.requires_grad()) {
    auto out = torch::empty_like(x);
    kernels::rms_norm_cpu(x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(),
                          x.size(0), x.size(1), static_cast<float>(config_.rms_norm_eps));
    return out;
  }
  auto var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * torch::rsqrt(var + config_.rms_norm_eps) * w;
}

torch::Tensor DecoderModel::mlp_activation(const torch::Tensor& gate_up) const {
  const int64_t n = gate_up.size(-1) / 2;
  auto gate = gate_up.narrow(-1, 0, n), up = gate_up.narrow(-1, n, n);
  switch (config_.hidden_act) {
    case Activation::kSilu:
      if (fused_rows_apply(gate_up)) {
        auto out = torch::empty({gate_up.size(0), n}, gate_up.options());
        kernels::silu_mul_cpu(gate_up.data_ptr<float>(), out.data_ptr<float>(), gate_up.size(0), n);
        return out;
      }
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
  TESSERA_CHECK(attention.logit_softcap() == config_.attn_logit_softcapping,
                "the attention backend soft-caps scores at ", attention.logit_softcap(),
                ", the model's attn_logit_softcapping is ", config_.attn_logit_softcapping);
  if (merged_ >= 0 && in.lora_ids.defined()) {
    const auto ids = in.lora_ids.to(torch::kCPU, torch::kInt).contiguous();
    for (int64_t s = 0; s < ids.numel(); ++s) {
      TESSERA_CHECK(ids.data_ptr<int32_t>()[s] < 0, "sequence ", s, " names LoRA adapter ",
                    ids.data_ptr<int32_t>()[s], " while adapter ", merged_,
                    " is merged into the weights");
    }
  }
  auto [cos, sin] = rotary_.cos_sin(in.positions, in.seq_lens);

  const auto tok = in.tokens.to(device_);
  torch::Tensor x = embed_i8_.q.defined() ? embed_i8_.q.index_select(0, tok).to(torch::kFloat) *
                                                embed_i8_.scale.index_select(0, tok).unsqueeze(1)
                                          : embed_.index_select(0, tok);
  if (config_.embedding_multiplier != 1.0f) x = x * config_.embedding_multiplier;
  const bool sandwich = config_.sandwich_norms;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    auto xn = rms_norm(x, L.input_norm);
    auto qkv = linear(xn, L.qkv_w, L.qkv_i8, L.qkv_b);
    for (auto m : {LoraModule::kQ, LoraModule::kK, LoraModule::kV}) apply_lora(l, m, qkv, xn, in);
    auto q = RotaryEmbedding::apply(qkv.narrow(1, 0, hq * d).view({t, hq, d}), cos, sin);
    auto k = RotaryEmbedding::apply(qkv.narrow(1, hq * d, hkv * d).view({t, hkv, d}), cos, sin);
    auto v = qkv.narrow(1, (hq + hkv) * d, hkv * d).view({t, hkv, d});
    auto attn = attention.attend(static_cast<int64_t>(l), q, k, v);
    auto o = linear(attn, L.o_w, L.o_i8);
    apply_lora(l, LoraModule::kO, o, attn, in);
    auto attn_out = all_reduce(o, L.o_b);
    if (sandwich) attn_out = rms_norm(attn_out, L.post_norm);
    x.add_(attn_out);
    auto xp = rms_norm(x, sandwich ? L.pre_ff_norm : L.post_norm);
    auto gate_up = linear(xp, L.gate_up_w, L.gate_up_i8, L.gate_up_b);
    for (auto m : {LoraModule::kGate, LoraModule::kUp}) apply_lora(l, m, gate_up, xp, in);
    auto act = mlp_activation(gate_up);
    auto down = linear(act, L.down_w, L.down_i8);
    apply_lora(l, LoraModule::kDown, down, act, in);
    auto mlp_out = all_reduce(down, L.down_b);
    if (sandwich) mlp_out = rms_norm(mlp_out, L.post_ff_norm);
    x.add_(mlp_out);
  }
  return x;
}

torch::Tensor DecoderModel::logits(const torch::Tensor& hidden_rows) const {
  auto logits = linear(rms_norm(hidden_rows, final_norm_), lm_head_, lm_i8_);
  if (const double cap = config_.final_logit_softcapping; cap > 0) {
    logits = torch::tanh(logits / cap) * cap;
  }
  return logits;
}

DecoderModel::LoraPlace DecoderModel::lora_place(LoraModule m) const {
  const ModelConfig& c = config_;
  const int64_t d = c.head_dim, h = c.hidden_size;
  const auto qs = times(layout_.q_heads, d), kvs = times(layout_.kv_heads, d), ms = layout_.mlp;
  const sharding::ShardRange all_h{0, h};
  switch (m) {
    case LoraModule::kQ:
      return {0, qs.size, qs, all_h};
    case LoraModule::kK:
      return {qs.size, kvs.size, kvs, all_h};
    case LoraModule::kV:
      return {qs.size + kvs.size, kvs.size, kvs, all_h};
    case LoraModule::kO:
      return {0, h, all_h, qs};
    case LoraModule::kGate:
      return {0, ms.size, ms, all_h};
    case LoraModule::kUp:
      return {ms.size, ms.size, ms, all_h};
    case LoraModule::kDown:
      return {0, h, all_h, ms};
  }
  TESSERA_FAIL("unknown LoRA module");
}

int DecoderModel::add_lora(const LoraAdapter& adapter) {
  TESSERA_CHECK(static_cast<int64_t>(adapter.layers.size()) == config_.num_hidden_layers,
                "LoRA adapter '", adapter.dir, "' has ", adapter.layers.size(),
                " layers, the model ", config_.num_hidden_layers);
  TESSERA_CHECK(merged_ < 0, "LoRA adapter '", adapter.dir, "' added while adapter ", merged_,
                " is merged");
  for (const auto& other : loras_) {
    TESSERA_CHECK(adapter.name.empty() || other.name != adapter.name, "LoRA adapter name '",
                  adapter.name, "' is given twice");
  }
  LocalLora local;
  local.name = adapter.name;
  local.r = adapter.r;
  local.scale = adapter.scale;
  local.layers.resize(adapter.layers.size());
  for (size_t l = 0; l < adapter.layers.size(); ++l) {
    for (int m = 0; m < kNumLoraModules; ++m) {
      const auto& pair = adapter.layers[l][m];
      if (!pair.a.defined()) continue;
      const auto place = lora_place(static_cast<LoraModule>(m));
      local.layers[l][m].a = pair.a.narrow(1, place.in_cols.begin, place.in_cols.size)
                                 .contiguous()
                                 .to(device_, dtype_);
      local.layers[l][m].b = pair.b.narrow(0, place.out_rows.begin, place.out_rows.size)
                                 .contiguous()
                                 .to(device_, dtype_);
    }
  }
  loras_.push_back(std::move(local));
  rebuild_lora_stacks();
  return static_cast<int>(loras_.size()) - 1;
}

void DecoderModel::rebuild_lora_stacks() {
  const int64_t n = static_cast<int64_t>(loras_.size());
  lora_stacks_.assign(layers_.size(), {});
  const auto opts = torch::TensorOptions().dtype(dtype_).device(device_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    for (int m = 0; m < kNumLoraModules; ++m) {
      int64_t r_max = 0;
      for (const auto& a : loras_) {
        if (a.layers[l][m].a.defined()) r_max = std::max(r_max, a.r);
      }
      if (r_max == 0) continue;
      const auto place = lora_place(static_cast<LoraModule>(m));
      const int64_t in = place.in_cols.size, out = place.cols;
      kernels::LoraStack st;
      st.a = torch::zeros({n, r_max, in}, opts);
      st.b = torch::zeros({n, out, r_max}, opts);
      std::vector<int32_t> ranks(n, 0);
      std::vector<float> scales(n, 0.f);
      for (int64_t i = 0; i < n; ++i) {
        const auto& p = loras_[i].layers[l][m];
        scales[i] = static_cast<float>(loras_[i].scale);
        if (!p.a.defined()) continue;
        ranks[i] = static_cast<int32_t>(loras_[i].r);
        st.a[i].narrow(0, 0, loras_[i].r).copy_(p.a);
        st.b[i].narrow(1, 0, loras_[i].r).copy_(p.b);
      }
      st.ranks = torch::tensor(ranks, torch::kInt).to(device_);
      st.scales = torch::tensor(scales, torch::kFloat).to(device_);
      lora_stacks_[l][m] = std::move(st);
    }
  }
}

void DecoderModel::apply_lora(int64_t l, LoraModule m, torch::Tensor y, const torch::Tensor& x,
                              const ForwardInputs& in) const {
  if (loras_.empty() || !in.lora_indptr.defined()) return;
  const auto& st = lora_stacks_[l][static_cast<int>(m)];
  if (!st.a.defined()) return;
  const auto place = lora_place(m);
  auto out = y.narrow(1, place.col, place.cols);
  TESSERA_CHECK(in.lora_ids.defined() && in.lora_ids.dim() == 1, "lora_ids must be int32 [S]");
  // -1 and indices < num_loras() are the kernel's to check (on the CPU, before any read).
  const auto indptr = in.lora_indptr.to(device_), ids = in.lora_ids.to(device_);
  kernels::lora_sgmv_(out, x, st, indptr, ids);
}

void DecoderModel::merge_lora(int index, double sign) {
  TESSERA_CHECK(index >= 0 && index < num_loras(), "LoRA index ", index, " is not in [0, ",
                num_loras(), ")");
  TESSERA_CHECK(quantization_ == WeightQuantization::kNone, "LoRA adapter '", loras_[index].name,
                "' cannot be merged into int8 weights (it runs unmerged)");
  if (sign > 0) {
    TESSERA_CHECK(merged_ < 0, "LoRA adapter ", index, " cannot be merged: adapter ", merged_,
                  " is merged");
  } else {
    TESSERA_CHECK(merged_ == index, "LoRA adapter ", index, " is not merged");
  }
  const auto& a = loras_[index];
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = layers_[l];
    for (int m = 0; m < kNumLoraModules; ++m) {
      const auto& p = a.layers[l][m];
      if (!p.a.defined()) continue;
      const auto mod = static_cast<LoraModule>(m);
      torch::Tensor& w = mod == LoraModule::kO                                  ? L.o_w
                         : mod == LoraModule::kDown                             ? L.down_w
                         : (mod == LoraModule::kGate || mod == LoraModule::kUp) ? L.gate_up_w
                                                                                : L.qkv_w;
      const auto place = lora_place(mod);
      // Input-major: W^T [in, out] += scale * A^T B^T, in float64 and rounded once.
      auto part = w.narrow(1, place.col, place.cols);
      const auto delta = torch::mm(p.a.t().to(torch::kDouble), p.b.t().to(torch::kDouble));
      part.copy_(part.to(torch::kDouble).add_(delta, sign * a.scale));
    }
  }
  merged_ = sign > 0 ? index : -1;
}

void DecoderModel::merge_lora(int index) { merge_lora(index, 1.0); }
void DecoderModel::unmerge_lora(int index) { merge_lora(index, -1.0); }

std::map<std::string, torch::Tensor> DecoderModel::linear_weights() const {
  std::map<std::string, torch::Tensor> out;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    if (quantization_ != WeightQuantization::kNone) continue;
    out[p + "qkv_w"] = layers_[l].qkv_w;
    out[p + "o_w"] = layers_[l].o_w;
    out[p + "gate_up_w"] = layers_[l].gate_up_w;
    out[p + "down_w"] = layers_[l].down_w;
  }
  return out;
}

}  // namespace tessera::models
