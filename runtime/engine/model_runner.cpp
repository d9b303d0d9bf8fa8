#include "runtime/engine/model_runner.h"

#include <algorithm>
#include <map>

#include "caches/block_pool.h"
#include "common/error.h"

namespace tessera::engine {

namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<int32_t> layer_groups(const std::vector<caches::CacheGroup>& groups,
                                  int64_t num_layers) {
  std::vector<int32_t> out(num_layers, -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int64_t l : groups[g].layers) {
      TESSERA_CHECK(l >= 0 && l < num_layers, "cache group ", g, " names layer ", l,
                    " outside [0, ", num_layers, ")");
      out[l] = static_cast<int32_t>(g);
    }
  }
  for (int64_t l = 0; l < num_layers; ++l) {
    TESSERA_CHECK(out[l] >= 0, "layer ", l, " belongs to no KV cache group");
  }
  return out;
}

}  // namespace

ModelRunner::ModelRunner(const models::DecoderModel& model, caches::PagedKVStorage& storage,
                         const std::vector<caches::CacheGroup>& groups, int64_t max_num_seqs,
                         sharding::Communicator* dcp, const models::SparseDecodeConfig& sparse)
    : model_(model),
      storage_(storage),
      attention_(storage, layer_groups(groups, model.config().num_hidden_layers),
                 model.config().attention_scale(), model.local_q_heads(), dcp,
                 model.config().attn_logit_softcapping) {
  TESSERA_CHECK(max_num_seqs > 0, "max_num_seqs must be positive, got ", max_num_seqs);
  TESSERA_CHECK(!groups.empty(), "the model runner needs at least one KV cache group");
  if (dcp != nullptr) dcp_ = {dcp->rank(), dcp->size()};
  for (const auto& g : groups) {
    GroupInfo info;
    const auto kind = g.spec->kind();
    if (kind == caches::SpecKind::kSlidingWindow) {
      info.window = static_cast<const caches::SlidingWindowSpec&>(*g.spec).window();
    } else if (kind == caches::SpecKind::kChunkedLocal) {
      info.chunk = static_cast<const caches::ChunkedLocalAttentionSpec&>(*g.spec).chunk_size();
      TESSERA_CHECK(dcp_.size == 1, "chunked-local attention layers cannot be split by decode ",
                    "context parallel (", dcp_.size, " ranks per KV head)");
    } else {
      TESSERA_CHECK(kind == caches::SpecKind::kFullAttention, "KV cache group of kind ",
                    caches::spec_kind_name(kind), " is not supported by the model runner");
    }
    if (block_size_ == 0) block_size_ = g.spec->block_size();
    TESSERA_CHECK(g.spec->block_size() == block_size_,
                  "KV cache groups disagree on block_size: ", g.spec->block_size(), " vs ",
                  block_size_);
    groups_.push_back(info);
  }
  TESSERA_CHECK(block_size_ % dcp_.size == 0, "block_size=", block_size_,
                " is not a multiple of the ", dcp_.size, " decode-context-parallel ranks");
  storage_block_size_ = block_size_ / dcp_.size;
  const int64_t stored = storage_.kv(groups.front().layers.front()).k.size(1);
  TESSERA_CHECK(stored == storage_block_size_, "paged storage holds ", stored,
                " slots per block but the plans need ", storage_block_size_);
  slots_.resize(max_num_seqs);
  for (auto& s : slots_) s.tables.resize(groups_.size());
  stats_.max_live_blocks.assign(groups_.size(), 0);
  if (sparse.enabled()) enable_sparse(sparse, groups);
}

