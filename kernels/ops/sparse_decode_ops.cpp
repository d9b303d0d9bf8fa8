#include "kernels/ops/sparse_decode_ops.h"

#include <cmath>

#include "kernels/common/device_error.h"
#include "kernels/ops/paged_kv_tensors.h"
#include "kernels/ops/route.h"
#include "kernels/sparse_decode/sparse_attention.h"

namespace tessera::kernels {

namespace {

// Lists, lengths and block tables must name valid pages before any kernel reads them.
void check_metadata(const torch::Tensor& block_tables, const torch::Tensor& seq_lens,
                    const torch::Tensor& idx, const torch::Tensor& counts, const PagedKv& kv) {
  const auto* bt = block_tables.data_ptr<int32_t>();
  const auto* lens = seq_lens.data_ptr<int32_t>();
  const auto* ix = idx.data_ptr<int32_t>();
  const auto* cnt = counts.data_ptr<int32_t>();
  const int64_t num_seqs = seq_lens.size(0);
  const int64_t max_blocks = block_tables.size(1);
  const int64_t heads = idx.size(1), max_entries = idx.size(2);
  // The messages the CUDA kernel's device-side checks record (kernels/common/device_error.h).
  auto fail = [](MetadataCheck c, int64_t i, int64_t j, int64_t value, int64_t limit,
                 int64_t k = 0) { TESSERA_FAIL(metadata_error_message(c, i, j, value, limit, k)); };
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (lens[s] < 0) fail(MetadataCheck::kSeqLenNegative, s, 0, lens[s], 0);
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
    for (int64_t h = 0; h < heads; ++h) {
      const int32_t n = cnt[s * heads + h];
      if (n < 0 || n > max_entries) fail(MetadataCheck::kCountOutOfRange, s, h, n, max_entries);
      const int32_t* list = ix + (s * heads + h) * max_entries;
      for (int32_t e = 0; e < n; ++e) {
        if (list[e] < 0 || list[e] >= lens[s]) {
          fail(MetadataCheck::kEntryOutOfRange, s, h, list[e], lens[s], e);
        }
      }
    }
  }
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> sparse_paged_decode(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, const torch::Tensor& idx,
    const torch::Tensor& counts, const SparseDecodeOptions& options, const torch::Tensor& k_scale,
    const torch::Tensor& v_scale) {
  TESSERA_CHECK(q.dim() == 3, "q must be 3-D [num_seqs, num_q_heads, head_dim], got shape ",
                q.sizes());
  TESSERA_CHECK(q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kHalf ||
                    q.scalar_type() == torch::kBFloat16,
                "q must be float32, float16 or bfloat16, got ", q.scalar_type());
  const PagedKv kv = detail::paged_kv_from_tensors(k_cache, v_cache, k_scale, v_scale);
  TESSERA_CHECK(q.size(2) == kv.head_dim_k, "q head_dim=", q.size(2),
                " differs from k_cache head_dim=", kv.head_dim_k);
  TESSERA_CHECK(q.size(1) > 0 && q.size(1) % kv.num_kv_heads == 0, "num_q_heads=", q.size(1),
                " must be a positive multiple of num_kv_heads=", kv.num_kv_heads);
  const int64_t num_seqs = q.size(0);
  TESSERA_CHECK(block_tables.dim() == 2 && block_tables.scalar_type() == torch::kInt &&
                    block_tables.size(0) == num_seqs,
                "block_tables must be int32 [num_seqs=", num_seqs, ", max_blocks_per_seq], got ",
                block_tables.scalar_type(), " ", block_tables.sizes());
  TESSERA_CHECK(
      seq_lens.dim() == 1 && seq_lens.scalar_type() == torch::kInt && seq_lens.size(0) == num_seqs,
      "seq_lens must be int32 [num_seqs=", num_seqs, "], got ", seq_lens.scalar_type(), " ",
      seq_lens.sizes());
  TESSERA_CHECK(idx.dim() == 3 && idx.scalar_type() == torch::kInt && idx.size(0) == num_seqs &&
                    idx.size(1) == kv.num_kv_heads,
                "idx must be int32 [num_seqs=", num_seqs, ", num_kv_heads=", kv.num_kv_heads,
                ", max_entries], got ", idx.scalar_type(), " ", idx.sizes());
  TESSERA_CHECK(idx.size(2) <= INT32_MAX, "idx max_entries=", idx.size(2), " exceeds int32");
  TESSERA_CHECK(counts.dim() == 2 && counts.scalar_type() == torch::kInt &&
                    counts.size(0) == num_seqs && counts.size(1) == kv.num_kv_heads,
                "counts must be int32 [num_seqs=", num_seqs, ", num_kv_heads=", kv.num_kv_heads,
                "], got ", counts.scalar_type(), " ", counts.sizes());
  for (const auto* t : {&k_cache, &block_tables, &seq_lens, &idx, &counts}) {
    TESSERA_CHECK(t->device() == q.device(), "all inputs must be on q's device ", q.device(),
                  ", got ", t->device());
  }
  TESSERA_CHECK(std::isfinite(options.scale), "scale must be finite, got ", options.scale);
  TESSERA_CHECK(options.splits >= 0 && options.splits <= 4096,
                "splits must be in [0, 4096] (0 = automatic), got ", options.splits);

  auto qf = q.scalar_type() == torch::kFloat ? q : q.to(torch::kFloat);
  if (qf.size(2) > 1 && qf.stride(2) != 1) qf = qf.contiguous();
  auto bt = block_tables.contiguous();
  auto lens = seq_lens.contiguous();
  auto ix = idx.contiguous();
  auto cnt = counts.contiguous();
  if (q.device().is_cpu()) check_metadata(bt, lens, ix, cnt, kv);
  auto out = torch::empty({num_seqs, q.size(1), kv.head_dim_v}, qf.options());
  auto lse = torch::empty({num_seqs, q.size(1)}, qf.options());

  SparseDecodeView view;
  view.q = qf.data_ptr<float>();
  view.kv = kv;
  view.block_tables = bt.data_ptr<int32_t>();
  view.idx = ix.data_ptr<int32_t>();
  view.counts = cnt.data_ptr<int32_t>();
  view.out = out.data_ptr<float>();
  view.lse = lse.data_ptr<float>();
  view.q_stride[0] = qf.stride(0);
  view.q_stride[1] = qf.stride(1);
  view.num_seqs = static_cast<int>(num_seqs);
  view.max_blocks_per_seq = static_cast<int>(bt.size(1));
  view.num_q_heads = static_cast<int>(q.size(1));
  view.max_entries = static_cast<int>(ix.size(2));
  view.scale = static_cast<float>(options.scale);
  view.splits = static_cast<int>(options.splits);

  route(
      "sparse_paged_decode", q.device(), options.reference, [&] { sparse_decode_ref(view); },
      [&] { sparse_decode_cpu(view); }, TESSERA_CUDA_IMPL([&](void* stream) {
        // Split long lists when the (sequence, head) rows alone would leave the GPU idle.
        int splits = static_cast<int>(options.splits);
        if (splits == 0) {
          const int64_t rows = num_seqs * q.size(1);
          splits = rows >= 256 ? 1 : static_cast<int>(std::clamp<int64_t>(ix.size(2) / 512, 1, 16));
        }
        view.seq_lens = lens.data_ptr<int32_t>();
        view.error = device_error_slot(detail::cuda_index_of(q.device()));
        torch::Tensor ws;
        const int64_t ws_floats = sparse_decode_cuda_workspace(view, splits);
        if (ws_floats > 0) ws = torch::empty({ws_floats}, qf.options());
        return sparse_decode_cuda(view, splits, ws_floats > 0 ? ws.data_ptr<float>() : nullptr,
                                  stream);
      }));
  if (q.scalar_type() != torch::kFloat) out = out.to(q.scalar_type());
  return {out, lse};
}

}  // namespace tessera::kernels
