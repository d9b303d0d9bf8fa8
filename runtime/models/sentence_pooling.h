// sentence-transformers' Pooling and Normalize modules over a packed batch (token states of the
// sequences concatenated, cu_seqlens marking where each starts): cls, max, mean,
// mean_sqrt_len_tokens, weightedmean and lasttoken, concatenated in sentence-transformers' order,
// with include_prompt = false leaving each input's prompt tokens out; and the L2 normalisation.
// Edge cases follow sentence-transformers: a sequence whose tokens are all masked pools to 0
// (mean, lasttoken) or -1e9 (max).
#pragma once

#include <torch/types.h>

#include <vector>

#include "runtime/models/sentence_config.h"

namespace tessera::models {

// states [T, H] float32, cu_seqlens int32 [B + 1] (CPU); prompt_lengths empty or [B]: tokens at
// the start of each input that belong to its prompt (masked when !config.include_prompt).
// Returns [B, modes * H].
torch::Tensor pool_sentences(const torch::Tensor& states, const torch::Tensor& cu_seqlens,
                             const PoolingConfig& config,
                             const std::vector<int64_t>& prompt_lengths = {});

// Rows divided by max(||row||_2, 1e-12), as torch.nn.functional.normalize.
torch::Tensor l2_normalize(const torch::Tensor& x);

}  // namespace tessera::models
