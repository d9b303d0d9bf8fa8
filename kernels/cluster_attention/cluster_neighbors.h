// Neighbour building for cluster attention (the job PyKeOps did for AutoFocusFormer): tokens are
// cut into balanced clusters of S consecutive points along a Hilbert space-filling curve (the last
// cluster padded and masked), every cluster finds its k nearest clusters exactly (centroid
// distance), and each token's neighbours are the members of its cluster's k nearest clusters:
// idx [B, N, k * S] with a mask marking the padding. Torch-free; CPU and CUDA give identical idx.
#pragma once

#include <cstdint>

namespace tessera::kernels {

struct SfcClusterView {
  const float* pos = nullptr;      // [B, N, 2] contiguous token positions
  int64_t* members = nullptr;      // [B, K, S]: token indices along the curve; padding repeats
                                   // the cluster's first member
  uint8_t* member_mask = nullptr;  // [B, K, S]: 1 = real member, 0 = padding
  int64_t* cluster_of = nullptr;   // [B, N]: the cluster of each token
  float* centroids = nullptr;      // [B, K, 2]: mean position of the real members
  int batch = 0;
  int tokens = 0;        // N
  int cluster_size = 8;  // S; K = ceil(N / S)
};

struct KnnClusterView {
  const float* centroids = nullptr;  // [B, K, 2]
  int64_t* nearest = nullptr;        // [B, K, k]: ascending squared distance, ties by lower index
                                     // (a cluster is its own nearest)
  int batch = 0;
  int clusters = 0;  // K
  int k = 0;         // 1 <= k <= K
};

struct NeighborGatherView {
  const int64_t* members = nullptr;      // [B, K, S]
  const uint8_t* member_mask = nullptr;  // [B, K, S]
  const int64_t* cluster_of = nullptr;   // [B, N]
  const int64_t* nearest = nullptr;      // [B, K, k]
  int64_t* idx = nullptr;                // [B, N, k * S]
  uint8_t* mask = nullptr;               // [B, N, k * S]
  int batch = 0;
  int tokens = 0;
  int clusters = 0;
  int cluster_size = 8;
  int k = 0;
};

// Index of the 2-D point (x, y) in [0, 2^16)^2 along a Hilbert curve of order 16.
uint64_t hilbert_index(uint32_t x, uint32_t y);

void sfc_clusters_cpu(const SfcClusterView& view);
void knn_clusters_cpu(const KnnClusterView& view);
void gather_neighbors_cpu(const NeighborGatherView& view);

#ifdef TESSERA_WITH_CUDA
// CUDA versions: return a cudaError_t value (0 on success). workspace: sfc_clusters_workspace
// bytes of device memory.
int64_t sfc_clusters_workspace(const SfcClusterView& view);
int sfc_clusters_cuda(const SfcClusterView& view, void* workspace, void* cuda_stream);
int knn_clusters_cuda(const KnnClusterView& view, void* cuda_stream);
int gather_neighbors_cuda(const NeighborGatherView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