void ModelRunner::enable_sparse(const models::SparseDecodeConfig& sparse,
                                const std::vector<caches::CacheGroup>& groups) {
  const std::string opt = "--sparse-decode " + sparse.method;
  sparse.validate(block_size_);
  std::string kinds;
  bool full = false;
  for (size_t g = 0; g < groups.size(); ++g) {
    const bool f = groups_[g].window == 0 && groups_[g].chunk == 0;
    full = full || f;
    kinds += (g ? ", " : "") + std::to_string(groups[g].layers.size()) + " x " +
             std::string(caches::spec_kind_name(groups[g].spec->kind()));
  }
  TESSERA_CHECK(full, opt, " needs full-attention layers on the paged KV cache, but the model has",
                " none (its paged layers: ", kinds, ")");
  TESSERA_CHECK(dcp_.size == 1, opt, " does not run under decode context parallel yet (", dcp_.size,
                " ranks share each KV head: use --tp <= num_key_value_heads=",
                model_.config().num_key_value_heads, ")");
  TESSERA_CHECK(model_.device().is_cpu(), opt,
                " runs on the CPU only (its selection is CPU code), the model is on ",
                model_.device().str());
  sparse_threshold_ = sparse.threshold();
  attention_.enable_sparse(std::make_unique<models::SparseDecodeAttention>(
      sparse, model_.config().num_hidden_layers, static_cast<int64_t>(slots_.size()),
      model_.local_q_heads(), model_.local_kv_heads(), model_.config().head_dim, block_size_,
      model_.config().attention_scale()));
}

const std::vector<int32_t>& ModelRunner::table(int32_t slot, int32_t group) const {
  return slots_.at(slot).tables.at(group);
}

void ModelRunner::apply(const scheduler::StepPlan& plan) {
  TESSERA_CHECK(plan.num_groups == static_cast<int32_t>(groups_.size()), "plan has ",
                plan.num_groups, " KV cache groups, the runner ", groups_.size());
  for (const auto& r : plan.released) {
    TESSERA_CHECK(r.slot >= 0 && r.slot < static_cast<int32_t>(slots_.size()), "released slot ",
                  r.slot, " outside [0, ", slots_.size(), ")");
    Slot& s = slots_[r.slot];
    TESSERA_CHECK(s.live && s.seq == r.seq, "plan releases seq ", r.seq, " from slot ", r.slot,
                  " which holds ", s.live ? s.seq : -1);
    s.live = false;
    if (attention_.sparse() != nullptr) attention_.sparse()->reset_slot(r.slot);
  }
  for (int64_t i = 0; i < plan.num_rows(); ++i) {
    const auto& row = plan.seqs[i];
    TESSERA_CHECK(row.slot >= 0 && row.slot < static_cast<int32_t>(slots_.size()), "row ", i,
                  " uses slot ", row.slot, " outside [0, ", slots_.size(), ")");
    Slot& s = slots_[row.slot];
    if (row.is_new) {
      s.live = true;
      s.seq = row.seq;
      for (auto& t : s.tables) t.clear();
      s.lora = -1;
      const std::string& lora = plan.new_seqs.at(row.new_index).lora;
      for (int a = 0; a < model_.num_loras() && !lora.empty(); ++a) {
        if (model_.lora_name(a) == lora) s.lora = a;
      }
      TESSERA_CHECK(lora.empty() || s.lora >= 0, "seq ", row.seq, " names LoRA adapter '", lora,
                    "' which this rank did not load");
      if (attention_.sparse() != nullptr) attention_.sparse()->reset_slot(row.slot);
    } else {
      TESSERA_CHECK(s.live && s.seq == row.seq, "row ", i, " of seq ", row.seq, " runs in slot ",
                    row.slot, " which holds ", s.live ? s.seq : -1);
    }
    for (int32_t g = 0; g < plan.num_groups; ++g) {
      plan.apply_block_table(i, g, s.tables[g]);
      const auto live =
          static_cast<int64_t>(s.tables[g].size()) -
          std::count(s.tables[g].begin(), s.tables[g].end(), caches::BlockPool::kNullBlock);
      stats_.max_live_blocks[g] = std::max(stats_.max_live_blocks[g], live);
    }
  }
  if (!plan.copies.empty()) storage_.copy_blocks(plan.copies);
}

