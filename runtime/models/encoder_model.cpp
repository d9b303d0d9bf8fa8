#include "runtime/models/encoder_model.h"

#include <algorithm>
#include <map>
#include <string>

#include "common/error.h"

namespace tessera::models {

namespace {

// x [T, in] @ wt [in, out] (+ b [out]): weights are stored input-major, as the decoder's are.
torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& wt, const torch::Tensor& b = {}) {
  return b.defined() ? torch::addmm(b, x, wt) : torch::mm(x, wt);
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

EncoderBatch EncoderBatch::pack(const std::vector<std::vector<int32_t>>& ids,
                                const std::vector<std::vector<int32_t>>& types) {
  TESSERA_CHECK(types.empty() || types.size() == ids.size(), "token types for ", types.size(),
                " inputs, but there are ", ids.size());
  int64_t total = 0;
  for (const auto& s : ids) total += static_cast<int64_t>(s.size());
  EncoderBatch b;
  b.tokens = torch::empty({total}, torch::kLong);
  b.token_types = torch::zeros({total}, torch::kLong);
  b.positions = torch::empty({total}, torch::kLong);
  b.cu_seqlens = torch::empty({static_cast<int64_t>(ids.size()) + 1}, torch::kInt);
  auto* tok = b.tokens.data_ptr<int64_t>();
  auto* typ = b.token_types.data_ptr<int64_t>();
  auto* pos = b.positions.data_ptr<int64_t>();
  auto* cu = b.cu_seqlens.data_ptr<int32_t>();
  cu[0] = 0;
  int64_t n = 0;
  for (size_t s = 0; s < ids.size(); ++s) {
    TESSERA_CHECK(types.empty() || types[s].size() == ids[s].size(), "input ", s, " has ",
                  ids[s].size(), " tokens but ", types[s].size(), " token types");
    for (size_t i = 0; i < ids[s].size(); ++i, ++n) {
      tok[n] = ids[s][i];
      typ[n] = types.empty() ? 0 : types[s][i];
      pos[n] = static_cast<int64_t>(i);
    }
    TESSERA_CHECK(n <= INT32_MAX, "a batch holds at most 2^31 - 1 tokens");
    cu[s + 1] = static_cast<int32_t>(n);
  }
  return b;
}

EncoderModel::EncoderModel(const EncoderConfig& config, const WeightLoader& w,
                           sharding::Communicator* tp, torch::Device device)
    : config_(config), tp_(tp), device_(device) {
  config_.validate();
  const int tp_rank = tp_ != nullptr ? tp_->rank() : 0;
  const int tp_size = tp_ != nullptr ? tp_->size() : 1;
  config_.check_tensor_parallel(tp_size);
  const auto& c = config_;
  heads_ = sharding::even_shard(c.num_attention_heads, tp_rank, tp_size, "num_attention_heads");
  mlp_ = sharding::even_shard(c.intermediate_size, tp_rank, tp_size, "intermediate_size");
  attention_ = make_encoder_attention(c.attention);
  const int64_t h = c.hidden_size, d = c.head_dim, inter = c.intermediate_size;
  const int64_t ql = heads_.size * d, il = mlp_.size;
  const sharding::ShardRange qs{heads_.begin * d, ql};
  auto at = [](sharding::ShardRange r, int64_t offset) {
    return sharding::ShardRange{r.begin + offset, r.size};
  };
  const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device_);
  // Each tensor goes straight into its final place (streamed under the loader's budget).
  auto whole = [&](const std::string& name, std::vector<int64_t> shape) {
    auto t = torch::empty(shape, opts);
    w.load_into(name, shape, t);
    return t;
  };
  auto maybe = [&](bool present, const std::string& name, std::vector<int64_t> shape) {
    return present ? whole(name, std::move(shape)) : torch::Tensor();
  };
  // dst [in, out]: its [out, in] view receives rows `range` of the stored [rows, in] weight.
  auto rows_into = [&](const torch::Tensor& dst_in_out, const std::string& name,
                       std::vector<int64_t> shape, sharding::ShardRange range) {
    w.load_into(name, shape, 0, range, dst_in_out.t());
  };
  auto vec_into = [&](const torch::Tensor& dst, const std::string& name, int64_t n,
                      sharding::ShardRange range) { w.load_into(name, {n}, 0, range, dst); };

  std::vector<std::string> ignorable_prefixes;
  if (c.family == EncoderFamily::kBert) {
    const std::string p = w.has("bert.embeddings.word_embeddings.weight") ? "bert." : "";
    word_ = whole(p + "embeddings.word_embeddings.weight", {c.vocab_size, h});
    position_ = whole(p + "embeddings.position_embeddings.weight", {c.max_position_embeddings, h});
    token_type_ = maybe(c.type_vocab_size > 0, p + "embeddings.token_type_embeddings.weight",
                        {c.type_vocab_size, h});
    emb_norm_w_ = whole(p + "embeddings.LayerNorm.weight", {h});
    emb_norm_b_ = whole(p + "embeddings.LayerNorm.bias", {h});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string lp = p + "encoder.layer." + std::to_string(l) + ".";
      const std::string a = lp + "attention.self.";
      Layer L;
      L.qkv_w = torch::empty({h, 3 * ql}, opts);
      L.qkv_b = torch::empty({3 * ql}, opts);
      int k = 0;
      for (const char* part : {"query", "key", "value"}) {
        rows_into(L.qkv_w.narrow(1, k * ql, ql), a + part + ".weight", {h, h}, qs);
        vec_into(L.qkv_b.narrow(0, k * ql, ql), a + part + ".bias", h, qs);
        ++k;
      }
      L.o_w = torch::empty({ql, h}, opts);
      w.load_into(lp + "attention.output.dense.weight", {h, h}, 1, qs, L.o_w.t());
      L.o_b = whole(lp + "attention.output.dense.bias", {h});
      L.attn_norm_w = whole(lp + "attention.output.LayerNorm.weight", {h});
      L.attn_norm_b = whole(lp + "attention.output.LayerNorm.bias", {h});
      L.up_w = torch::empty({h, il}, opts);
      rows_into(L.up_w, lp + "intermediate.dense.weight", {inter, h}, mlp_);
      L.up_b = torch::empty({il}, opts);
      vec_into(L.up_b, lp + "intermediate.dense.bias", inter, mlp_);
      L.down_w = torch::empty({il, h}, opts);
      w.load_into(lp + "output.dense.weight", {h, inter}, 1, mlp_, L.down_w.t());
      L.down_b = whole(lp + "output.dense.bias", {h});
      L.mlp_norm_w = whole(lp + "output.LayerNorm.weight", {h});
      L.mlp_norm_b = whole(lp + "output.LayerNorm.bias", {h});
      layers_.push_back(std::move(L));
    }
    if (c.has_classifier) {
      pool_w_ = torch::empty({h, h}, opts);
      rows_into(pool_w_, p + "pooler.dense.weight", {h, h}, {0, h});
      pool_b_ = whole(p + "pooler.dense.bias", {h});
    } else {
      ignorable_prefixes.push_back(p + "pooler.");
    }
    ignorable_prefixes.push_back(p + "embeddings.position_ids");
    ignorable_prefixes.push_back("cls.");  // masked-LM / next-sentence heads
  } else {
    const std::string p = w.has("model.embeddings.tok_embeddings.weight") ? "model." : "";
    const bool nb = c.norm_bias;
    word_ = whole(p + "embeddings.tok_embeddings.weight", {c.vocab_size, h});
    emb_norm_w_ = whole(p + "embeddings.norm.weight", {h});
    emb_norm_b_ = maybe(nb, p + "embeddings.norm.bias", {h});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const std::string lp = p + "layers." + std::to_string(l) + ".";
      Layer L;
      if (l > 0 || c.first_attn_norm) {
        L.attn_norm_w = whole(lp + "attn_norm.weight", {h});
        L.attn_norm_b = maybe(nb, lp + "attn_norm.bias", {h});
      }
      // Wqkv [3 hidden, hidden]: the q, k and v rows of this rank's heads.
      L.qkv_w = torch::empty({h, 3 * ql}, opts);
      if (c.attention_bias) L.qkv_b = torch::empty({3 * ql}, opts);
      for (int k = 0; k < 3; ++k) {
        rows_into(L.qkv_w.narrow(1, k * ql, ql), lp + "attn.Wqkv.weight", {3 * h, h},
                  at(qs, k * h));
        if (c.attention_bias) {
          vec_into(L.qkv_b.narrow(0, k * ql, ql), lp + "attn.Wqkv.bias", 3 * h, at(qs, k * h));
        }
      }
      L.o_w = torch::empty({ql, h}, opts);
      w.load_into(lp + "attn.Wo.weight", {h, h}, 1, qs, L.o_w.t());
      L.o_b = maybe(c.attention_bias, lp + "attn.Wo.bias", {h});
      L.mlp_norm_w = whole(lp + "mlp_norm.weight", {h});
      L.mlp_norm_b = maybe(nb, lp + "mlp_norm.bias", {h});
      // Wi [2 inter, hidden]: rows [input | gate]; this rank's columns of each half.
      L.up_w = torch::empty({h, 2 * il}, opts);
      rows_into(L.up_w.narrow(1, 0, il), lp + "mlp.Wi.weight", {2 * inter, h}, mlp_);
      rows_into(L.up_w.narrow(1, il, il), lp + "mlp.Wi.weight", {2 * inter, h}, at(mlp_, inter));
      if (c.mlp_bias) {
        L.up_b = torch::empty({2 * il}, opts);
        vec_into(L.up_b.narrow(0, 0, il), lp + "mlp.Wi.bias", 2 * inter, mlp_);
        vec_into(L.up_b.narrow(0, il, il), lp + "mlp.Wi.bias", 2 * inter, at(mlp_, inter));
      }
      L.down_w = torch::empty({il, h}, opts);
      w.load_into(lp + "mlp.Wo.weight", {h, inter}, 1, mlp_, L.down_w.t());
      L.down_b = maybe(c.mlp_bias, lp + "mlp.Wo.bias", {h});
      layers_.push_back(std::move(L));
    }
    final_norm_w_ = whole(p + "final_norm.weight", {h});
    final_norm_b_ = maybe(nb, p + "final_norm.bias", {h});
    if (c.has_classifier) {
      pool_w_ = torch::empty({h, h}, opts);
      rows_into(pool_w_, "head.dense.weight", {h, h}, {0, h});
      pool_b_ = maybe(c.classifier_bias, "head.dense.bias", {h});
      head_norm_w_ = whole("head.norm.weight", {h});
      head_norm_b_ = maybe(nb, "head.norm.bias", {h});
    } else {
      ignorable_prefixes.push_back("head.");  // masked-LM head and decoder
      ignorable_prefixes.push_back("decoder.");
    }
  }
  if (c.has_classifier) {
    cls_w_ = torch::empty({h, c.num_labels}, opts);
    rows_into(cls_w_, "classifier.weight", {c.num_labels, h}, {0, c.num_labels});
    cls_b_ = whole("classifier.bias", {c.num_labels});
  } else {
    ignorable_prefixes.push_back("classifier.");
  }
  if (c.rotary) {
    std::map<double, int> by_theta;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const double theta = c.layer_rope_theta[l];
      if (!by_theta.count(theta)) {
        ModelConfig rc;
        rc.head_dim = d;
        rc.rope_theta = theta;
        rc.max_position_embeddings = c.max_position_embeddings;
        by_theta[theta] = static_cast<int>(ropes_.size());
        ropes_.emplace_back(rc, c.max_position_embeddings, device_);
      }
      layer_rope_.push_back(by_theta[theta]);
    }
  }
  w.finish_progress();
  // A tensor the config does not account for means the arithmetic would differ from the
  // checkpoint's: refuse rather than compute something else.
  std::vector<std::string> unused;
  for (const auto& name : w.unused()) {
    bool skip = false;
    for (const auto& prefix : ignorable_prefixes) skip = skip || starts_with(name, prefix);
    if (!skip) unused.push_back(name);
  }
  TESSERA_CHECK(unused.empty(), "checkpoint tensor '", unused.empty() ? "" : unused.front(),
                "' is not used by a ", c.model_type, " model with this config (", unused.size(),
                " unused tensors; architectures / norm_bias / attention_bias / mlp_bias disagree "
                "with the weights?)");
}

