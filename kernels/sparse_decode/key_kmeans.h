// Spherical k-means over attention keys, the clustering step of cluster-sparse decode: keys are
// centred (softmax ignores a shift of every key by the same vector: q . (k - mu) differs from
// q . k by a constant), optionally weighted per channel, and normalised; k-means++ seeding, then
// Lloyd iterations on cosine similarity. Deterministic for a given seed. Torch-free.
#pragma once

#include <cstdint>
#include <vector>

namespace tessera::kernels {

struct KMeansOptions {
  int clusters = 1;  // wanted; fewer come back when there are fewer distinct keys
  int iters = 8;     // Lloyd iterations after seeding (stops early once no key moves)
  uint64_t seed = 0;
  bool centre = true;     // subtract the mean key first (keys with a large common mean)
  bool spherical = true;  // normalise keys and centres (cosine k-means); false: Euclidean
  // The first farthest_seeds centres are picked farthest-first (the key least similar to every
  // centre so far: isolated keys such as needles get a cluster of their own); the rest k-means++.
  int farthest_seeds = 0;
  // Optional lower-triangular [d, d] row-major matrix M applied to every centred key (y = M^T x)
  // before
  // normalising: with M M^T the queries' second moment (M its Cholesky factor), distances
  // approximate the expected error of q . k (null = identity).
  const float* metric = nullptr;
};

// keys [n, d] contiguous float32. Returns the cluster of every key, numbered densely from 0 in
// order of first appearance; every returned cluster has at least one member.
std::vector<int32_t> spherical_kmeans(const float* keys, int n, int d, const KMeansOptions& opt);

}  // namespace tessera::kernels
