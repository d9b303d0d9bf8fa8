#include "kernels/sparse_decode/key_kmeans.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cluster_attention/cluster_cpu_simd.h"

namespace tessera::kernels {

namespace {

// For each row of y [n, d], the most similar centre of c [k, d] (cosine: both unit length).
// Returns how many rows changed cluster; sim[i] is the similarity to the chosen centre.
TESSERA_CPU_CLONES int assign_rows(const float* y, int n, int d, const float* c, int k,
                                   int32_t* assign, float* sim) {
  int changed = 0;
  for (int i = 0; i < n; ++i) {
    const float* yi = y + static_cast<int64_t>(i) * d;
    int best = 0;
    float best_sim = -2.0f;
    for (int j = 0; j < k; ++j) {
      const float s = simd::dot(yi, c + static_cast<int64_t>(j) * d, d);
      if (s > best_sim) {
        best_sim = s;
        best = j;
      }
    }
    changed += assign[i] != best;
    assign[i] = best;
    sim[i] = best_sim;
  }
  return changed;
}

void normalise(float* v, int d) {
  double norm = 0.0;
  for (int i = 0; i < d; ++i) norm += static_cast<double>(v[i]) * v[i];
  if (norm <= 0.0) return;
  const auto inv = static_cast<float>(1.0 / std::sqrt(norm));
  for (int i = 0; i < d; ++i) v[i] *= inv;
}

}  // namespace

std::vector<int32_t> spherical_kmeans(const float* keys, int n, int d, const KMeansOptions& opt) {
  std::vector<int32_t> assign(static_cast<size_t>(n), 0);
  if (n <= 1 || d <= 0) return assign;
  int k = std::clamp(opt.clusters, 1, n);

  // Unit directions of the centred keys; a key equal to the mean stays the zero vector.
  std::vector<float> y(keys, keys + static_cast<int64_t>(n) * d);
  if (opt.centre) {
    std::vector<double> mu(static_cast<size_t>(d), 0.0);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < d; ++j) mu[j] += y[static_cast<int64_t>(i) * d + j];
    }
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < d; ++j)
        y[static_cast<int64_t>(i) * d + j] -= static_cast<float>(mu[j] / n);
    }
  }
  for (int i = 0; i < n; ++i) normalise(y.data() + static_cast<int64_t>(i) * d, d);

  // k-means++ seeding: each new centre is a key drawn with probability proportional to its
  // squared distance (2 - 2 cos) to the nearest centre so far.
  std::mt19937_64 rng(opt.seed);
  std::vector<float> c(static_cast<size_t>(k) * d);
  std::vector<double> dist(static_cast<size_t>(n));
  const int first = static_cast<int>(rng() % static_cast<uint64_t>(n));
  std::copy_n(y.data() + static_cast<int64_t>(first) * d, d, c.data());
  for (int i = 0; i < n; ++i) {
    dist[i] = std::max(0.0, 1.0 - simd::dot(y.data() + static_cast<int64_t>(i) * d, c.data(), d));
  }
  int have = 1;
  while (have < k) {
    double total = 0.0;
    for (double x : dist) total += x;
    if (!(total > 1e-12)) break;  // every key sits on a centre already
    double r = std::uniform_real_distribution<double>(0.0, total)(rng);
    int pick = n - 1;
    for (int i = 0; i < n; ++i) {
      r -= dist[i];
      if (r < 0.0) {
        pick = i;
        break;
      }
    }
    float* cj = c.data() + static_cast<int64_t>(have) * d;
    std::copy_n(y.data() + static_cast<int64_t>(pick) * d, d, cj);
    for (int i = 0; i < n; ++i) {
      const double di = 1.0 - simd::dot(y.data() + static_cast<int64_t>(i) * d, cj, d);
      dist[i] = std::min(dist[i], std::max(0.0, di));
    }
    ++have;
  }
  k = have;

  // Lloyd iterations (spherical: centres are normalised member sums).
  std::vector<float> sim(static_cast<size_t>(n));
  std::vector<int> count(static_cast<size_t>(k));
  std::fill(assign.begin(), assign.end(), -1);
  for (int it = 0; it <= opt.iters; ++it) {
    const int changed = assign_rows(y.data(), n, d, c.data(), k, assign.data(), sim.data());
    if (changed == 0 || it == opt.iters) break;
    std::fill(c.begin(), c.end(), 0.0f);
    std::fill(count.begin(), count.end(), 0);
    for (int i = 0; i < n; ++i) {
      float* cj = c.data() + static_cast<int64_t>(assign[i]) * d;
      const float* yi = y.data() + static_cast<int64_t>(i) * d;
      for (int j = 0; j < d; ++j) cj[j] += yi[j];
      ++count[assign[i]];
    }
    for (int j = 0; j < k; ++j) {
      float* cj = c.data() + static_cast<int64_t>(j) * d;
      if (count[j] == 0) {
        // An empty cluster restarts at the key least similar to its own centre.
        const int far = static_cast<int>(std::min_element(sim.begin(), sim.end()) - sim.begin());
        std::copy_n(y.data() + static_cast<int64_t>(far) * d, d, cj);
        sim[far] = 2.0f;  // not picked twice
      }
      normalise(cj, d);
    }
  }
  // Dense numbering in order of first appearance (clusters that ended empty disappear).
  std::vector<int32_t> renumber(static_cast<size_t>(k), -1);
  int32_t next = 0;
  for (auto& a : assign) {
    if (renumber[a] < 0) renumber[a] = next++;
    a = renumber[a];
  }
  return assign;
}

}  // namespace tessera::kernels
