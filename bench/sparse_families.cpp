#include "bench/sparse_families.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace tessera::bench {

namespace {

constexpr int kTopics = 64;
constexpr int kSinks = 4;
constexpr int kNeedlesPerQuery = 4;

// A counter-seeded splitmix64 stream with Box-Muller normals: one independent stream per
// (family, head, token), so tokens are generated in parallel and identically on any thread count.
struct Rng {
  uint64_t s;
  bool have = false;
  float spare = 0.0f;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  float normal() {
    if (have) {
      have = false;
      return spare;
    }
    // Marsaglia's polar method: two normals per accepted point, no trigonometry.
    double u, v, s2;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s2 = u * u + v * v;
    } while (s2 >= 1.0 || s2 == 0.0);
    const double m = std::sqrt(-2.0 * std::log(s2) / s2);
    spare = static_cast<float>(v * m);
    have = true;
    return static_cast<float>(u * m);
  }
};

uint64_t stream(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  Rng r(seed ^ (a * 0xA24BAED4963EE407ull) ^ (b * 0x9FB21C651E98DF25ull) ^
        (c * 0xD6E8FEB86659FD93ull));
  return r.next();
}

void normalise(float* x, int d) {
  double n = 0.0;
  for (int i = 0; i < d; ++i) n += static_cast<double>(x[i]) * x[i];
  const auto inv = static_cast<float>(1.0 / std::sqrt(std::max(n, 1e-30)));
  for (int i = 0; i < d; ++i) x[i] *= inv;
}

// NeoX-style RoPE: pairs (i, i + d/2) rotated by pos * 10000^(-2i/d).
void rope(float* x, int d, int64_t pos) {
  const int half = d / 2;
  static thread_local std::vector<double> inv_freq;
  if (static_cast<int>(inv_freq.size()) != half) {
    inv_freq.resize(static_cast<size_t>(half));
    for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(10000.0, -2.0 * i / d);
  }
  for (int i = 0; i < half; ++i) {
    const double theta = static_cast<double>(pos) * inv_freq[i];
    const auto c = static_cast<float>(std::cos(theta)), s = static_cast<float>(std::sin(theta));
    const float a = x[i], b = x[i + half];
    x[i] = a * c - b * s;
    x[i + half] = a * s + b * c;
  }
}

int family_index(const std::string& name) {
  const auto& names = sparse_family_names();
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) {
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
    TESSERA_FAIL("sparse family must be one of ", all, "; got '", name, "'");
  }
  return static_cast<int>(it - names.begin());
}

// Per kv head: topic directions (kTopics present + one absent per query), value means, the sink
// direction, the outlier mean.
struct HeadModel {
  std::vector<float> dirs, means, sink, mu;
  std::vector<int16_t> topic;  // per token
};

}  // namespace

const std::vector<std::string>& sparse_family_names() {
  static const std::vector<std::string> names = {"sinks",     "rope",    "outliers", "ood",
                                                 "scattered", "needles", "flat"};
  return names;
}

kernels::PagedKv SparseFamily::kv() const {
  kernels::PagedKv kv;
  kv.k = const_cast<float*>(k_pages.data());
  kv.v = const_cast<float*>(v_pages.data());
  kv.block_size = shape.block_size;
  kv.num_kv_heads = shape.kv_heads;
  kv.head_dim_k = shape.head_dim;
  kv.head_dim_v = shape.head_dim;
  kv.k_block_stride = static_cast<int64_t>(shape.block_size) * shape.kv_heads * shape.head_dim;
  kv.v_block_stride = kv.k_block_stride;
  kv.num_blocks = static_cast<int64_t>(block_table.size()) + 1;
  kv.dtype = kernels::KvDType::kF32;
  return kv;
}

const float* SparseFamily::key(int64_t pos, int head) const {
  const int64_t block = block_table[pos / shape.block_size];
  return k_pages.data() +
         ((block * shape.block_size + pos % shape.block_size) * shape.kv_heads + head) *
             shape.head_dim;
}

const float* SparseFamily::value(int64_t pos, int head) const {
  const int64_t block = block_table[pos / shape.block_size];
  return v_pages.data() +
         ((block * shape.block_size + pos % shape.block_size) * shape.kv_heads + head) *
             shape.head_dim;
}