void ModelRunner::build_group(const scheduler::StepPlan& plan, int32_t group,
                              models::PagedGroupBatch& out) const {
  const int64_t rows = plan.num_rows(), bs = block_size_;
  int64_t max_blocks = 1;
  for (const auto& row : plan.seqs) {
    max_blocks = std::max(max_blocks, cdiv(row.start_pos + row.num_tokens, bs));
  }
  auto bt = torch::zeros({rows, max_blocks}, torch::kInt);
  auto lens = torch::empty({rows}, torch::kInt);
  auto qs = torch::empty({rows + 1}, torch::kInt);
  auto slots = torch::empty({plan.num_tokens()}, torch::kLong);
  auto* btp = bt.data_ptr<int32_t>();
  auto* lp = lens.data_ptr<int32_t>();
  auto* qp = qs.data_ptr<int32_t>();
  auto* sp = slots.data_ptr<int64_t>();
  qp[0] = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const auto& row = plan.seqs[i];
    const auto& table = slots_[row.slot].tables[group];
    const int64_t len = row.start_pos + row.num_tokens, nb = cdiv(len, bs);
    TESSERA_CHECK(static_cast<int64_t>(table.size()) >= nb, "slot ", row.slot, " group ", group,
                  " holds ", table.size(), " blocks for ", len, " tokens");
    std::copy(table.begin(), table.begin() + nb, btp + i * max_blocks);
    lp[i] = static_cast<int32_t>(len);
    qp[i + 1] = qp[i] + row.num_tokens;
    for (int64_t k = 0; k < row.num_tokens; ++k) {
      const int64_t p = row.start_pos + k;
      const int32_t block = table[p / bs];
      TESSERA_CHECK(block != caches::BlockPool::kNullBlock, "slot ", row.slot, " group ", group,
                    " writes position ", p, " into the null block");
      sp[row.token_offset + k] = static_cast<int64_t>(block) * bs + p % bs;
    }
  }
  const auto dev = model_.device();
  out.slot_mapping = slots.to(dev);
  out.chunk = groups_[group].chunk;
  out.calls.clear();
  const bool full = groups_[group].window == 0 && groups_[group].chunk == 0;
  if (attention_.sparse() == nullptr || !full) {
    out.calls.push_back(
        {torch::Tensor(), bt.to(dev), lens.to(dev), qs.to(dev), groups_[group].window});
    return;
  }
  // Sparse decode: single-token rows of sequences past the threshold go to the sparse path,
  // the others to one dense call over their query rows.
  auto& sp_rows = out.sparse;
  std::vector<int64_t> dense_rows, sparse_rows;
  for (int64_t i = 0; i < rows; ++i) {
    const auto& row = plan.seqs[i];
    if (row.num_tokens == 1 && lp[i] > sparse_threshold_) {
      sparse_rows.push_back(i);
    } else {
      dense_rows.push_back(i);
      if (row.num_tokens > 1)
        sp_rows.prefills.push_back({row.slot, row.token_offset, row.num_tokens});
    }
  }
  if (sparse_rows.empty()) {
    out.calls.push_back({torch::Tensor(), bt.to(dev), lens.to(dev), qs.to(dev), 0});
    return;
  }
  auto pick = [&](const std::vector<int64_t>& which) {
    auto idx = torch::tensor(which, torch::kLong);
    return std::make_tuple(idx, bt.index_select(0, idx), lens.index_select(0, idx));
  };
  {
    auto [idx, sbt, slens] = pick(sparse_rows);
    std::vector<int64_t> q_rows;
    for (int64_t i : sparse_rows) {
      q_rows.push_back(plan.seqs[i].token_offset);
      sp_rows.slots.push_back(plan.seqs[i].slot);
      sp_rows.seq_lens.push_back(lp[i]);
    }
    sp_rows.q_index = torch::tensor(q_rows, torch::kLong);
    sp_rows.block_tables = sbt.contiguous();
  }
  if (dense_rows.empty()) return;
  auto [idx, dbt, dlens] = pick(dense_rows);
  auto dqs = torch::empty({static_cast<int64_t>(dense_rows.size()) + 1}, torch::kInt);
  auto* dq = dqs.data_ptr<int32_t>();
  std::vector<int64_t> q_rows;
  dq[0] = 0;
  for (size_t j = 0; j < dense_rows.size(); ++j) {
    const auto& row = plan.seqs[dense_rows[j]];
    dq[j + 1] = dq[j] + row.num_tokens;
    for (int64_t k = 0; k < row.num_tokens; ++k) q_rows.push_back(row.token_offset + k);
  }
  out.calls.push_back(
      {torch::tensor(q_rows, torch::kLong).to(dev), dbt.to(dev), dlens.to(dev), dqs.to(dev), 0});
}

