// Bidirectional attention of an encoder over a packed batch (sequences concatenated, cu_seqlens
// marking where each starts): dense — every key of the query's sequence, or those within a
// symmetric window, through kernels/varlen_attention — or cluster attention (AutoFocusFormer-style
// for text: each sequence cut into clusters of consecutive tokens, each token attending to the
// tokens of the clusters nearest its own, through the fused cluster-attention kernel). With
// clusters covering whole sequences cluster attention equals dense attention.
#pragma once

#include <torch/types.h>

#include <memory>

#include "runtime/models/encoder_config.h"

namespace tessera::models {

class EncoderAttention {
 public:
  virtual ~EncoderAttention() = default;
  // q, k, v [T, H, D] (rotary already applied); cu_seqlens int32 [B + 1] on the CPU; window < 0:
  // the whole sequence, else keys with |i - j| <= window. Returns [T, H * D].
  virtual torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& cu_seqlens,
                               int64_t window, double scale) = 0;
};

std::unique_ptr<EncoderAttention> make_encoder_attention(const EncoderAttentionChoice& choice);

// Neighbour lists of cluster attention over a packed batch: token n of a sequence sits in cluster
// n / cluster_size of it; the `nearest_clusters` clusters whose centres are nearest its own
// (ties to the lower index) give its neighbours — those within `window` of it when window >= 0.
// Returns (idx [1, T, M] int64 into the packed tokens, mask [1, 1, T, M] bool), M = the longest
// list (shorter ones padded with masked slots).
std::pair<torch::Tensor, torch::Tensor> cluster_neighbours(const torch::Tensor& cu_seqlens,
                                                           int64_t cluster_size,
                                                           int64_t nearest_clusters,
                                                           int64_t window);

}  // namespace tessera::models
