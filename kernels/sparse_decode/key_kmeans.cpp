#include "kernels/sparse_decode/key_kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "kernels/sparse_decode/sparse_cpu_simd.h"

namespace tessera::kernels {

namespace {

using sparse_simd::dot_many;

// out[r * ldo + j] = a_r . b_j for R rows of a and C rows of b (a 2 x 4 register tile: each loaded
// vector of a is used C times, each of b R times).
template <int R, int C>
TESSERA_SPARSE_INLINE void dot_tile(const float* a, const float* b, int d, float* out,
                                    int64_t ldo) {
  sparse_simd::Vec16 acc[R][C];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < C; ++j) acc[r][j] = sparse_simd::Vec16{};
  }
  const int d16 = d & ~15;
  for (int i = 0; i < d16; i += 16) {
    sparse_simd::Vec16 bv[C];
    for (int j = 0; j < C; ++j) bv[j] = sparse_simd::load16(b + static_cast<int64_t>(j) * d + i);
    for (int r = 0; r < R; ++r) {
      const sparse_simd::Vec16 av = sparse_simd::load16(a + static_cast<int64_t>(r) * d + i);
      for (int j = 0; j < C; ++j) acc[r][j] += av * bv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < C; ++j) {
      float tail = 0.0f;
      for (int i = d16; i < d; ++i)
        tail += a[static_cast<int64_t>(r) * d + i] * b[static_cast<int64_t>(j) * d + i];
      out[r * ldo + j] = sparse_simd::hsum(acc[r][j]) + tail;
    }
  }
}

// For each row of y [n, d], the nearest centre of c [k, d]: the largest y . c - |c|^2 / 2 (half_c2
// holds |c|^2 / 2; for unit centres this is the cosine order). Returns how many rows changed
// cluster; best[i] is the winning value. dots: scratch of 2 * k floats.
TESSERA_CPU_TARGET_CLONES int assign_rows(const float* y, int n, int d, const float* c,
                                          const float* half_c2, int k, int32_t* assign, float* best,
                                          float* dots) {
  int changed = 0;
  for (int i = 0; i < n; i += 2) {
    const int rows = std::min(2, n - i);
    const float* yi = y + static_cast<int64_t>(i) * d;
    int j = 0;
    if (rows == 2) {
      for (; j + 4 <= k; j += 4)
        dot_tile<2, 4>(yi, c + static_cast<int64_t>(j) * d, d, dots + j, k);
      for (; j < k; ++j) dot_tile<2, 1>(yi, c + static_cast<int64_t>(j) * d, d, dots + j, k);
    } else {
      dot_many(c, d, k, yi, d, dots);
    }
    for (int r = 0; r < rows; ++r) {
      int arg = 0;
      float top = -std::numeric_limits<float>::infinity();
      for (int jj = 0; jj < k; ++jj) {
        const float s = dots[r * k + jj] - half_c2[jj];
        if (s > top) {
          top = s;
          arg = jj;
        }
      }
      changed += assign[i + r] != arg;
      assign[i + r] = arg;
      best[i + r] = top;
    }
  }
  return changed;
}

// dots[i] = y_i . x for every row of y [n, d].
TESSERA_CPU_TARGET_CLONES void dots_with(const float* y, int n, int d, const float* x,
                                         float* dots) {
  dot_many(y, d, n, x, d, dots);
}

// Rows of x [n, d] replaced by m^T x for a lower-triangular m (mt = m^T, row-major [d, d]: row b
// is zero before column b, so only its tail is read).
TESSERA_CPU_TARGET_CLONES void transform_rows(float* x, int n, int d, const float* mt, float* tmp) {
  for (int i = 0; i < n; ++i) {
    float* xi = x + static_cast<int64_t>(i) * d;
    for (int b = 0; b < d; ++b) {
      dot_many(mt + static_cast<int64_t>(b) * d + b, d, 1, xi + b, d - b, tmp + b);
    }
    std::copy(tmp, tmp + d, xi);
  }
}

TESSERA_CPU_TARGET_CLONES float norm2(const float* v, int d) {
  float s = 0.0f;
  dot_many(v, d, 1, v, d, &s);
  return s;
}

void normalise(float* v, int d) {
  double norm = 0.0;
  for (int i = 0; i < d; ++i) norm += static_cast<double>(v[i]) * v[i];
  if (norm <= 0.0) return;
  const auto inv = static_cast<float>(1.0 / std::sqrt(norm));
  for (int i = 0; i < d; ++i) v[i] *= inv;
}

// Keys [n, d] mapped into the space k-means works in: minus mu, through the metric, normalised
// when spherical. Returns the squared norms.
std::vector<float> transform_keys(std::vector<float>& y, int n, int d, const float* mu,
                                  const KMeansOptions& opt) {
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) y[static_cast<int64_t>(i) * d + j] -= mu[j];
  }
  std::vector<float> tmp(static_cast<size_t>(d));
  if (opt.metric != nullptr) {
    std::vector<float> mt(static_cast<size_t>(d) * d);
    for (int a = 0; a < d; ++a) {
      for (int b = 0; b < d; ++b) mt[static_cast<size_t>(b) * d + a] = opt.metric[a * d + b];
    }
    transform_rows(y.data(), n, d, mt.data(), tmp.data());
  }
  std::vector<float> y2(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    float* yi = y.data() + static_cast<int64_t>(i) * d;
    if (opt.spherical) normalise(yi, d);
    y2[i] = norm2(yi, d);
  }
  return y2;
}

}  // namespace

