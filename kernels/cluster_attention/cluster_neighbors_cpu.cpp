// CPU neighbour building (see cluster_neighbors.h): a stable sort along the Hilbert curve per
// batch, an exact partial sort of centroid distances per cluster, and a gather.
#include <algorithm>
#include <numeric>
#include <utility>
#include <vector>

#include "kernels/cluster_attention/cluster_neighbors.h"
#include "kernels/cluster_attention/cluster_neighbors_common.h"

namespace tessera::kernels {

uint64_t hilbert_index(uint32_t x, uint32_t y) { return nb::hilbert(x, y); }

void sfc_clusters_cpu(const SfcClusterView& v) {
  const int64_t N = v.tokens, S = v.cluster_size, K = (N + S - 1) / S;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < v.batch; ++b) {
    const float* pos = v.pos + b * N * 2;
    float lo[2] = {0.f, 0.f}, hi[2] = {0.f, 0.f};
    for (int64_t n = 0; n < N; ++n) {
      for (int c = 0; c < 2; ++c) {
        lo[c] = n == 0 ? pos[c] : std::min(lo[c], pos[n * 2 + c]);
        hi[c] = n == 0 ? pos[c] : std::max(hi[c], pos[n * 2 + c]);
      }
    }
    std::vector<std::pair<uint64_t, int64_t>> order(N);
    for (int64_t n = 0; n < N; ++n) {
      order[n] = {nb::hilbert(nb::quantise(pos[n * 2], lo[0], hi[0]),
                              nb::quantise(pos[n * 2 + 1], lo[1], hi[1])),
                  n};
    }
    std::sort(order.begin(), order.end());  // (code, index): ties by token index
    for (int64_t r = 0; r < N; ++r) v.cluster_of[b * N + order[r].second] = r / S;
    for (int64_t k = 0; k < K; ++k) {
      int64_t* mem = v.members + (b * K + k) * S;
      uint8_t* msk = v.member_mask + (b * K + k) * S;
      const int64_t count = std::min(S, N - k * S);
      float sum[2] = {0.f, 0.f};
      for (int64_t s = 0; s < S; ++s) {
        const bool real = s < count;
        mem[s] = order[k * S + (real ? s : 0)].second;
        msk[s] = real ? 1 : 0;
        if (real) {
          sum[0] += pos[mem[s] * 2];
          sum[1] += pos[mem[s] * 2 + 1];
        }
      }
      v.centroids[(b * K + k) * 2] = sum[0] / static_cast<float>(count);
      v.centroids[(b * K + k) * 2 + 1] = sum[1] / static_cast<float>(count);
    }
  }
}

void knn_clusters_cpu(const KnnClusterView& v) {
  const int64_t K = v.clusters, k = v.k;
#pragma omp parallel
  {
    std::vector<std::pair<float, int64_t>> d(K);
#pragma omp for schedule(static)
    for (int64_t bc = 0; bc < v.batch * K; ++bc) {
      const int64_t b = bc / K;
      const float* c = v.centroids + bc * 2;
      for (int64_t j = 0; j < K; ++j) d[j] = {nb::sq_dist(c, v.centroids + (b * K + j) * 2), j};
      std::partial_sort(d.begin(), d.begin() + k, d.end());  // (distance, index) order
      for (int64_t t = 0; t < k; ++t) v.nearest[bc * k + t] = d[t].second;
    }
  }
}

void gather_neighbors_cpu(const NeighborGatherView& v) {
  const int64_t N = v.tokens, K = v.clusters, S = v.cluster_size, k = v.k, M = k * S;
#pragma omp parallel for schedule(static)
  for (int64_t bn = 0; bn < v.batch * N; ++bn) {
    const int64_t b = bn / N;
    const int64_t* near = v.nearest + (b * K + v.cluster_of[bn]) * k;
    for (int64_t t = 0; t < k; ++t) {
      const int64_t src = (b * K + near[t]) * S;
      for (int64_t s = 0; s < S; ++s) {
        v.idx[bn * M + t * S + s] = v.members[src + s];
        v.mask[bn * M + t * S + s] = v.member_mask[src + s];
      }
    }
  }
}

}  // namespace tessera::kernels