int64_t EncoderModel::weight_bytes() const {
  int64_t n = 0;
  auto add = [&](const torch::Tensor& t) {
    if (t.defined()) n += t.numel() * static_cast<int64_t>(t.element_size());
  };
  for (const auto* t :
       {&word_, &position_, &token_type_, &emb_norm_w_, &emb_norm_b_, &final_norm_w_,
        &final_norm_b_, &pool_w_, &pool_b_, &head_norm_w_, &head_norm_b_, &cls_w_, &cls_b_}) {
    add(*t);
  }
  for (const auto& L : layers_) {
    for (const auto* t : {&L.attn_norm_w, &L.attn_norm_b, &L.qkv_w, &L.qkv_b, &L.o_w, &L.o_b,
                          &L.mlp_norm_w, &L.mlp_norm_b, &L.up_w, &L.up_b, &L.down_w, &L.down_b}) {
      add(*t);
    }
  }
  return n;
}

void EncoderModel::set_attention(const EncoderAttentionChoice& choice) {
  config_.attention = choice;
  config_.validate();
  attention_ = make_encoder_attention(choice);
}

torch::Tensor EncoderModel::norm(const torch::Tensor& x, const torch::Tensor& w,
                                 const torch::Tensor& b) const {
  return torch::layer_norm(x, {config_.hidden_size}, w, b, config_.norm_eps);
}

