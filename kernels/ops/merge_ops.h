// Torch-facing LSE merge (see kernels/merge/lse_merge.h).
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

// outs [P, ..., head_dim] float32, lses [P, ...] float32 (the same leading shape). Returns
// (out [..., head_dim], lse [...]).
std::tuple<torch::Tensor, torch::Tensor> merge_attention_states(const torch::Tensor& outs,
                                                                const torch::Tensor& lses);

}  // namespace tessera::kernels
