// Torch-facing int8 weight-only linear (see kernels/int8_linear/int8_linear.h).
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

// w [out_features, in_features] float32 / float16 / bfloat16. Returns (q int8 [out, in],
// scale float32 [out]): per-output-channel symmetric absmax quantisation.
std::tuple<torch::Tensor, torch::Tensor> quantize_int8_per_channel(const torch::Tensor& w,
                                                                   bool reference = false);

// y [..., out_features] = x [..., in_features] (q * scale)^T + bias, computed from the int8
// weights without a float32 copy of them. x float32, float16 or bfloat16 (computed in float32,
// returned in x's dtype); q int8 [out, in] contiguous; scale float32 [out]; bias float32 [out] or
// undefined. All on one device.
torch::Tensor int8_linear(const torch::Tensor& x, const torch::Tensor& q,
                          const torch::Tensor& scale, const torch::Tensor& bias = {},
                          bool reference = false);

// Bytes the quantised weight holds (int8 values plus float32 scales).
inline int64_t int8_weight_bytes(const torch::Tensor& q, const torch::Tensor& scale) {
  return q.numel() * q.element_size() + scale.numel() * scale.element_size();
}

}  // namespace tessera::kernels
