// CUDA neighbour building (see cluster_neighbors.h). The curve order is found by ranking: token i's
// rank is the number of tokens j with (code_j, j) < (code_i, i), an O(N^2) but fully parallel and
// exact replacement for a sort that gives the CPU's order. k-nearest clusters: one thread per
// cluster keeps its best k in the output row by insertion.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cluster_attention/cluster_neighbors.h"
#include "kernels/cluster_attention/cluster_neighbors_common.h"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// One block per batch: bounding box of the positions, then the curve code of every token.
__global__ void codes_kernel(SfcClusterView v, uint64_t* codes) {
  __shared__ float red[4][kThreads];
  const int64_t b = blockIdx.x, N = v.tokens;
  const float* pos = v.pos + b * N * 2;
  float lo0 = INFINITY, lo1 = INFINITY, hi0 = -INFINITY, hi1 = -INFINITY;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    lo0 = fminf(lo0, pos[n * 2]);
    hi0 = fmaxf(hi0, pos[n * 2]);
    lo1 = fminf(lo1, pos[n * 2 + 1]);
    hi1 = fmaxf(hi1, pos[n * 2 + 1]);
  }
  red[0][threadIdx.x] = lo0;
  red[1][threadIdx.x] = hi0;
  red[2][threadIdx.x] = lo1;
  red[3][threadIdx.x] = hi1;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) {
      red[0][threadIdx.x] = fminf(red[0][threadIdx.x], red[0][threadIdx.x + s]);
      red[1][threadIdx.x] = fmaxf(red[1][threadIdx.x], red[1][threadIdx.x + s]);
      red[2][threadIdx.x] = fminf(red[2][threadIdx.x], red[2][threadIdx.x + s]);
      red[3][threadIdx.x] = fmaxf(red[3][threadIdx.x], red[3][threadIdx.x + s]);
    }
    __syncthreads();
  }
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    codes[b * N + n] = nb::hilbert(nb::quantise(pos[n * 2], red[0][0], red[1][0]),
                                   nb::quantise(pos[n * 2 + 1], red[2][0], red[3][0]));
  }
}

__global__ void rank_kernel(SfcClusterView v, const uint64_t* codes, int64_t* order) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t N = v.tokens;
  if (t >= v.batch * N) return;
  const int64_t b = t / N, i = t % N;
  const uint64_t ci = codes[t];
  int64_t rank = 0;
  for (int64_t j = 0; j < N; ++j) {
    const uint64_t cj = codes[b * N + j];
    rank += (cj < ci || (cj == ci && j < i)) ? 1 : 0;
  }
  order[b * N + rank] = i;
  v.cluster_of[t] = rank / v.cluster_size;
}

__global__ void members_kernel(SfcClusterView v, const int64_t* order) {
  const int64_t N = v.tokens, S = v.cluster_size, K = (N + S - 1) / S;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * K) return;
  const int64_t b = t / K, k = t % K;
  const int64_t count = min(S, N - k * S);
  const float* pos = v.pos + b * N * 2;
  float sum0 = 0.f, sum1 = 0.f;
  for (int64_t s = 0; s < S; ++s) {
    const bool real = s < count;
    const int64_t m = order[b * N + k * S + (real ? s : 0)];
    v.members[t * S + s] = m;
    v.member_mask[t * S + s] = real ? 1 : 0;
    if (real) {
      sum0 = __fadd_rn(sum0, pos[m * 2]);
      sum1 = __fadd_rn(sum1, pos[m * 2 + 1]);
    }
  }
  v.centroids[t * 2] = __fdiv_rn(sum0, static_cast<float>(count));
  v.centroids[t * 2 + 1] = __fdiv_rn(sum1, static_cast<float>(count));
}

__global__ void knn_kernel(KnnClusterView v, float* best_d) {
  const int64_t K = v.clusters, k = v.k;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * K) return;
  const int64_t b = t / K;
  const float* c = v.centroids + t * 2;
  int64_t* out = v.nearest + t * k;
  float* dist = best_d + t * k;
  int64_t filled = 0;
  for (int64_t j = 0; j < K; ++j) {
    const float d = nb::sq_dist(c, v.centroids + (b * K + j) * 2);
    if (filled == k && !nb::closer(d, j, dist[k - 1], out[k - 1])) continue;
    int64_t p = filled < k ? filled++ : k - 1;
    while (p > 0 && nb::closer(d, j, dist[p - 1], out[p - 1])) {
      dist[p] = dist[p - 1];
      out[p] = out[p - 1];
      --p;
    }
    dist[p] = d;
    out[p] = j;
  }
}

__global__ void gather_kernel(NeighborGatherView v) {
  const int64_t N = v.tokens, K = v.clusters, S = v.cluster_size, k = v.k, M = k * S;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * N * M) return;
  const int64_t bn = t / M, slot = t % M, b = bn / N;
  const int64_t src = (b * K + v.nearest[(b * K + v.cluster_of[bn]) * k + slot / S]) * S + slot % S;
  v.idx[t] = v.members[src];
  v.mask[t] = v.member_mask[src];
}

int64_t align256(int64_t n) { return (n + 255) / 256 * 256; }

}  // namespace

int64_t sfc_clusters_workspace(const SfcClusterView& v) {
  const int64_t n = static_cast<int64_t>(v.batch) * v.tokens;
  return align256(n * 8) * 2;
}

int sfc_clusters_cuda(const SfcClusterView& v, void* workspace, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t n = static_cast<int64_t>(v.batch) * v.tokens;
  if (n == 0) return 0;
  auto* codes = static_cast<uint64_t*>(workspace);
  auto* order = reinterpret_cast<int64_t*>(static_cast<char*>(workspace) + align256(n * 8));
  codes_kernel<<<static_cast<unsigned>(v.batch), kThreads, 0, stream>>>(v, codes);
  rank_kernel<<<blocks_for(n), kThreads, 0, stream>>>(v, codes, order);
  const int64_t K = (v.tokens + v.cluster_size - 1) / v.cluster_size;
  members_kernel<<<blocks_for(v.batch * K), kThreads, 0, stream>>>(v, order);
  return static_cast<int>(cudaGetLastError());
}

int knn_clusters_cuda(const KnnClusterView& v, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t n = static_cast<int64_t>(v.batch) * v.clusters;
  if (n == 0) return 0;
  float* best = nullptr;
  cudaError_t rc =
      cudaMallocAsync(reinterpret_cast<void**>(&best), n * v.k * sizeof(float), stream);
  if (rc != cudaSuccess) return static_cast<int>(rc);
  knn_kernel<<<blocks_for(n), kThreads, 0, stream>>>(v, best);
  cudaFreeAsync(best, stream);
  return static_cast<int>(cudaGetLastError());
}

int gather_neighbors_cuda(const NeighborGatherView& v, void* stream_ptr) {
  const int64_t n = static_cast<int64_t>(v.batch) * v.tokens * v.k * v.cluster_size;
  if (n == 0) return 0;
  gather_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream_ptr)>>>(v);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
