#include "kernels/ops/attention_ops.h"

#include "common/error.h"
#include "kernels/attention/attention.h"
#include "kernels/ops/route.h"

namespace tessera::kernels {

namespace {
void check_4d(const torch::Tensor& t, const char* name) {
  TESSERA_CHECK(t.dim() == 4, name, " must be 4-D [batch, tokens, heads, head_dim], got shape ",
                t.sizes());
  TESSERA_CHECK(t.scalar_type() == torch::kFloat, name, " must be float32, got ", t.scalar_type());
  TESSERA_CHECK(t.size(3) == 0 || t.stride(3) == 1, name,
                " must have a contiguous head_dim (stride 1), got stride ", t.stride(3));
}
}  // namespace

std::tuple<torch::Tensor, torch::Tensor> attention(const torch::Tensor& q, const torch::Tensor& k,
                                                   const torch::Tensor& v,
                                                   const torch::Tensor& q_pos,
                                                   const torch::Tensor& k_pos, double scale,
                                                   int64_t window) {
  check_4d(q, "q");
  check_4d(k, "k");
  check_4d(v, "v");
  TESSERA_CHECK(k.sizes() == v.sizes(), "k and v shapes differ: ", k.sizes(), " vs ", v.sizes());
  TESSERA_CHECK(q.size(0) == k.size(0), "q batch=", q.size(0), " differs from k batch=", k.size(0));
  TESSERA_CHECK(q.size(3) == k.size(3), "q head_dim=", q.size(3),
                " differs from k head_dim=", k.size(3));
  TESSERA_CHECK(k.size(2) > 0 && q.size(2) % k.size(2) == 0, "num_q_heads=", q.size(2),
                " is not a multiple of num_kv_heads=", k.size(2));
  TESSERA_CHECK(q_pos.scalar_type() == torch::kLong && k_pos.scalar_type() == torch::kLong,
                "q_pos and k_pos must be int64, got ", q_pos.scalar_type(), " and ",
                k_pos.scalar_type());
  TESSERA_CHECK(q_pos.sizes() == q.sizes().slice(0, 2), "q_pos shape ", q_pos.sizes(),
                " must be [batch, q_len] = ", q.sizes().slice(0, 2));
  TESSERA_CHECK(k_pos.sizes() == k.sizes().slice(0, 2), "k_pos shape ", k_pos.sizes(),
                " must be [batch, kv_len] = ", k.sizes().slice(0, 2));
  for (const auto* t : {&k, &v, &q_pos, &k_pos}) {
    TESSERA_CHECK(t->device() == q.device(), "all inputs must be on q's device ", q.device(),
                  ", got ", t->device());
  }
  TESSERA_CHECK(window >= 0, "window must be >= 0 (0 = no window), got ", window);

  auto qp = q_pos.contiguous();
  auto kp = k_pos.contiguous();
  auto out = torch::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  auto lse = torch::empty({q.size(0), q.size(2), q.size(1)}, q.options());

  AttentionView view;
  view.q = q.data_ptr<float>();
  view.k = k.data_ptr<float>();
  view.v = v.data_ptr<float>();
  view.q_pos = qp.data_ptr<int64_t>();
  view.k_pos = kp.data_ptr<int64_t>();
  view.out = out.data_ptr<float>();
  view.lse = lse.data_ptr<float>();
  for (int i = 0; i < 3; ++i) {
    view.q_stride[i] = q.stride(i);
    view.k_stride[i] = k.stride(i);
    view.v_stride[i] = v.stride(i);
  }
  view.batch = static_cast<int>(q.size(0));
  view.q_len = static_cast<int>(q.size(1));
  view.kv_len = static_cast<int>(k.size(1));
  view.num_q_heads = static_cast<int>(q.size(2));
  view.num_kv_heads = static_cast<int>(k.size(2));
  view.head_dim = static_cast<int>(q.size(3));
  view.scale = static_cast<float>(scale);
  view.window = window;

  // Positioned-KV attention has no fast CPU kernel: on the CPU it is the fp64 reference, the
  // oracle that the paged kernels are tested against (the product runs the paged kernels).
  route(
      "attention", q.device(), /*reference=*/false, [&] { attention_ref(view); },
      [&] { attention_ref(view); },
      TESSERA_CUDA_IMPL([&](void* stream) { return attention_cuda(view, stream); }));
  return {out, lse};
}

}  // namespace tessera::kernels