torch::Tensor EncoderModel::activation(const torch::Tensor& x, Activation act) const {
  switch (act) {
    case Activation::kGelu:
      return torch::gelu(x);
    case Activation::kGeluTanh:
      return torch::gelu(x, "tanh");
    case Activation::kSilu:
      return torch::silu(x);
  }
  TESSERA_FAIL("unknown activation");
}

torch::Tensor EncoderModel::all_reduce(torch::Tensor partial, const torch::Tensor& bias) const {
  if (tp_ != nullptr && tp_->size() > 1) tp_->all_reduce(partial, sharding::ReduceOp::kSum);
  if (bias.defined()) partial.add_(bias);
  return partial;
}

void EncoderModel::check_inputs(const EncoderBatch& b) const {
  const auto& c = config_;
  TESSERA_CHECK(b.tokens.dim() == 1 && b.tokens.scalar_type() == torch::kLong &&
                    b.positions.sizes() == b.tokens.sizes() &&
                    b.token_types.sizes() == b.tokens.sizes(),
                "encoder batch: tokens, positions and token types must be int64 [T]");
  TESSERA_CHECK(b.cu_seqlens.device().is_cpu() && b.cu_seqlens.scalar_type() == torch::kInt &&
                    b.cu_seqlens.dim() == 1 && b.cu_seqlens.numel() >= 1,
                "encoder batch: cu_seqlens must be CPU int32 [B + 1]");
  const auto* cu = b.cu_seqlens.data_ptr<int32_t>();
  const int64_t n = b.num_seqs();
  TESSERA_CHECK(cu[0] == 0 && cu[n] == b.tokens.numel(),
                "encoder batch: cu_seqlens must run from 0", " to the token count ",
                b.tokens.numel());
  for (int64_t s = 0; s < n; ++s) {
    const int64_t len = cu[s + 1] - cu[s];
    TESSERA_CHECK(len >= 1, "input ", s, " is empty: an encoder input needs at least one token");
    TESSERA_CHECK(
        len <= c.max_position_embeddings, "input ", s, " has ", len,
        " tokens, more than the model's max_position_embeddings=", c.max_position_embeddings);
  }
  if (b.tokens.numel() == 0) return;
  const auto* tok = b.tokens.data_ptr<int64_t>();
  const auto* typ = b.token_types.data_ptr<int64_t>();
  for (int64_t i = 0; i < b.tokens.numel(); ++i) {
    TESSERA_CHECK(tok[i] >= 0 && tok[i] < c.vocab_size, "token id ", tok[i],
                  " is outside the vocabulary [0, ", c.vocab_size, ")");
    TESSERA_CHECK(typ[i] >= 0 && typ[i] < std::max<int64_t>(1, c.type_vocab_size), "token type ",
                  typ[i], " is outside [0, ", std::max<int64_t>(1, c.type_vocab_size), ")");
  }
}

