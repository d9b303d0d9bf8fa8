// Torch-facing cluster attention: checks tensors, builds the torch-free views of
// kernels/cluster_attention/ and routes by device (CPU fast path, CUDA, or the fp64 reference on
// request). No autograd here: see cluster_attention_autograd.h for differentiable versions.
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

enum class ClusterImpl {
  kAuto,       // fast CPU on CPU tensors, CUDA on CUDA tensors
  kReference,  // fp64 reference (CPU tensors only)
};

// Inputs of the fused cluster attention (semantics in
// kernels/cluster_attention/cluster_attention.h). Undefined tensors mean "absent".
struct ClusterAttentionInputs {
  torch::Tensor q, k, v;  // [B, H, N, D] float32 / float16 / bfloat16, any strides, same dtype
  torch::Tensor idx;      // [B, N, M] int32 / int64 in [0, N); undefined = global (M = N)
  torch::Tensor bias;     // [B, H, N, M] additive logit bias
  torch::Tensor pos;      // [B, N, 2] token positions, for the fused position bias
  torch::Tensor pe_w;     // [H, 5] position-bias projection (needs pos)
  torch::Tensor pe_b;     // [H] its bias (optional with pe_w)
  torch::Tensor mask;     // [B, 1 | H, N, M] bool / uint8, true = attend
  torch::Tensor blank_k;  // [H, D] blank key (with blank_v)
  torch::Tensor blank_v;  // [H, D] blank value
  double scale = 1.0;
  double dropout_p = 0.0;  // in [0, 1)
  int64_t seed = 0;        // dropout mask seed: the same seed gives the same mask
};

// Returns (out [B, H, N, D] in q's dtype, or float32 with fp32_out, lse [B, H, N] float32).
// For fp16 / bf16 inputs keep the fp32 output for the backward: it reads dout . out per row.
// weights: when given, the fast CPU path also returns the softmax weights [B, H, N, M + 1] float32
// there, for cluster_attention_backward to read instead of recomputing (it stays undefined on
// other paths).
std::tuple<torch::Tensor, torch::Tensor> cluster_attention_forward(
    const ClusterAttentionInputs& in, ClusterImpl impl = ClusterImpl::kAuto, bool fp32_out = false,
    torch::Tensor* weights = nullptr);

struct ClusterAttentionGradients {
  torch::Tensor dq, dk, dv;          // [B, H, N, D] in q's dtype
  torch::Tensor dbias;               // [B, H, N, M] (when bias was given)
  torch::Tensor dpe_w, dpe_b;        // [H, 5], [H] (when pe_w / pe_b were given)
  torch::Tensor dblank_k, dblank_v;  // [H, D] (with a blank token)
};

// dout [B, H, N, D]; out / lse from cluster_attention_forward on the same inputs. deterministic
// reduces dk / dv per key through an inverse index (bitwise reproducible on CUDA too).
// weights: the forward's softmax weights (see cluster_attention_forward), or undefined.
ClusterAttentionGradients cluster_attention_backward(
    const ClusterAttentionInputs& in, const torch::Tensor& out, const torch::Tensor& lse,
    const torch::Tensor& dout, bool deterministic = false, ClusterImpl impl = ClusterImpl::kAuto,
    const torch::Tensor& weights = {});

// Unfused primitives (kernels/cluster_attention/cluster_primitives.h). Float inputs of any float
// dtype (computed in float32, returned in the input dtype; float64 runs the fp64 reference on
// CPU); idx int32 / int64.
torch::Tensor cluster_qk_forward(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& idx, ClusterImpl impl = ClusterImpl::kAuto);
std::tuple<torch::Tensor, torch::Tensor> cluster_qk_backward(
    const torch::Tensor& dattn, const torch::Tensor& q, const torch::Tensor& k,
    const torch::Tensor& idx, ClusterImpl impl = ClusterImpl::kAuto);  // (dq, dk)
torch::Tensor cluster_av_forward(const torch::Tensor& attn, const torch::Tensor& v,
                                 const torch::Tensor& idx, ClusterImpl impl = ClusterImpl::kAuto);
std::tuple<torch::Tensor, torch::Tensor> cluster_av_backward(
    const torch::Tensor& dout, const torch::Tensor& attn, const torch::Tensor& v,
    const torch::Tensor& idx, ClusterImpl impl = ClusterImpl::kAuto);  // (dattn, dv)
torch::Tensor cluster_wf_forward(const torch::Tensor& w, const torch::Tensor& f,
                                 const torch::Tensor& idx, ClusterImpl impl = ClusterImpl::kAuto);
std::tuple<torch::Tensor, torch::Tensor> cluster_wf_backward(
    const torch::Tensor& dout, const torch::Tensor& w, const torch::Tensor& f,
    const torch::Tensor& idx, ClusterImpl impl = ClusterImpl::kAuto);  // (dw, df)

}  // namespace tessera::kernels
