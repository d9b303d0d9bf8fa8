// Torch-facing LSE merge (see kernels/merge/lse_merge.h).
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

// outs [P, ..., head_dim] float32, lses [P, ...] float32 (the same leading shape). Returns
// (out [..., head_dim], lse [...]). Routes by device to the fast CPU or CUDA kernel;
// reference = true runs the fp64 CPU reference instead (CPU only).
std::tuple<torch::Tensor, torch::Tensor> merge_attention_states(const torch::Tensor& outs,
                                                                const torch::Tensor& lses,
                                                                bool reference = false);

}  // namespace tessera::kernels