torch::Tensor EncoderModel::forward(const EncoderBatch& batch) const {
  check_inputs(batch);
  check_lora_ids(batch);
  const auto& c = config_;
  const int64_t t = batch.tokens.numel(), d = c.head_dim, hl = heads_.size, ql = hl * d;
  const int64_t il = mlp_.size;
  auto tokens = batch.tokens.to(device_);
  auto positions = batch.positions.to(device_);
  torch::Tensor x = word_.index_select(0, tokens);
  if (c.absolute_positions) {
    // transformers' BertEmbeddings: words + token types, then + positions.
    if (token_type_.defined()) x = x + token_type_.index_select(0, batch.token_types.to(device_));
    x = x + position_.index_select(0, positions);
  }
  x = norm(x, emb_norm_w_, emb_norm_b_);
  const double scale = c.attention_scale();
  // Unmerged LoRA: the batch's sequences are the kernel's segments.
  const bool lora = !loras_.empty() && batch.lora_ids.defined();
  torch::Tensor seg_indptr, seg_ids;
  if (lora) {
    seg_indptr = batch.cu_seqlens.to(device_);
    seg_ids = batch.lora_ids.to(device_);
  }
  auto update = [&](size_t l, EncoderLoraModule m, const torch::Tensor& y,
                    const torch::Tensor& in) {
    if (!lora) return;
    const auto place = lora_place(m);
    apply_lora(lora_stacks_[l][static_cast<int>(m)], y.narrow(1, place.col, place.cols), in,
               seg_indptr, seg_ids);
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    torch::Tensor in = x;
    if (c.pre_norm && L.attn_norm_w.defined()) in = norm(x, L.attn_norm_w, L.attn_norm_b);
    auto qkv = dense(in, L.qkv_w, L.qkv_b);
    for (auto m : {EncoderLoraModule::kQuery, EncoderLoraModule::kKey, EncoderLoraModule::kValue}) {
      update(l, m, qkv, in);
    }
    auto q = qkv.narrow(1, 0, ql).view({t, hl, d});
    auto k = qkv.narrow(1, ql, ql).view({t, hl, d});
    auto v = qkv.narrow(1, 2 * ql, ql).view({t, hl, d});
    if (c.rotary) {
      const auto& rope = ropes_[layer_rope_[l]];
      auto [cos, sin] = rope.cos_sin(positions);
      q = RotaryEmbedding::apply(q, cos, sin);
      k = RotaryEmbedding::apply(k, cos, sin);
    }
    auto a = attention_->attend(q, k, v, batch.cu_seqlens, c.layer_windows[l], scale);
    auto o_part = dense(a, L.o_w);
    update(l, EncoderLoraModule::kAttnOut, o_part, a);
    auto o = all_reduce(o_part, L.o_b);
    torch::Tensor m_in;
    if (c.pre_norm) {
      x = x + o;
      m_in = norm(x, L.mlp_norm_w, L.mlp_norm_b);
    } else {
      x = norm(x + o, L.attn_norm_w, L.attn_norm_b);
      m_in = x;
    }
    auto up = dense(m_in, L.up_w, L.up_b);
    if (!c.glu_mlp) update(l, EncoderLoraModule::kIntermediate, up, m_in);
    auto act = c.glu_mlp ? activation(up.narrow(1, 0, il), c.hidden_act) * up.narrow(1, il, il)
                         : activation(up, c.hidden_act);
    auto down = dense(act, L.down_w);
    update(l, EncoderLoraModule::kOutput, down, act);
    auto m = all_reduce(down, L.down_b);
    x = c.pre_norm ? x + m : norm(x + m, L.mlp_norm_w, L.mlp_norm_b);
  }
  if (c.final_norm) x = norm(x, final_norm_w_, final_norm_b_);
  return x;
}

