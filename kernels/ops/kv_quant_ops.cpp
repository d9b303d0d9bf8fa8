#include "kernels/ops/kv_quant_ops.h"

#include "common/error.h"
#include "kernels/ops/route.h"
#include "kernels/quant/kv_quant.h"

namespace tessera::kernels {

std::tuple<torch::Tensor, torch::Tensor> quantize_kv(const torch::Tensor& x,
                                                     const std::string& format, bool reference) {
  TESSERA_CHECK(format == "int8" || format == "fp8_e4m3",
                "format must be \"int8\" or \"fp8_e4m3\", got \"", format, "\"");
  TESSERA_CHECK(x.dim() >= 1, "x must be [..., head_dim], got a scalar");
  TESSERA_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kHalf ||
                    x.scalar_type() == torch::kBFloat16,
                "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  const bool int8 = format == "int8";
  auto xf = x.to(torch::kFloat).contiguous();
  auto q = torch::empty(x.sizes(), xf.options().dtype(int8 ? torch::kChar : torch::kByte));
  auto scale = torch::empty(x.sizes().slice(0, x.dim() - 1), xf.options());
  KvQuantView v;
  v.x = xf.data_ptr<float>();
  v.q = q.data_ptr();
  v.scale = scale.data_ptr<float>();
  v.head_dim = static_cast<int>(x.size(-1));
  v.x_row_stride = v.head_dim;
  v.rows = v.head_dim == 0 ? 0 : xf.numel() / v.head_dim;
  v.dtype = int8 ? KvDType::kI8 : KvDType::kF8E4M3;
  if (v.head_dim == 0) scale.fill_(1.0f);
  route(
      "quantize_kv", x.device(), reference, [&] { kv_quantise_ref(v); },
      [&] { kv_quantise_cpu(v); },
      TESSERA_CUDA_IMPL([&](void* stream) { return kv_quantise_cuda(v, stream); }));
  return {q, scale};
}

torch::Tensor dequantize_kv(const torch::Tensor& q, const torch::Tensor& scale, bool reference) {
  TESSERA_CHECK(q.dim() >= 1, "q must be [..., head_dim], got a scalar");
  TESSERA_CHECK(q.scalar_type() == torch::kChar || q.scalar_type() == torch::kByte,
                "q must be int8 or uint8 (fp8 e4m3), got ", q.scalar_type());
  TESSERA_CHECK(scale.scalar_type() == torch::kFloat, "scale must be float32, got ",
                scale.scalar_type());
  TESSERA_CHECK(scale.sizes() == q.sizes().slice(0, q.dim() - 1), "scale must be ",
                q.sizes().slice(0, q.dim() - 1), " (q's shape without head_dim), got ",
                scale.sizes());
  TESSERA_CHECK(scale.device() == q.device(), "scale must be on q's device ", q.device(), ", got ",
                scale.device());
  auto qc = q.contiguous();
  auto sc = scale.contiguous();
  auto x = torch::empty(q.sizes(), sc.options());
  KvDequantView v;
  v.q = qc.data_ptr();
  v.scale = sc.data_ptr<float>();
  v.x = x.data_ptr<float>();
  v.head_dim = static_cast<int>(q.size(-1));
  v.rows = v.head_dim == 0 ? 0 : qc.numel() / v.head_dim;
  v.dtype = q.scalar_type() == torch::kChar ? KvDType::kI8 : KvDType::kF8E4M3;
  route(
      "dequantize_kv", q.device(), reference, [&] { kv_dequantise_ref(v); },
      [&] { kv_dequantise_cpu(v); },
      TESSERA_CUDA_IMPL([&](void* stream) { return kv_dequantise_cuda(v, stream); }));
  return x;
}

}  // namespace tessera::kernels
