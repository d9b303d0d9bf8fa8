#include "kernels/ops/paged_attention_ops.h"

#include <cmath>

#include "kernels/common/device_error.h"
#include "kernels/ops/paged_kv_tensors.h"
#include "kernels/ops/route.h"
#include "kernels/paged/paged_attention.h"

namespace tessera::kernels {

namespace {

// Block tables, lengths and query offsets must describe valid pages before any kernel reads them.
// CPU tensors are checked here; on CUDA the kernel checks the same entries on the device and the
// error, with the same message (kernels/common/device_error.h), is raised at the next op.
void check_metadata(const torch::Tensor& block_tables, const torch::Tensor& seq_lens,
                    const torch::Tensor& q_starts, int64_t total_q, const PagedKv& kv) {
  const auto* bt = block_tables.data_ptr<int32_t>();
  const auto* lens = seq_lens.data_ptr<int32_t>();
  const auto* qs = q_starts.data_ptr<int32_t>();
  const int64_t num_seqs = seq_lens.size(0);
  const int64_t max_blocks = block_tables.size(1);
  auto fail = [](MetadataCheck c, int64_t i, int64_t j, int64_t value, int64_t limit) {
    TESSERA_FAIL(metadata_error_message(c, i, j, value, limit));
  };
  if (qs[0] != 0) fail(MetadataCheck::kQStartsFirst, 0, 0, qs[0], 0);
  if (qs[num_seqs] != total_q)
    fail(MetadataCheck::kQStartsLast, num_seqs, 0, qs[num_seqs], total_q);
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = static_cast<int64_t>(qs[s + 1]) - qs[s];
    if (q_len < 0) fail(MetadataCheck::kQStartsDecreasing, s, 0, qs[s], qs[s + 1]);
    if (lens[s] < q_len) fail(MetadataCheck::kSeqLenShort, s, 0, lens[s], q_len);
    if (lens[s] > max_blocks * kv.block_size) {
      fail(MetadataCheck::kSeqLenLong, s, 0, lens[s], max_blocks * kv.block_size);
    }
    const int64_t used = (static_cast<int64_t>(lens[s]) + kv.block_size - 1) / kv.block_size;
    for (int64_t b = 0; b < used; ++b) {
      const int32_t block = bt[s * max_blocks + b];
      if (block < 0 || block >= kv.num_blocks) {
        fail(MetadataCheck::kBlockOutOfRange, s, b, block, kv.num_blocks);
      }
    }
  }
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> paged_attention(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, const torch::Tensor& q_starts,
    const PagedAttentionOptions& options, const torch::Tensor& k_scale,
    const torch::Tensor& v_scale) {
  TESSERA_CHECK(q.dim() == 3, "q must be 3-D [total_q, num_q_heads, head_dim], got shape ",
                q.sizes());
  TESSERA_CHECK(q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kHalf ||
                    q.scalar_type() == torch::kBFloat16,
                "q must be float32, float16 or bfloat16, got ", q.scalar_type());
  const PagedKv kv0 = detail::paged_kv_from_tensors(k_cache, v_cache, k_scale, v_scale);
  TESSERA_CHECK(q.size(2) == kv0.head_dim_k, "q head_dim=", q.size(2),
                " differs from k_cache head_dim=", kv0.head_dim_k);
  TESSERA_CHECK(q.size(1) > 0 && q.size(1) % kv0.num_kv_heads == 0, "num_q_heads=", q.size(1),
                " must be a positive multiple of num_kv_heads=", kv0.num_kv_heads);
  TESSERA_CHECK(block_tables.dim() == 2 && block_tables.scalar_type() == torch::kInt,
                "block_tables must be int32 [num_seqs, max_blocks_per_seq], got ",
                block_tables.scalar_type(), " ", block_tables.sizes());
  const int64_t num_seqs = block_tables.size(0);
  TESSERA_CHECK(
      seq_lens.dim() == 1 && seq_lens.scalar_type() == torch::kInt && seq_lens.size(0) == num_seqs,
      "seq_lens must be int32 [num_seqs=", num_seqs, "], got ", seq_lens.scalar_type(), " ",
      seq_lens.sizes());
  TESSERA_CHECK(q_starts.dim() == 1 && q_starts.scalar_type() == torch::kInt &&
                    q_starts.size(0) == num_seqs + 1,
                "q_starts must be int32 [num_seqs + 1 = ", num_seqs + 1, "], got ",
                q_starts.scalar_type(), " ", q_starts.sizes());
  for (const auto* t : {&k_cache, &block_tables, &seq_lens, &q_starts}) {
    TESSERA_CHECK(t->device() == q.device(), "all inputs must be on q's device ", q.device(),
                  ", got ", t->device());
  }
  TESSERA_CHECK(std::isfinite(options.scale), "scale must be finite, got ", options.scale);
  TESSERA_CHECK(std::isfinite(options.softcap) && options.softcap >= 0,
                "softcap must be >= 0 (0 = none), got ", options.softcap);
  TESSERA_CHECK(options.window >= 0 && options.window <= INT32_MAX,
                "window must be >= 0 (0 = none), got ", options.window);
  TESSERA_CHECK(options.chunk >= 0 && options.chunk <= INT32_MAX,
                "chunk must be >= 0 (0 = none), got ", options.chunk);

  auto qf = q.scalar_type() == torch::kFloat ? q : q.to(torch::kFloat);
  if (qf.size(2) > 1 && qf.stride(2) != 1) qf = qf.contiguous();
  auto bt = block_tables.contiguous();
  auto lens = seq_lens.contiguous();
  auto qs = q_starts.contiguous();
  auto out = torch::empty({q.size(0), q.size(1), kv0.head_dim_v}, qf.options());
  auto lse = torch::empty({q.size(0), q.size(1)}, qf.options());
  if (q.device().is_cpu()) check_metadata(bt, lens, qs, q.size(0), kv0);

  PagedAttentionView view;
  view.q = qf.data_ptr<float>();
  view.kv = kv0;
  view.block_tables = bt.data_ptr<int32_t>();
  view.seq_lens = lens.data_ptr<int32_t>();
  view.q_starts = qs.data_ptr<int32_t>();
  view.out = out.data_ptr<float>();
  view.lse = lse.data_ptr<float>();
  view.q_stride[0] = qf.stride(0);
  view.q_stride[1] = qf.stride(1);
  view.total_q = q.size(0);
  view.num_seqs = static_cast<int>(num_seqs);
  view.max_blocks_per_seq = static_cast<int>(bt.size(1));
  view.num_q_heads = static_cast<int>(q.size(1));
  view.scale = static_cast<float>(options.scale);
  view.softcap = static_cast<float>(options.softcap);
  view.window = static_cast<int>(options.window);
  view.chunk = static_cast<int>(options.chunk);
  TESSERA_CHECK(options.kv_splits >= 0 && options.kv_splits <= 4096,
                "kv_splits must be in [0, 4096] (0 = automatic), got ", options.kv_splits);
  view.kv_splits = static_cast<int>(options.kv_splits);

  route(
      "paged_attention", q.device(), options.reference, [&] { paged_attention_ref(view); },
      [&] { paged_attention_cpu(view); }, TESSERA_CUDA_IMPL([&](void* stream) {
        view.error = device_error_slot(detail::cuda_index_of(q.device()));
        return paged_attention_cuda(view, stream);
      }));
  if (q.scalar_type() != torch::kFloat) out = out.to(q.scalar_type());
  return {out, lse};
}

std::tuple<torch::Tensor, torch::Tensor> paged_decode(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens,
    const PagedAttentionOptions& options, const torch::Tensor& k_scale,
    const torch::Tensor& v_scale) {
  TESSERA_CHECK(q.dim() == 3 && q.size(0) == block_tables.size(0),
                "q must be [num_seqs, num_q_heads, head_dim] with num_seqs=", block_tables.size(0),
                ", got shape ", q.sizes());
  auto q_starts = torch::arange(q.size(0) + 1, torch::dtype(torch::kInt).device(q.device()));
  return paged_attention(q, k_cache, v_cache, block_tables, seq_lens, q_starts, options, k_scale,
                         v_scale);
}

}  // namespace tessera::kernels