torch::Tensor EncoderModel::classify(const torch::Tensor& states, const EncoderBatch& batch) const {
  const auto& c = config_;
  TESSERA_CHECK(c.has_classifier, "the model (architectures ", c.architecture,
                ") has no sequence-classification head");
  const auto* cu = batch.cu_seqlens.data_ptr<int32_t>();
  const int64_t n = batch.num_seqs();
  std::vector<int64_t> first(n);
  for (int64_t s = 0; s < n; ++s) first[s] = cu[s];
  auto firsts = torch::tensor(first, torch::kLong).to(device_);
  check_lora_ids(batch);
  // Sequences of each adapter whose head an adapter replaces (modules_to_save), and the pooler's
  // LoRA segments (one row per sequence).
  const bool lora = !loras_.empty() && batch.lora_ids.defined();
  std::vector<std::vector<int64_t>> rows_of(loras_.size());
  if (lora) {
    const auto* ids = batch.lora_ids.data_ptr<int32_t>();
    for (int64_t s = 0; s < n; ++s) {
      if (ids[s] >= 0) rows_of[ids[s]].push_back(s);
    }
  }
  // out[rows of adapter i] = f_i(in[rows of adapter i]) for the adapters that save a module.
  auto replace_rows = [&](torch::Tensor& out, const torch::Tensor& in, const auto& weights_of) {
    for (size_t i = 0; i < loras_.size(); ++i) {
      const auto [w, b] = weights_of(loras_[i]);
      if (!w.defined() || rows_of[i].empty()) continue;
      auto idx = torch::tensor(rows_of[i], torch::kLong).to(device_);
      out.index_copy_(0, idx, dense(in.index_select(0, idx), w, b));
    }
  };
  torch::Tensor pooled;
  if (c.family == EncoderFamily::kBert) {
    auto first_states = states.index_select(0, firsts);
    auto pre = dense(first_states, pool_w_, pool_b_);
    if (lora) {
      if (pooler_stack_.a.defined()) {
        auto indptr = torch::arange(n + 1, torch::kInt).to(device_);
        apply_lora(pooler_stack_, pre, first_states, indptr, batch.lora_ids.to(device_));
      }
      replace_rows(pre, first_states,
                   [](const LocalLora& a) { return std::make_pair(a.pooler_w, a.pooler_b); });
    }
    pooled = torch::tanh(pre);
  } else {
    if (c.classifier_pooling == ClassifierPooling::kCls) {
      pooled = states.index_select(0, firsts);
    } else {
      std::vector<int64_t> seg;
      seg.reserve(states.size(0));
      for (int64_t s = 0; s < n; ++s) seg.insert(seg.end(), cu[s + 1] - cu[s], s);
      auto sums = torch::zeros({n, c.hidden_size}, states.options())
                      .index_add_(0, torch::tensor(seg, torch::kLong).to(device_), states);
      std::vector<float> lens(n);
      for (int64_t s = 0; s < n; ++s) lens[s] = static_cast<float>(cu[s + 1] - cu[s]);
      pooled = sums / torch::tensor(lens).to(device_).unsqueeze(1);
    }
    pooled = norm(activation(dense(pooled, pool_w_, pool_b_), c.classifier_activation),
                  head_norm_w_, head_norm_b_);
  }
  auto logits = dense(pooled, cls_w_, cls_b_);
  if (lora) {
    replace_rows(logits, pooled,
                 [](const LocalLora& a) { return std::make_pair(a.classifier_w, a.classifier_b); });
  }
  return logits;
}