KMeansResult kmeans_keys(const float* keys, int n, int d, const KMeansOptions& opt) {
  KMeansResult res;
  res.assign.assign(static_cast<size_t>(n), 0);
  res.mu.assign(static_cast<size_t>(std::max(d, 0)), 0.0f);
  if (n <= 0 || d <= 0) return res;
  std::vector<int32_t>& assign = res.assign;
  int k = std::clamp(opt.clusters, 1, n);

  // Centred keys, in the query metric, normalised for cosine k-means; a key equal to the mean
  // stays the zero vector.
  std::vector<float> y(keys, keys + static_cast<int64_t>(n) * d);
  if (opt.centre) {
    std::vector<double> mu(static_cast<size_t>(d), 0.0);
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < d; ++j) mu[j] += y[static_cast<int64_t>(i) * d + j];
    }
    for (int j = 0; j < d; ++j) res.mu[j] = static_cast<float>(mu[j] / n);
  }
  const std::vector<float> y2 = transform_keys(y, n, d, res.mu.data(), opt);
  std::vector<float> tmp(static_cast<size_t>(n));
  // Seeding: the first `farthest_seeds` centres farthest-first, the rest by k-means++ (drawn with
  // probability proportional to the squared distance to the nearest centre so far).
  std::mt19937_64 rng(opt.seed);
  std::vector<float> c(static_cast<size_t>(k) * d);
  std::vector<double> dist(static_cast<size_t>(n), std::numeric_limits<double>::infinity());
  int pick = static_cast<int>(rng() % static_cast<uint64_t>(n));
  int have = 0;
  while (true) {
    float* cj = c.data() + static_cast<int64_t>(have) * d;
    std::copy_n(y.data() + static_cast<int64_t>(pick) * d, d, cj);
    dots_with(y.data(), n, d, cj, tmp.data());
    double total = 0.0;
    for (int i = 0; i < n; ++i) {
      const double di = std::max(0.0, static_cast<double>(y2[i]) + y2[pick] - 2.0 * tmp[i]);
      dist[i] = std::min(dist[i], di);
      total += dist[i];
    }
    ++have;
    if (have == k || !(total > 1e-12)) break;  // done, or every key sits on a centre
    if (have < opt.farthest_seeds) {
      pick = static_cast<int>(std::max_element(dist.begin(), dist.end()) - dist.begin());
    } else {
      double r = std::uniform_real_distribution<double>(0.0, total)(rng);
      pick = n - 1;
      for (int i = 0; i < n; ++i) {
        r -= dist[i];
        if (r < 0.0) {
          pick = i;
          break;
        }
      }
    }
  }
  k = have;

  // Lloyd iterations (spherical: centres are normalised member sums; else member means).
  std::vector<float> best(static_cast<size_t>(n)), half_c2(static_cast<size_t>(k)),
      dots(static_cast<size_t>(2 * k));
  std::vector<int> count(static_cast<size_t>(k));
  std::fill(assign.begin(), assign.end(), -1);
  for (int it = 0; it <= opt.iters; ++it) {
    for (int j = 0; j < k; ++j)
      half_c2[j] = 0.5f * norm2(c.data() + static_cast<int64_t>(j) * d, d);
    const int changed = assign_rows(y.data(), n, d, c.data(), half_c2.data(), k, assign.data(),
                                    best.data(), dots.data());
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
        // An empty cluster restarts at the key farthest from its own centre.
        const int far = static_cast<int>(std::min_element(best.begin(), best.end()) - best.begin());
        std::copy_n(y.data() + static_cast<int64_t>(far) * d, d, cj);
        best[far] = std::numeric_limits<float>::infinity();  // not picked twice
        count[j] = 1;
      }
      if (opt.spherical) {
        normalise(cj, d);
      } else {
        for (int i = 0; i < d; ++i) cj[i] /= static_cast<float>(count[j]);
      }
    }
  }
  // Dense numbering in order of first appearance (clusters that ended empty disappear).
  std::vector<int32_t> renumber(static_cast<size_t>(k), -1);
  int32_t next = 0;
  for (auto& a : assign) {
    if (renumber[a] < 0) {
      renumber[a] = next++;
      res.centres.insert(res.centres.end(), c.begin() + static_cast<int64_t>(a) * d,
                         c.begin() + static_cast<int64_t>(a + 1) * d);
    }
    a = renumber[a];
  }
  return res;
}

void kmeans_assign(const KMeansResult& model, const float* keys, int n, int d,
                   const KMeansOptions& opt, int32_t* out) {
  const int k = model.clusters();
  if (n <= 0 || k == 0) return;
  std::vector<float> y(keys, keys + static_cast<int64_t>(n) * d);
  transform_keys(y, n, d, model.mu.data(), opt);
  std::vector<float> half_c2(static_cast<size_t>(k)), best(static_cast<size_t>(n)),
      dots(static_cast<size_t>(2 * k));
  for (int j = 0; j < k; ++j) {
    half_c2[j] = 0.5f * norm2(model.centres.data() + static_cast<int64_t>(j) * d, d);
  }
  std::fill(out, out + n, -1);
  assign_rows(y.data(), n, d, model.centres.data(), half_c2.data(), k, out, best.data(),
              dots.data());
}

}  // namespace tessera::kernels
