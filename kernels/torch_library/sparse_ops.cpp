// Torch op registration of sparse decode: attention of one query per sequence over per-kv-head
// token lists of a paged cache (kernels/ops/sparse_decode_ops.h). Inference op, no autograd.
#include <torch/library.h>

#include "kernels/ops/sparse_decode_ops.h"

namespace tessera::kernels {

namespace {

using OptTensor = c10::optional<torch::Tensor>;

std::tuple<torch::Tensor, torch::Tensor> sparse_paged_decode_op(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, const torch::Tensor& idx,
    const torch::Tensor& counts, double scale, const OptTensor& k_scale, const OptTensor& v_scale,
    bool reference, int64_t splits) {
  SparseDecodeOptions o;
  o.scale = scale;
  o.reference = reference;
  o.splits = splits;
  return sparse_paged_decode(q, k_cache, v_cache, block_tables, seq_lens, idx, counts, o,
                             k_scale.has_value() ? *k_scale : torch::Tensor(),
                             v_scale.has_value() ? *v_scale : torch::Tensor());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tessera, m) {
  m.def(
      "sparse_paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor seq_lens, Tensor idx, Tensor counts, float scale, Tensor? k_scale=None, "
      "Tensor? v_scale=None, bool reference=False, int splits=0) -> (Tensor, Tensor)",
      &sparse_paged_decode_op);
}

}  // namespace tessera::kernels