void EncoderModel::check_lora_ids(const EncoderBatch& b) const {
  if (!b.lora_ids.defined()) return;
  TESSERA_CHECK(b.lora_ids.device().is_cpu() && b.lora_ids.scalar_type() == torch::kInt &&
                    b.lora_ids.dim() == 1 && b.lora_ids.numel() == b.num_seqs(),
                "encoder batch: lora_ids must be CPU int32 [", b.num_seqs(), "]");
  const auto* ids = b.lora_ids.data_ptr<int32_t>();
  for (int64_t s = 0; s < b.num_seqs(); ++s) {
    TESSERA_CHECK(ids[s] >= -1 && ids[s] < num_loras(), "input ", s, " names LoRA adapter ", ids[s],
                  ", the model holds ", num_loras());
    TESSERA_CHECK(ids[s] < 0 || merged_ < 0, "input ", s, " names LoRA adapter ", ids[s],
                  " while adapter ", merged_, " is merged into the weights");
  }
}

EncoderModel::LoraPlace EncoderModel::lora_place(EncoderLoraModule m) const {
  const int64_t h = config_.hidden_size, ql = heads_.size * config_.head_dim;
  const sharding::ShardRange qs{heads_.begin * config_.head_dim, ql}, all_h{0, h};
  switch (m) {
    case EncoderLoraModule::kQuery:
      return {0, ql, qs, all_h};
    case EncoderLoraModule::kKey:
      return {ql, ql, qs, all_h};
    case EncoderLoraModule::kValue:
      return {2 * ql, ql, qs, all_h};
    case EncoderLoraModule::kAttnOut:
      return {0, h, all_h, qs};
    case EncoderLoraModule::kIntermediate:
      return {0, mlp_.size, mlp_, all_h};
    case EncoderLoraModule::kOutput:
      return {0, h, all_h, mlp_};
  }
  TESSERA_FAIL("unknown LoRA module");
}