void ModelRunner::build_group_dcp(const scheduler::StepPlan& plan, int32_t group,
                                  models::PagedGroupBatch& out) const {
  const int64_t size = dcp_.size, rank = dcp_.rank, bs = storage_block_size_, vbs = block_size_;
  const int64_t window = groups_[group].window;
  auto slots = torch::empty({plan.num_tokens()}, torch::kLong);
  auto* sp = slots.data_ptr<int64_t>();
  // Each query becomes a one-token sequence over the keys this rank stores that it may see:
  // local indices [lo, hi]. Queries are bucketed by their visible count where a window applies
  // (the kernel takes one window per call).
  struct Query {
    int64_t index, slot, hi;
  };
  std::map<int64_t, std::vector<Query>> buckets;
  for (int64_t i = 0; i < plan.num_rows(); ++i) {
    const auto& row = plan.seqs[i];
    const auto& table = slots_[row.slot].tables[group];
    TESSERA_CHECK(static_cast<int64_t>(table.size()) >= cdiv(row.start_pos + row.num_tokens, vbs),
                  "slot ", row.slot, " group ", group, " holds too few blocks");
    for (int64_t k = 0; k < row.num_tokens; ++k) {
      const int64_t t = row.start_pos + k, idx = row.token_offset + k;
      sp[idx] = dcp_.owns(t) ? static_cast<int64_t>(table[t / vbs]) * bs + (t % vbs) / size : -1;
      if (t < rank) continue;  // this rank stores no key at or before t
      const int64_t hi = (t - rank) / size;
      int64_t lo = 0;
      if (window > 0 && t - window + 1 - rank > 0) lo = cdiv(t - window + 1 - rank, size);
      if (hi < lo) continue;
      buckets[window > 0 ? hi - lo + 1 : 0].push_back({idx, row.slot, hi});
    }
  }
  const auto dev = model_.device();
  out.slot_mapping = slots.to(dev);
  out.chunk = 0;
  out.calls.clear();
  for (const auto& [win, queries] : buckets) {
    const auto n = static_cast<int64_t>(queries.size());
    int64_t max_blocks = 1;
    for (const auto& q : queries) max_blocks = std::max(max_blocks, cdiv(q.hi + 1, bs));
    auto bt = torch::zeros({n, max_blocks}, torch::kInt);
    auto lens = torch::empty({n}, torch::kInt);
    auto qs = torch::arange(n + 1, torch::kInt);
    auto qi = torch::empty({n}, torch::kLong);
    auto* btp = bt.data_ptr<int32_t>();
    for (int64_t j = 0; j < n; ++j) {
      const auto& q = queries[j];
      const auto& table = slots_[q.slot].tables[group];
      const int64_t nb = cdiv(q.hi + 1, bs);
      std::copy(table.begin(), table.begin() + nb, btp + j * max_blocks);
      lens.data_ptr<int32_t>()[j] = static_cast<int32_t>(q.hi + 1);
      qi.data_ptr<int64_t>()[j] = q.index;
    }
    out.calls.push_back({qi.to(dev), bt.to(dev), lens.to(dev), qs.to(dev), win});
  }
}

