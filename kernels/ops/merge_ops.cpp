#include "kernels/ops/merge_ops.h"

#include "common/error.h"
#include "kernels/merge/lse_merge.h"
#include "kernels/ops/route.h"

namespace tessera::kernels {

std::tuple<torch::Tensor, torch::Tensor> merge_attention_states(const torch::Tensor& outs,
                                                                const torch::Tensor& lses,
                                                                bool reference) {
  TESSERA_CHECK(outs.dim() >= 2 && lses.dim() == outs.dim() - 1,
                "outs must be [P, ..., head_dim] "
                "and lses [P, ...], got shapes ",
                outs.sizes(), " and ", lses.sizes());
  TESSERA_CHECK(outs.sizes().slice(0, outs.dim() - 1) == lses.sizes(), "outs shape ", outs.sizes(),
                " does not match lses shape ", lses.sizes());
  TESSERA_CHECK(outs.scalar_type() == torch::kFloat && lses.scalar_type() == torch::kFloat,
                "outs and lses must be float32, got ", outs.scalar_type(), " and ",
                lses.scalar_type());
  TESSERA_CHECK(outs.size(0) >= 1, "need at least one part, got P=", outs.size(0));
  TESSERA_CHECK(outs.device() == lses.device(), "outs are on ", outs.device(), " but lses on ",
                lses.device());
  auto o = outs.contiguous();
  auto l = lses.contiguous();
  auto out = torch::empty(outs.sizes().slice(1), outs.options());
  auto lse = torch::empty(lses.sizes().slice(1), lses.options());
  LseMergeView v;
  v.outs = o.data_ptr<float>();
  v.lses = l.data_ptr<float>();
  v.out = out.data_ptr<float>();
  v.lse = lse.data_ptr<float>();
  v.num_parts = outs.size(0);
  v.head_dim = outs.size(-1);
  v.rows = v.head_dim == 0 ? 0 : o.numel() / (v.num_parts * v.head_dim);
  if (v.head_dim == 0) v.rows = l.numel() / v.num_parts;
  route(
      "merge_attention_states", outs.device(), reference, [&] { lse_merge_ref(v); },
      [&] { lse_merge_cpu(v); },
      TESSERA_CUDA_IMPL([&](void* stream) { return lse_merge_cuda(v, stream); }));
  return {out, lse};
}

}  // namespace tessera::kernels
