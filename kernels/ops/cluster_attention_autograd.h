// Differentiable cluster attention: autograd Functions around the fused kernel and the unfused
// QK / AV / WF primitives, so training code gets their gradients from loss.backward(). The
// Functions live in the .cpp; this header needs only <torch/types.h>.
#pragma once

#include <torch/types.h>

#include <tuple>

#include "kernels/ops/cluster_attention_ops.h"

namespace tessera::kernels {

// Fused cluster attention (see ClusterAttentionInputs). Returns (out [B, H, N, D] in q's dtype,
// lse [B, H, N] float32). Gradients flow to q, k, v, bias, pe_w, pe_b, blank_k and blank_v; lse is
// returned for merging partial results and is not differentiable. The backward reuses the
// forward's dropout seed, so it sees the very same mask. deterministic selects the inverse-index
// reduction of dk / dv.
std::tuple<torch::Tensor, torch::Tensor> cluster_attention(const ClusterAttentionInputs& in,
                                                           bool deterministic = false);

// attn [B, H, N, M] = QK(q [B, H, N, D], k [B, H, N, D], idx [B, N, M]); differentiable in q, k.
torch::Tensor cluster_qk(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& idx);
// out [B, H, N, D] = AV(attn [B, H, N, M], v [B, H, N, D], idx); differentiable in attn, v.
torch::Tensor cluster_av(const torch::Tensor& attn, const torch::Tensor& v,
                         const torch::Tensor& idx);
// out [B, N', IC, C] = WF(w [B, N', M, IC], f [B, N, C], idx [B, N', M]); differentiable in w, f.
torch::Tensor cluster_wf(const torch::Tensor& w, const torch::Tensor& f, const torch::Tensor& idx);

}  // namespace tessera::kernels
