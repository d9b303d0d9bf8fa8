#include "runtime/models/layers/paged_attention_backend.h"

#include <limits>

#include "common/error.h"
#include "kernels/ops/merge_ops.h"
#include "kernels/ops/paged_attention_ops.h"
#include "kernels/ops/paged_kv_append_ops.h"

namespace tessera::models {

PagedAttentionBackend::PagedAttentionBackend(caches::PagedKVStorage& storage,
                                             std::vector<int32_t> layer_group, double scale,
                                             int64_t local_q_heads, sharding::Communicator* dcp)
    : storage_(storage),
      layer_group_(std::move(layer_group)),
      scale_(scale),
      local_q_heads_(local_q_heads),
      dcp_(dcp != nullptr && dcp->size() > 1 ? dcp : nullptr) {}

std::pair<torch::Tensor, torch::Tensor> PagedAttentionBackend::local_attention(
    const PagedGroupBatch& g, const caches::PagedLayerKV& kv, const torch::Tensor& q) const {
  kernels::PagedAttentionOptions opt;
  opt.scale = scale_;
  opt.chunk = g.chunk;
  if (g.calls.size() == 1 && !g.calls[0].q_index.defined()) {
    const auto& c = g.calls[0];
    opt.window = c.window;
    auto [out, lse] =
        kernels::paged_attention(q, kv.k, kv.v, c.block_tables, c.seq_lens, c.q_starts, opt);
    return {out, lse};
  }
  // Queries split over several calls (DCP: one pseudo-sequence per query, grouped by window).
  auto out = torch::zeros({q.size(0), q.size(1), kv.v.size(3)}, q.options());
  auto lse =
      torch::full({q.size(0), q.size(1)}, -std::numeric_limits<float>::infinity(), q.options());
  for (const auto& c : g.calls) {
    opt.window = c.window;
    auto [o, l] = kernels::paged_attention(q.index_select(0, c.q_index), kv.k, kv.v, c.block_tables,
                                           c.seq_lens, c.q_starts, opt);
    out.index_copy_(0, c.q_index, o);
    lse.index_copy_(0, c.q_index, l);
  }
  return {out, lse};
}

torch::Tensor PagedAttentionBackend::attend(int64_t layer, const torch::Tensor& q,
                                            const torch::Tensor& k, const torch::Tensor& v) {
  TESSERA_CHECK(batch_ != nullptr, "PagedAttentionBackend: no batch set");
  TESSERA_CHECK(layer >= 0 && layer < static_cast<int64_t>(layer_group_.size()), "layer=", layer,
                " outside [0, ", layer_group_.size(), ")");
  const PagedGroupBatch& g = batch_->groups.at(layer_group_[layer]);
  const caches::PagedLayerKV& kv = storage_.kv(layer);
  kernels::paged_kv_append(k, v, g.slot_mapping, kv.k, kv.v);
  const int64_t t = q.size(0), d = q.size(2);
  if (dcp_ == nullptr) {
    auto [out, lse] = local_attention(g, kv, q);
    if (!g.sparse.empty()) {
      TESSERA_CHECK(sparse_ != nullptr,
                    "the batch has sparse decode rows but sparse decode is off");
      sparse_->attend(layer, g.sparse, kv, q, out);
    }
    return out.view({t, -1});
  }
  TESSERA_CHECK(g.sparse.empty(), "sparse decode does not run under decode context parallel");
  // DCP: every rank of the group attends with all query heads of the shared KV head over its
  // share of the tokens, then each keeps its own heads of the merged result.
  const int64_t p = dcp_->size(), hq = q.size(1);
  auto q_all = dcp_->all_gather(q.contiguous())  // [p, T, hq, D]
                   .permute({1, 0, 2, 3})
                   .reshape({t, p * hq, d});
  auto [out, lse] = local_attention(g, kv, q_all);  // [T, p * hq, Dv], [T, p * hq]
  const int64_t dv = out.size(2);
  auto parts = dcp_->all_gather(torch::cat({out, lse.unsqueeze(2)}, 2));  // [p, T, p*hq, Dv+1]
  auto mine = parts.narrow(2, dcp_->rank() * hq, hq);                     // [p, T, hq, Dv+1]
  auto [merged, merged_lse] = kernels::merge_attention_states(mine.narrow(3, 0, dv).contiguous(),
                                                              mine.select(3, dv).contiguous());
  return merged.view({t, hq * dv});
}

}  // namespace tessera::models