torch::Tensor ModelRunner::execute(const scheduler::StepPlan& plan, LogitsRows which,
                                   const std::vector<int64_t>& extra_rows) {
  apply(plan);
  const auto& config = model_.config();
  if (plan.empty()) {
    return which == LogitsRows::kNone ? torch::Tensor()
                                      : torch::empty({0, config.vocab_size}, torch::kFloat);
  }
  const int64_t total = plan.num_tokens();
  auto tokens = torch::empty({total}, torch::kLong);
  auto positions = torch::empty({total}, torch::kLong);
  const bool seq_lens = model_.rotary().needs_seq_lens();
  auto lens = seq_lens ? torch::empty({total}, torch::kLong) : torch::Tensor();
  auto* tp = tokens.data_ptr<int64_t>();
  auto* pp = positions.data_ptr<int64_t>();
  std::vector<int64_t> sample_rows;
  for (const auto& row : plan.seqs) {
    for (int64_t k = 0; k < row.num_tokens; ++k) {
      const int32_t tok = plan.token_ids[row.token_offset + k];
      TESSERA_CHECK(tok >= 0 && tok < config.vocab_size, "token id ", tok, " of seq ", row.seq,
                    " at position ", row.start_pos + k,
                    " is outside [0, vocab_size=", config.vocab_size, ")");
      tp[row.token_offset + k] = tok;
      pp[row.token_offset + k] = row.start_pos + k;
      if (seq_lens) lens.data_ptr<int64_t>()[row.token_offset + k] = row.start_pos + row.num_tokens;
    }
    if (row.sample) sample_rows.push_back(row.token_offset + row.num_tokens - 1);
  }
  models::PagedBatch batch;
  batch.groups.resize(groups_.size());
  for (int32_t g = 0; g < static_cast<int32_t>(groups_.size()); ++g) {
    if (dcp_.size > 1) {
      build_group_dcp(plan, g, batch.groups[g]);
    } else {
      build_group(plan, g, batch.groups[g]);
    }
  }
  attention_.set_batch(&batch);
  const auto dev = model_.device();
  models::ForwardInputs in{tokens.to(dev), positions.to(dev),
                           seq_lens ? lens.to(dev) : torch::Tensor()};
  if (model_.num_loras() > 0) {
    // One segment per row, its slot's adapter (the kernel groups rows by adapter itself).
    std::vector<int32_t> indptr = {0}, ids;
    bool any = false;
    for (const auto& row : plan.seqs) {
      indptr.push_back(static_cast<int32_t>(row.token_offset + row.num_tokens));
      ids.push_back(slots_[row.slot].lora);
      any = any || ids.back() >= 0;
    }
    if (any) {
      in.lora_indptr = torch::tensor(indptr, torch::kInt);
      in.lora_ids = torch::tensor(ids, torch::kInt);
    }
  }
  torch::Tensor hidden = model_.hidden_states(in, attention_);
  attention_.set_batch(nullptr);
  if (attention_.sparse() != nullptr) stats_.sparse = attention_.sparse()->stats();
  ++stats_.steps;
  stats_.rows += plan.num_rows();
  stats_.tokens += total;
  if (which == LogitsRows::kNone) return {};
  if (which == LogitsRows::kAll) return model_.logits(hidden);
  for (int64_t r : extra_rows) {
    TESSERA_CHECK(r >= 0 && r < total, "logits row ", r, " is outside the step's ", total,
                  " tokens");
    sample_rows.push_back(r);
  }
  auto idx = torch::tensor(sample_rows, torch::kLong).to(dev);
  return model_.logits(hidden.index_select(0, idx));
}

}  // namespace tessera::engine