torch::Tensor& EncoderModel::lora_weight(size_t layer, EncoderLoraModule m) {
  Layer& L = layers_[layer];
  switch (m) {
    case EncoderLoraModule::kAttnOut:
      return L.o_w;
    case EncoderLoraModule::kIntermediate:
      return L.up_w;
    case EncoderLoraModule::kOutput:
      return L.down_w;
    default:
      return L.qkv_w;
  }
}

int EncoderModel::add_lora(const EncoderLoraAdapter& adapter) {
  const auto& c = config_;
  TESSERA_CHECK(c.family == EncoderFamily::kBert && !c.glu_mlp, "LoRA adapter '", adapter.dir,
                "': LoRA is implemented for BERT encoders, the model is ", c.model_type);
  TESSERA_CHECK(static_cast<int64_t>(adapter.layers.size()) == c.num_hidden_layers,
                "LoRA adapter '", adapter.dir, "' has ", adapter.layers.size(),
                " layers, the model ", c.num_hidden_layers);
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
    for (int m = 0; m < kNumEncoderLoraModules; ++m) {
      const auto& pair = adapter.layers[l][m];
      if (!pair.a.defined()) continue;
      const auto place = lora_place(static_cast<EncoderLoraModule>(m));
      local.layers[l][m].a =
          pair.a.narrow(1, place.in_cols.begin, place.in_cols.size).contiguous().to(device_);
      local.layers[l][m].b =
          pair.b.narrow(0, place.out_rows.begin, place.out_rows.size).contiguous().to(device_);
    }
  }
  // The head is replicated: whole tensors (used only where the model has the head).
  if (c.has_classifier) {
    if (adapter.pooler.a.defined()) {
      local.pooler.a = adapter.pooler.a.to(device_);
      local.pooler.b = adapter.pooler.b.to(device_);
    }
    auto input_major = [&](const torch::Tensor& t) {
      return t.defined() ? t.t().contiguous().to(device_) : torch::Tensor();
    };
    local.classifier_w = input_major(adapter.classifier_w);
    local.pooler_w = input_major(adapter.pooler_w);
    if (adapter.classifier_b.defined()) local.classifier_b = adapter.classifier_b.to(device_);
    if (adapter.pooler_b.defined()) local.pooler_b = adapter.pooler_b.to(device_);
  }
  loras_.push_back(std::move(local));
  rebuild_lora_stacks();
  return static_cast<int>(loras_.size()) - 1;
}

void EncoderModel::rebuild_lora_stacks() {
  const int64_t n = static_cast<int64_t>(loras_.size());
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device_);
  // Adapters stacked and zero-padded to the largest rank that targets the module.
  auto stack = [&](const auto& pair_of, int64_t in, int64_t out) {
    int64_t r_max = 0;
    for (const auto& a : loras_) {
      if (pair_of(a).a.defined()) r_max = std::max(r_max, a.r);
    }
    kernels::LoraStack st;
    if (r_max == 0) return st;
    st.a = torch::zeros({n, r_max, in}, f32);
    st.b = torch::zeros({n, out, r_max}, f32);
    std::vector<int32_t> ranks(n, 0);
    std::vector<float> scales(n, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      const auto& p = pair_of(loras_[i]);
      scales[i] = static_cast<float>(loras_[i].scale);
      if (!p.a.defined()) continue;
      ranks[i] = static_cast<int32_t>(loras_[i].r);
      st.a[i].narrow(0, 0, loras_[i].r).copy_(p.a);
      st.b[i].narrow(1, 0, loras_[i].r).copy_(p.b);
    }
    st.ranks = torch::tensor(ranks, torch::kInt).to(device_);
    st.scales = torch::tensor(scales, torch::kFloat).to(device_);
    return st;
  };
  lora_stacks_.assign(layers_.size(), {});
  for (size_t l = 0; l < layers_.size(); ++l) {
    for (int m = 0; m < kNumEncoderLoraModules; ++m) {
      const auto place = lora_place(static_cast<EncoderLoraModule>(m));
      lora_stacks_[l][m] = stack(
          [&](const LocalLora& a) -> const auto& { return a.layers[l][m]; }, place.in_cols.size,
          place.cols);
    }
  }
  const int64_t h = config_.hidden_size;
  pooler_stack_ = stack(
      [](const LocalLora& a) -> const auto& { return a.pooler; }, h, h);
}

