// Torch-facing attention entry point: checks tensors, builds the AttentionView and routes by
// device to the CPU or CUDA implementation. The only attention code that sees torch::Tensor.
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

// q [B, T, Hq, D], k / v [B, S, Hkv, D] (float32, any strides with head_dim contiguous),
// q_pos [B, T] and k_pos [B, S] int64 (k_pos -1 marks an empty slot). Returns
// (out [B, T, Hq, D], lse [B, Hq, T]). window = 0 means no sliding window.
std::tuple<torch::Tensor, torch::Tensor> attention(const torch::Tensor& q, const torch::Tensor& k,
                                                   const torch::Tensor& v,
                                                   const torch::Tensor& q_pos,
                                                   const torch::Tensor& k_pos, double scale,
                                                   int64_t window = 0);

}  // namespace tessera::kernels
