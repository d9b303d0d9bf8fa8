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
  int iters = 4;     // Lloyd iterations after seeding (stops early once no key moves)
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

struct KMeansResult {
  // The cluster of every key, numbered densely from 0 in order of first appearance; every
  // cluster has at least one member.
  std::vector<int32_t> assign;
  std::vector<float> mu;       // [d]: the centring vector (zeros without centring)
  std::vector<float> centres;  // [clusters, d]: the centres the final assignment used, in the
                               // transformed space (centred, metric, normalised if spherical)
  int clusters() const { return static_cast<int>(mu.empty() ? 0 : centres.size() / mu.size()); }
};

// keys [n, d] contiguous float32.
KMeansResult kmeans_keys(const float* keys, int n, int d, const KMeansOptions& opt);
// The nearest centre of `model` for more keys [n, d], transformed the same way (opt's metric and
// spherical flag must be those the model was made with). Writes out [n].
void kmeans_assign(const KMeansResult& model, const float* keys, int n, int d,
                   const KMeansOptions& opt, int32_t* out);

}  // namespace tessera::kernels
