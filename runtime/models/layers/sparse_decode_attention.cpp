#include "runtime/models/layers/sparse_decode_attention.h"

#include <algorithm>

#include "common/error.h"
#include "kernels/ops/paged_kv_tensors.h"
#include "kernels/sparse_decode/sparse_decode_step.h"

namespace tessera::models {

void SparseDecodeConfig::validate(int64_t block_size) const {
  if (!enabled()) return;
  kernels::parse_sparse_method(method);  // names the valid methods
  TESSERA_CHECK(budget > 0, "--sparse-budget must be a positive token count, got ", budget);
  TESSERA_CHECK(budget <= INT32_MAX, "--sparse-budget must fit int32, got ", budget);
  TESSERA_CHECK(sinks >= 0, "--sparse-sinks must be >= 0, got ", sinks);
  TESSERA_CHECK(window >= 0, "--sparse-window must be >= 0, got ", window);
  TESSERA_CHECK(min_context >= -1, "--sparse-min-context must be >= 0 (or -1 = the budget), got ",
                min_context);
  TESSERA_CHECK(budget >= sinks + window + block_size, "--sparse-budget ", budget,
                " is below --sparse-sinks + --sparse-window + --block-size = ", sinks, " + ",
                window, " + ", block_size, " = ", sinks + window + block_size,
                " (the forced tokens must leave room to choose)");
}

kernels::SparseSelectConfig SparseDecodeConfig::select_config(int head_dim, int group,
                                                              int page_tokens, float scale) const {
  validate(page_tokens);
  kernels::SparseSelectConfig c;
  c.method = kernels::parse_sparse_method(method);
  c.budget = budget;
  c.sinks = sinks;
  c.window = window;
  c.page_tokens = page_tokens;
  c.head_dim = head_dim;
  c.group = group;
  c.scale = scale;
  c.validate();
  return c;
}

SparseDecodeAttention::SparseDecodeAttention(const SparseDecodeConfig& config, int64_t num_layers,
                                             int64_t max_slots, int64_t local_q_heads,
                                             int64_t local_kv_heads, int64_t head_dim,
                                             int64_t block_size, double scale)
    : config_(config), local_kv_heads_(local_kv_heads) {
  TESSERA_CHECK(local_kv_heads > 0 && local_q_heads % local_kv_heads == 0,
                "sparse decode: ", local_q_heads, " query heads do not group over ", local_kv_heads,
                " kv heads");
  select_ = config.select_config(static_cast<int>(head_dim),
                                 static_cast<int>(local_q_heads / local_kv_heads),
                                 static_cast<int>(block_size), static_cast<float>(scale));
  index_.resize(num_layers);
  for (auto& l : index_) l.resize(max_slots);
}

void SparseDecodeAttention::reset_slot(int32_t slot) {
  for (auto& l : index_) l.at(slot).reset();
}

kernels::SparseSequenceIndex& SparseDecodeAttention::index(int64_t layer, int32_t slot) {
  auto& p = index_.at(layer).at(slot);
  if (!p) {
    p = std::make_unique<kernels::SparseSequenceIndex>(select_, static_cast<int>(local_kv_heads_));
  }
  return *p;
}

int64_t SparseDecodeAttention::metadata_bytes() const {
  int64_t b = 0;
  for (const auto& l : index_) {
    for (const auto& p : l) b += p ? p->metadata_bytes() : 0;
  }
  return b;
}

void SparseDecodeAttention::attend(int64_t layer, const SparseDecodeRows& rows,
                                   const caches::PagedLayerKV& kv, const torch::Tensor& q,
                                   torch::Tensor& out) {
  TESSERA_CHECK(q.device().is_cpu() && q.scalar_type() == torch::kFloat && q.stride(2) == 1,
                "sparse decode runs on float32 CPU queries, got ", q.scalar_type(), " on ",
                q.device());
  const int64_t q_stride[2] = {q.stride(0), q.stride(1)};
  // A new sequence's prefill gives its index the queries' metric (before any page is clustered).
  constexpr int64_t kQuerySamples = 64;
  for (const auto& [slot, first, n] : rows.prefills) {
    auto& idx = index(layer, static_cast<int32_t>(slot));
    if (idx.head(0).has_query_metric() || idx.head(0).indexed_tokens() > 0) continue;
    const int64_t take = std::min(n, kQuerySamples);
    idx.set_query_samples(q.data_ptr<float>() + (first + n - take) * q_stride[0], take, q_stride);
  }
  const auto n = static_cast<int64_t>(rows.slots.size());
  if (n == 0) return;
  const kernels::PagedKv pool =
      kernels::detail::paged_kv_from_tensors(kv.k, kv.v, kv.k_scale, kv.v_scale);
  TESSERA_CHECK(rows.block_tables.dim() == 2 && rows.block_tables.size(0) == n,
                "sparse decode: block tables for ", n, " rows, got ", rows.block_tables.sizes());
  const auto* bt = rows.block_tables.data_ptr<int32_t>();
  const int64_t max_blocks = rows.block_tables.size(1);
  std::vector<const kernels::SparseSequenceIndex*> seqs(n);
  int64_t max_len = 1;
  for (int64_t i = 0; i < n; ++i) {
    auto& idx = index(layer, rows.slots[i]);
    idx.update(pool, bt + i * max_blocks, rows.seq_lens[i]);
    seqs[i] = &idx;
    max_len = std::max(max_len, rows.seq_lens[i]);
  }
  auto qs = q.index_select(0, rows.q_index).contiguous();  // [n, Hq, D]
  const int64_t hq = q.size(1), dv = pool.head_dim_v;
  const int64_t max_entries = std::min(config_.budget, max_len);
  auto lists = torch::empty({n, local_kv_heads_, max_entries}, torch::kInt);
  auto counts = torch::empty({n, local_kv_heads_}, torch::kInt);
  auto o = torch::empty({n, hq, dv}, torch::kFloat);
  auto lse = torch::empty({n, hq}, torch::kFloat);
  kernels::SparseDecodeView view;
  view.q = qs.data_ptr<float>();
  view.kv = pool;
  view.block_tables = bt;
  view.idx = lists.data_ptr<int32_t>();
  view.counts = counts.data_ptr<int32_t>();
  view.out = o.data_ptr<float>();
  view.lse = lse.data_ptr<float>();
  view.q_stride[0] = qs.stride(0);
  view.q_stride[1] = qs.stride(1);
  view.num_seqs = static_cast<int>(n);
  view.max_blocks_per_seq = static_cast<int>(max_blocks);
  view.num_q_heads = static_cast<int>(hq);
  view.max_entries = static_cast<int>(max_entries);
  view.scale = select_.softmax_scale();
  kernels::sparse_decode_step_cpu(seqs, view, rows.seq_lens.data());
  out.index_copy_(0, rows.q_index, o.to(out.scalar_type()));

  // What was read: each (row, kv head) list's K and V rows (and their scales when quantised).
  const int64_t row_bytes =
      (pool.head_dim_k + pool.head_dim_v) * kernels::kv_elem_bytes(pool.dtype) +
      (kernels::kv_is_quantised(pool.dtype) ? 2 * static_cast<int64_t>(sizeof(float)) : 0);
  const auto* cp = counts.data_ptr<int32_t>();
  int64_t read = 0, context = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t kh = 0; kh < local_kv_heads_; ++kh) read += cp[i * local_kv_heads_ + kh];
    context += rows.seq_lens[i] * local_kv_heads_;
  }
  stats_.rows += n;
  stats_.tokens_read += read;
  stats_.tokens_context += context;
  stats_.kv_bytes_read += read * row_bytes;
  stats_.kv_bytes_dense += context * row_bytes;
}

}  // namespace tessera::models
