// Torch-facing KV quantisation (see kernels/quant/kv_quant.h).
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>

namespace tessera::kernels {

// x [..., head_dim] float32 / float16 / bfloat16; format "int8" or "fp8_e4m3". Returns
// (q [..., head_dim] int8, or uint8 holding e4m3 bits; scale [...] float32): one scale per row.
std::tuple<torch::Tensor, torch::Tensor> quantize_kv(const torch::Tensor& x,
                                                     const std::string& format,
                                                     bool reference = false);

// q int8 or uint8 (fp8 e4m3) [..., head_dim], scale [...] float32. Returns float32 [..., head_dim].
torch::Tensor dequantize_kv(const torch::Tensor& q, const torch::Tensor& scale,
                            bool reference = false);

}  // namespace tessera::kernels
