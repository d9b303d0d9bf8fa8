// Torch-facing neighbour building for cluster attention (kernels/cluster_attention/
// cluster_neighbors.h): balanced Hilbert-curve clusters, exact k-nearest clusters, and the
// neighbour indices + mask that cluster attention consumes. CPU and CUDA tensors.
#pragma once

#include <torch/types.h>

namespace tessera::kernels {

struct ClusterNeighbors {
  torch::Tensor members;      // [B, K, S] int64 token indices along the curve
  torch::Tensor member_mask;  // [B, K, S] bool, false = padding
  torch::Tensor cluster_of;   // [B, N] int64
  torch::Tensor centroids;    // [B, K, 2] float32
  torch::Tensor nearest;      // [B, K, k] int64, nearest first
  torch::Tensor idx;          // [B, N, k * S] int64 neighbour indices for cluster attention
  torch::Tensor mask;         // [B, N, k * S] bool, false = padding
};

// pos [B, N, 2] (any float dtype; N >= 1 when B > 0); cluster_size S >= 1;
// 1 <= nearest_clusters <= K = ceil(N / S).
ClusterNeighbors build_cluster_neighbors(const torch::Tensor& pos, int64_t nearest_clusters,
                                         int64_t cluster_size = 8);

// Exact k nearest points: centroids [B, K, 2] -> [B, K, k] int64, ascending squared distance, ties
// broken by the lower index.
torch::Tensor nearest_clusters(const torch::Tensor& centroids, int64_t k);

}  // namespace tessera::kernels
