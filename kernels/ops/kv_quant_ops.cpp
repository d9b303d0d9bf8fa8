#include "kernels/ops/kv_quant_ops.h"

#include "kernels/ops/paged_kv_tensors.h"
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
  if (x.device().is_cpu()) {
    reference ? kv_quantise_ref(v) : kv_quantise_cpu(v);
  } else if (x.device().is_cuda()) {
#ifdef TESSERA_WITH_CUDA
    const int rc = kv_quantise_cuda(v, detail::cuda_stream_of(x.device()));
    TESSERA_CHECK(rc == 0, "quantize_kv CUDA kernel launch failed with cudaError ", rc);
#else
    TESSERA_FAIL("quantize_kv: got CUDA tensors but Tessera was built without CUDA");
#endif
  } else {
    TESSERA_FAIL("quantize_kv: unsupported device ", x.device());
  }
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
  if (q.device().is_cpu()) {
    reference ? kv_dequantise_ref(v) : kv_dequantise_cpu(v);
  } else if (q.device().is_cuda()) {
#ifdef TESSERA_WITH_CUDA
    const int rc = kv_dequantise_cuda(v, detail::cuda_stream_of(q.device()));
    TESSERA_CHECK(rc == 0, "dequantize_kv CUDA kernel launch failed with cudaError ", rc);
#else
    TESSERA_FAIL("dequantize_kv: got CUDA tensors but Tessera was built without CUDA");
#endif
  } else {
    TESSERA_FAIL("dequantize_kv: unsupported device ", q.device());
  }
  return x;
}

}  // namespace tessera::kernels