void EncoderModel::apply_lora(const kernels::LoraStack& stack, torch::Tensor y,
                              const torch::Tensor& x, const torch::Tensor& indptr,
                              const torch::Tensor& ids) const {
  if (!stack.a.defined()) return;
  kernels::lora_sgmv_(y, x.contiguous(), stack, indptr, ids);
}

void EncoderModel::merge_lora(int index, double sign) {
  TESSERA_CHECK(index >= 0 && index < num_loras(), "LoRA index ", index, " is not in [0, ",
                num_loras(), ")");
  if (sign > 0) {
    TESSERA_CHECK(merged_ < 0, "LoRA adapter ", index, " cannot be merged: adapter ", merged_,
                  " is merged");
  } else {
    TESSERA_CHECK(merged_ == index, "LoRA adapter ", index, " is not merged");
  }
  const auto& a = loras_[index];
  auto add = [&](torch::Tensor& w, int64_t col, int64_t cols, const EncoderLoraAdapter::Pair& p) {
    // Input-major: W^T [in, out] += scale * A^T B^T, in float64 and rounded once.
    auto part = w.narrow(1, col, cols);
    const auto delta = torch::mm(p.a.t().to(torch::kDouble), p.b.t().to(torch::kDouble));
    part.copy_(part.to(torch::kDouble).add_(delta, sign * a.scale));
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    for (int m = 0; m < kNumEncoderLoraModules; ++m) {
      const auto& p = a.layers[l][m];
      if (!p.a.defined()) continue;
      const auto mod = static_cast<EncoderLoraModule>(m);
      const auto place = lora_place(mod);
      add(lora_weight(l, mod), place.col, place.cols, p);
    }
  }
  if (a.pooler.a.defined()) add(pool_w_, 0, config_.hidden_size, a.pooler);
  // Saved modules: swapped in whole, and the originals restored exactly.
  auto swap = [&](torch::Tensor& w, torch::Tensor& keep, const torch::Tensor& saved) {
    if (!saved.defined()) return;
    if (sign > 0) {
      keep = w.clone();
      w.copy_(saved);
    } else {
      w.copy_(keep);
      keep = torch::Tensor();
    }
  };
  swap(cls_w_, unmerged_cls_w_, a.classifier_w);
  swap(cls_b_, unmerged_cls_b_, a.classifier_b);
  swap(pool_w_, unmerged_pool_w_, a.pooler_w);
  swap(pool_b_, unmerged_pool_b_, a.pooler_b);
  merged_ = sign > 0 ? index : -1;
}

void EncoderModel::merge_lora(int index) { merge_lora(index, 1.0); }
void EncoderModel::unmerge_lora(int index) { merge_lora(index, -1.0); }

std::map<std::string, torch::Tensor> EncoderModel::lora_weights() const {
  std::map<std::string, torch::Tensor> out;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    out[p + "qkv_w"] = layers_[l].qkv_w;
    out[p + "o_w"] = layers_[l].o_w;
    out[p + "up_w"] = layers_[l].up_w;
    out[p + "down_w"] = layers_[l].down_w;
  }
  for (const auto& [name, t] : {std::pair<const char*, const torch::Tensor*>{"pool_w", &pool_w_},
                                {"pool_b", &pool_b_},
                                {"cls_w", &cls_w_},
                                {"cls_b", &cls_b_}}) {
    if (t->defined()) out[name] = *t;
  }
  return out;
}

}  // namespace tessera::models
