#include "kernels/ops/int8_linear_ops.h"

#include "kernels/int8_linear/int8_linear.h"
#include "kernels/ops/route.h"

namespace tessera::kernels {

std::tuple<torch::Tensor, torch::Tensor> quantize_int8_per_channel(const torch::Tensor& w,
                                                                   bool reference) {
  TESSERA_CHECK(w.dim() == 2, "int8: w must be 2-D [out_features, in_features], got shape ",
                w.sizes());
  DType dtype = DType::kF32;
  switch (w.scalar_type()) {
    case torch::kFloat:
      break;
    case torch::kHalf:
      dtype = DType::kF16;
      break;
    case torch::kBFloat16:
      dtype = DType::kBF16;
      break;
    default:
      TESSERA_FAIL("int8: w must be float32, float16 or bfloat16, got ", w.scalar_type());
  }
  auto wc = w.contiguous();
  auto q = torch::empty(w.sizes(), w.options().dtype(torch::kChar));
  auto scale = torch::empty({w.size(0)}, w.options().dtype(torch::kFloat));
  Int8QuantiseView v;
  v.w = wc.data_ptr();
  v.q = q.data_ptr<int8_t>();
  v.scale = scale.data_ptr<float>();
  v.n = w.size(0);
  v.k = w.size(1);
  v.dtype = dtype;
  if (v.k == 0) scale.fill_(1.0f);
  route(
      "int8 quantise", w.device(), reference, [&] { int8_quantise_ref(v); },
      [&] { int8_quantise_cpu(v); },
      TESSERA_CUDA_IMPL([&](void* stream) { return int8_quantise_cuda(v, stream); }));
  return {q, scale};
}

torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& q,
                          const torch::Tensor& scale, const torch::Tensor& bias, bool reference) {
  TESSERA_CHECK(x.dim() >= 1, "int8_linear: x must be [..., in_features], got a scalar");
  TESSERA_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kHalf ||
                    x.scalar_type() == torch::kBFloat16,
                "int8_linear: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TESSERA_CHECK(q.dim() == 2 && q.scalar_type() == torch::kChar,
                "int8_linear: q must be int8 [out_features, in_features], got ", q.scalar_type(),
                " ", q.sizes());
  TESSERA_CHECK(q.size(1) == x.size(-1), "int8_linear: q in_features=", q.size(1),
                " differs from x in_features=", x.size(-1));
  const int64_t n = q.size(0);
  TESSERA_CHECK(scale.dim() == 1 && scale.size(0) == n && scale.scalar_type() == torch::kFloat,
                "int8_linear: scale must be float32 [", n, "], got ", scale.scalar_type(), " ",
                scale.sizes());
  if (bias.defined()) {
    TESSERA_CHECK(bias.dim() == 1 && bias.size(0) == n && bias.scalar_type() == torch::kFloat,
                  "int8_linear: bias must be float32 [", n, "], got ", bias.scalar_type(), " ",
                  bias.sizes());
    TESSERA_CHECK(bias.device() == x.device(), "int8_linear: bias must be on ", x.device(),
                  ", got ", bias.device());
  }
  TESSERA_CHECK(q.device() == x.device() && scale.device() == x.device(),
                "int8_linear: q and scale must be on x's device ", x.device(), ", got ", q.device(),
                " and ", scale.device());
  auto x2 = x.reshape({-1, x.size(-1)}).to(torch::kFloat).contiguous();
  auto qc = q.contiguous(), sc = scale.contiguous();
  auto bc = bias.defined() ? bias.contiguous() : bias;
  auto y = torch::empty({x2.size(0), n}, x2.options());
  Int8LinearView v;
  v.x = x2.data_ptr<float>();
  v.w = qc.data_ptr<int8_t>();
  v.scale = sc.data_ptr<float>();
  v.bias = bc.defined() ? bc.data_ptr<float>() : nullptr;
  v.y = y.data_ptr<float>();
  v.m = x2.size(0);
  v.n = n;
  v.k = x2.size(1);
  v.x_row_stride = v.k;
  v.y_row_stride = n;
  route(
      "int8_linear", x.device(), reference, [&] { int8_linear_ref(v); },
      [&] { int8_linear_cpu(v); }, TESSERA_CUDA_IMPL([&](void* stream) {
        int8_linear_check(v);
        return int8_linear_cuda(v, stream);
      }));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return y.view(shape).to(x.scalar_type());
}

}  // namespace tessera::kernels