SparseFamily make_sparse_family(const std::string& name, const SparseFamilyShape& shape) {
  const int fam = family_index(name);
  const auto& s = shape;
  TESSERA_CHECK(s.tokens > 1024 && s.head_dim >= 16 && s.head_dim % 2 == 0 && s.kv_heads > 0 &&
                    s.group > 0 && s.block_size > 0 && s.queries > 0,
                "bad sparse family shape: tokens=", s.tokens, " head_dim=", s.head_dim,
                " kv_heads=", s.kv_heads, " group=", s.group);
  SparseFamily f;
  f.name = name;
  f.shape = s;
  const int d = s.head_dim, hkv = s.kv_heads, g = s.group;
  const int64_t n = s.tokens;
  const bool sinks = name == "sinks", rope_on = name == "rope", outliers = name == "outliers",
             ood = name == "ood", scattered = name == "scattered", needles = name == "needles",
             flat = name == "flat";
  const float alpha = 0.7f * std::sqrt(static_cast<float>(d));
  const float beta = (flat ? 0.1f : 0.7f) * std::sqrt(static_cast<float>(d));
  const std::vector<int> outlier_ch = {3 % d, 17 % d, 64 % d, 100 % d};

  // Pages in random order.
  const int64_t blocks = (n + s.block_size - 1) / s.block_size;
  f.block_table.resize(static_cast<size_t>(blocks));
  std::iota(f.block_table.begin(), f.block_table.end(), 1);
  Rng place(stream(s.seed, fam, 1000, 0));
  for (int64_t i = blocks - 1; i > 0; --i) {
    std::swap(f.block_table[i], f.block_table[static_cast<int64_t>(place.next() % (i + 1))]);
  }
  const size_t pool = static_cast<size_t>((blocks + 1) * s.block_size * hkv * d);
  f.k_pages.assign(pool, 0.0f);
  f.v_pages.assign(pool, 0.0f);

  std::vector<HeadModel> heads(static_cast<size_t>(hkv));
  const int dirs = kTopics + s.queries;
  for (int h = 0; h < hkv; ++h) {
    HeadModel& m = heads[h];
    Rng r(stream(s.seed, fam, h, 1));
    m.dirs.resize(static_cast<size_t>(dirs) * d);
    m.means.resize(static_cast<size_t>(dirs) * d);
    for (int t = 0; t < dirs; ++t) {
      float* u = m.dirs.data() + static_cast<size_t>(t) * d;
      for (int i = 0; i < d; ++i) u[i] = (ood && i < d / 2) ? 0.0f : r.normal();
      normalise(u, d);
      for (int i = 0; i < d; ++i) m.means[static_cast<size_t>(t) * d + i] = r.normal();
    }
    m.sink.resize(static_cast<size_t>(d));
    for (auto& x : m.sink) x = r.normal();
    normalise(m.sink.data(), d);
    m.mu.resize(static_cast<size_t>(d));
    for (auto& x : m.mu) x = 2.0f * r.normal();
    m.topic.resize(static_cast<size_t>(n));
    if (scattered) {
      for (auto& t : m.topic) t = static_cast<int16_t>(r.next() % kTopics);
    } else {
      for (int64_t p = 0; p < n;) {
        const int64_t run = 32 + static_cast<int64_t>(r.next() % 481);
        const auto t = static_cast<int16_t>(r.next() % kTopics);
        for (int64_t e = std::min(n, p + run); p < e; ++p) m.topic[p] = t;
      }
    }
  }

  // Query topics: present topics (the token at a random position), or absent ones (needles).
  std::vector<int> q_topic(static_cast<size_t>(s.queries) * hkv), q_topic2(q_topic.size());
  f.needles.assign(q_topic.size(), {});
  std::vector<int32_t> needle_of(static_cast<size_t>(n) * hkv, -1);  // query topic per needle
  for (int j = 0; j < s.queries; ++j) {
    for (int h = 0; h < hkv; ++h) {
      Rng r(stream(s.seed, fam, h, 100 + j));
      const size_t jh = static_cast<size_t>(j) * hkv + h;
      q_topic[jh] = heads[h].topic[r.next() % n];
      q_topic2[jh] = heads[h].topic[r.next() % n];
      if (needles) {
        q_topic[jh] = kTopics + j;  // absent from the context but for the needles
        q_topic2[jh] = q_topic[jh];
        while (static_cast<int>(f.needles[jh].size()) < kNeedlesPerQuery) {
          const auto p = static_cast<int32_t>(16 + r.next() % (n - 16 - 128));
          if (needle_of[static_cast<size_t>(p) * hkv + h] >= 0) continue;
          needle_of[static_cast<size_t>(p) * hkv + h] = q_topic[jh];
          f.needles[jh].push_back(p);
        }
        std::sort(f.needles[jh].begin(), f.needles[jh].end());
      }
    }
  }

#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n; ++p) {
    for (int h = 0; h < hkv; ++h) {
      const HeadModel& m = heads[h];
      Rng r(stream(s.seed, fam, h, 10000 + static_cast<uint64_t>(p)));
      float* k = const_cast<float*>(f.key(p, h));
      float* v = const_cast<float*>(f.value(p, h));
      const int needle_topic = needle_of[static_cast<size_t>(p) * hkv + h];
      const int t = needle_topic >= 0 ? needle_topic : m.topic[p];
      const float* u = m.dirs.data() + static_cast<size_t>(t) * d;
      const float* mean = m.means.data() + static_cast<size_t>(t) * d;
      const float a = needle_topic >= 0 ? 2.0f * alpha : alpha;
      const float vm = needle_topic >= 0 ? 3.0f : 1.0f;
      for (int i = 0; i < d; ++i) {
        const float noise = r.normal();
        k[i] = a * u[i] + ((ood && i < d / 2) ? 3.0f * noise : noise);
        v[i] = vm * mean[i] + r.normal();
      }
      if (sinks && p < kSinks) {
        for (int i = 0; i < d; ++i) k[i] = 3.0f * alpha * m.sink[i] + r.normal();
        for (int i = 0; i < d; ++i)
          v[i] = 2.0f * m.sink[i] * std::sqrt(static_cast<float>(d)) + r.normal();
      }
      if (outliers) {
        for (int i = 0; i < d; ++i) k[i] += m.mu[i];
        for (int c : outlier_ch) k[c] = 20.0f + 5.0f * r.normal();
      }
      if (rope_on) rope(k, d, p);
    }
  }

  // Queries: heads 0..g-2 of a group look for the query's topic, the last head for another one.
  auto make_queries = [&](int count, int salt, bool decode, std::vector<float>& out) {
    out.assign(static_cast<size_t>(count) * hkv * g * d, 0.0f);
    for (int j = 0; j < count; ++j) {
      for (int h = 0; h < hkv; ++h) {
        const HeadModel& m = heads[h];
        Rng r(stream(s.seed, fam, h, salt + j));
        const size_t jh = static_cast<size_t>(decode ? j : 0) * hkv + h;
        const int t1 = decode ? q_topic[jh] : m.topic[r.next() % n];
        const int t2 = decode ? q_topic2[jh] : m.topic[r.next() % n];
        for (int gi = 0; gi < g; ++gi) {
          float* q = out.data() + ((static_cast<size_t>(j) * hkv + h) * g + gi) * d;
          const float* u = m.dirs.data() + static_cast<size_t>(gi + 1 < g ? t1 : t2) * d;
          for (int i = 0; i < d; ++i) {
            const float noise = r.normal();
            q[i] = beta * u[i] + ((ood && i < d / 2) ? 0.0f : noise);
          }
          if (sinks) {
            for (int i = 0; i < d; ++i) q[i] += 0.6f * beta * m.sink[i];
          }
          if (outliers) {
            for (int c : outlier_ch) q[c] = 2.0f * r.normal();
          }
          // Decode queries sit after the context; the samples at prefill positions.
          if (rope_on) rope(q, d, decode ? n : static_cast<int64_t>(r.next() % n));
        }
      }
    }
  };
  make_queries(s.queries, 200000, true, f.q);
  if (s.query_samples > 0) make_queries(s.query_samples, 300000, false, f.q_samples);
  return f;
}

}  // namespace tessera::bench
