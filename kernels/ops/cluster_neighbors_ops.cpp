#include "kernels/ops/cluster_neighbors_ops.h"

#include "common/error.h"
#include "kernels/cluster_attention/cluster_neighbors.h"
#include "kernels/ops/route.h"

namespace tessera::kernels {

namespace {

torch::Tensor checked_points(const torch::Tensor& t, const char* name) {
  TESSERA_CHECK(t.dim() == 3 && t.size(2) == 2, name, " must be [B, N, 2], got shape ", t.sizes());
  TESSERA_CHECK(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
  return t.to(torch::kFloat).contiguous();
}

}  // namespace

torch::Tensor nearest_clusters(const torch::Tensor& centroids, int64_t k) {
  auto c = checked_points(centroids, "centroids");
  const int64_t B = c.size(0), K = c.size(1);
  TESSERA_CHECK(k >= 1 && k <= K, "k must be in [1, K = ", K, "], got ", k);
  auto out = torch::empty({B, K, k}, c.options().dtype(torch::kLong));
  KnnClusterView v;
  v.centroids = c.data_ptr<float>();
  v.nearest = out.data_ptr<int64_t>();
  v.batch = static_cast<int>(B);
  v.clusters = static_cast<int>(K);
  v.k = static_cast<int>(k);
  // One CPU implementation (plain loops): the reference and the fast path are the same code.
  route(
      "nearest_clusters", c.device(), false, [&] { knn_clusters_cpu(v); },
      [&] { knn_clusters_cpu(v); },
      TESSERA_CUDA_IMPL([&](void* stream) { return knn_clusters_cuda(v, stream); }));
  return out;
}

ClusterNeighbors build_cluster_neighbors(const torch::Tensor& pos_in, int64_t nearest,
                                         int64_t cluster_size) {
  auto pos = checked_points(pos_in, "pos");
  const int64_t B = pos.size(0), N = pos.size(1);
  TESSERA_CHECK(cluster_size >= 1, "cluster_size must be >= 1, got ", cluster_size);
  TESSERA_CHECK(N >= 1 || B == 0, "pos must hold at least one token, got N = ", N);
  const int64_t S = cluster_size, K = (N + S - 1) / S;
  TESSERA_CHECK(B == 0 || (nearest >= 1 && nearest <= K), "nearest_clusters must be in [1, K = ", K,
                "] (K = ceil(N / cluster_size)), got ", nearest);
  const auto opts = pos.options();
  ClusterNeighbors r;
  r.members = torch::empty({B, K, S}, opts.dtype(torch::kLong));
  r.member_mask = torch::empty({B, K, S}, opts.dtype(torch::kBool));
  r.cluster_of = torch::empty({B, N}, opts.dtype(torch::kLong));
  r.centroids = torch::empty({B, K, 2}, opts);
  SfcClusterView s;
  s.pos = pos.data_ptr<float>();
  s.members = r.members.data_ptr<int64_t>();
  s.member_mask = reinterpret_cast<uint8_t*>(r.member_mask.data_ptr<bool>());
  s.cluster_of = r.cluster_of.data_ptr<int64_t>();
  s.centroids = r.centroids.data_ptr<float>();
  s.batch = static_cast<int>(B);
  s.tokens = static_cast<int>(N);
  s.cluster_size = static_cast<int>(S);
  route(
      "build_cluster_neighbors", pos.device(), false, [&] { sfc_clusters_cpu(s); },
      [&] { sfc_clusters_cpu(s); }, TESSERA_CUDA_IMPL([&](void* stream) {
        auto ws = torch::empty({std::max<int64_t>(sfc_clusters_workspace(s), 1)},
                               opts.dtype(torch::kByte));
        return sfc_clusters_cuda(s, ws.data_ptr(), stream);
      }));
  if (B == 0) nearest = std::max<int64_t>(nearest, 1);
  r.nearest = B == 0 ? torch::empty({0, K, nearest}, opts.dtype(torch::kLong))
                     : nearest_clusters(r.centroids, nearest);
  r.idx = torch::empty({B, N, nearest * S}, opts.dtype(torch::kLong));
  r.mask = torch::empty({B, N, nearest * S}, opts.dtype(torch::kBool));
  NeighborGatherView g;
  g.members = s.members;
  g.member_mask = s.member_mask;
  g.cluster_of = s.cluster_of;
  g.nearest = r.nearest.data_ptr<int64_t>();
  g.idx = r.idx.data_ptr<int64_t>();
  g.mask = reinterpret_cast<uint8_t*>(r.mask.data_ptr<bool>());
  g.batch = static_cast<int>(B);
  g.tokens = static_cast<int>(N);
  g.clusters = static_cast<int>(K);
  g.cluster_size = static_cast<int>(S);
  g.k = static_cast<int>(nearest);
  route(
      "build_cluster_neighbors", pos.device(), false, [&] { gather_neighbors_cpu(g); },
      [&] { gather_neighbors_cpu(g); },
      TESSERA_CUDA_IMPL([&](void* stream) { return gather_neighbors_cuda(g, stream); }));
  return r;
}

}  // namespace tessera::kernels
