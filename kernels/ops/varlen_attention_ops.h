// Torch-facing varlen bidirectional attention (see kernels/varlen_attention/varlen_attention.h):
// checks tensors, builds the view and routes by device to the fast CPU, reference or CUDA kernel.
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

struct VarlenAttentionOptions {
  double scale = 1.0;
  int64_t window = -1;     // < 0: the whole sequence; >= 0: keys with |i - j| <= window
  bool reference = false;  // CPU only: the fp64 reference instead of the fast kernel
};

// q [total, Hq, D], k / v [total, Hkv, D] (float32, float16 or bfloat16 — computed in float32 —
// head_dim contiguous, one device), cu_seqlens int32 [num_seqs + 1] on the CPU (host metadata,
// validated before any kernel reads it; copied to the device for CUDA inputs). Returns
// (out [total, Hq, D] in q's dtype, lse [total, Hq] float32).
std::tuple<torch::Tensor, torch::Tensor> varlen_attention(const torch::Tensor& q,
                                                          const torch::Tensor& k,
                                                          const torch::Tensor& v,
                                                          const torch::Tensor& cu_seqlens,
                                                          const VarlenAttentionOptions& options);

}  // namespace tessera::kernels
