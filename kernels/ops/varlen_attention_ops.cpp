#include "kernels/ops/varlen_attention_ops.h"

#include <cmath>

#include "common/error.h"
#include "kernels/ops/paged_kv_tensors.h"
#include "kernels/ops/route.h"
#include "kernels/varlen_attention/varlen_attention.h"

namespace tessera::kernels {

namespace {

torch::Tensor as_float(const torch::Tensor& t, const char* name) {
  TESSERA_CHECK(t.dim() == 3, name, " must be 3-D [tokens, heads, head_dim], got shape ",
                t.sizes());
  TESSERA_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kHalf ||
                    t.scalar_type() == torch::kBFloat16,
                name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  auto f = t.scalar_type() == torch::kFloat ? t : t.to(torch::kFloat);
  if (f.size(2) > 1 && f.stride(2) != 1) f = f.contiguous();
  return f;
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> varlen_attention(const torch::Tensor& q,
                                                          const torch::Tensor& k,
                                                          const torch::Tensor& v,
                                                          const torch::Tensor& cu_seqlens,
                                                          const VarlenAttentionOptions& options) {
  auto qf = as_float(q, "q"), kf = as_float(k, "k"), vf = as_float(v, "v");
  TESSERA_CHECK(k.sizes() == v.sizes(), "k shape ", k.sizes(), " must equal v shape ", v.sizes());
  TESSERA_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2), "q shape ", q.sizes(),
                " and k shape ", k.sizes(), " must agree on tokens and head_dim");
  TESSERA_CHECK(k.device() == q.device() && v.device() == q.device(),
                "q, k and v must be on one device, got ", q.device(), ", ", k.device(), ", ",
                v.device());
  TESSERA_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 &&
                    cu_seqlens.scalar_type() == torch::kInt && cu_seqlens.device().is_cpu(),
                "cu_seqlens must be a CPU int32 [num_seqs + 1] tensor, got ",
                cu_seqlens.scalar_type(), " ", cu_seqlens.sizes(), " on ", cu_seqlens.device());
  TESSERA_CHECK(std::isfinite(options.scale), "scale must be finite, got ", options.scale);
  TESSERA_CHECK(options.window <= INT32_MAX, "window must fit in int32, got ", options.window);
  auto cu = cu_seqlens.contiguous();
  auto out = torch::empty({q.size(0), q.size(1), q.size(2)}, qf.options());
  auto lse = torch::empty({q.size(0), q.size(1)}, qf.options());

  VarlenAttentionView view;
  view.q = qf.data_ptr<float>();
  view.k = kf.data_ptr<float>();
  view.v = vf.data_ptr<float>();
  view.cu_seqlens = cu.data_ptr<int32_t>();
  view.out = out.data_ptr<float>();
  view.lse = lse.data_ptr<float>();
  for (int i = 0; i < 2; ++i) {
    view.q_stride[i] = qf.stride(i);
    view.k_stride[i] = kf.stride(i);
    view.v_stride[i] = vf.stride(i);
  }
  view.total = q.size(0);
  view.num_seqs = static_cast<int>(cu.size(0) - 1);
  view.num_q_heads = static_cast<int>(q.size(1));
  view.num_kv_heads = static_cast<int>(k.size(1));
  view.head_dim = static_cast<int>(q.size(2));
  view.scale = static_cast<float>(options.scale);
  view.window = options.window < 0 ? -1 : static_cast<int>(options.window);
  varlen_attention_check(view);

  torch::Tensor cu_dev;  // the offsets on the device, alive until the launch returns
  route(
      "varlen_attention", q.device(), options.reference, [&] { varlen_attention_ref(view); },
      [&] { varlen_attention_cpu(view); }, TESSERA_CUDA_IMPL([&](void* stream) {
        cu_dev = cu.to(q.device());
        view.cu_seqlens = cu_dev.data_ptr<int32_t>();
        return varlen_attention_cuda(view, stream);
      }));
  if (q.scalar_type() != torch::kFloat) out = out.to(q.scalar_type());
  return {out, lse};
}

}  // namespace tessera::kernels
