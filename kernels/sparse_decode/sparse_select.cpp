#include "kernels/sparse_decode/sparse_select.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "kernels/cluster_attention/cluster_cpu_simd.h"
#include "kernels/sparse_decode/key_kmeans.h"
#include "kernels/sparse_decode/sparse_cpu_simd.h"

namespace tessera::kernels {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t x = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

// Per-call scratch of select_range, reused by each thread.
struct SelectScratch {
  std::vector<float> scores;   // [group, units]
  std::vector<float> density;  // [units]
  std::vector<int32_t> order;  // unit ids
  std::vector<float> qrows;    // [group, head_dim]: the queries, contiguous
  std::vector<float> qsq;      // [group, head_dim]: q^2 (meanstd)
  std::vector<float> bonus;    // [group]: radius bonus factor
};

SelectScratch& scratch() {
  thread_local SelectScratch s;
  return s;
}

using sparse_simd::dot_many;
using sparse_simd::load16;
using sparse_simd::Vec16;

// Raw scores of units against the group's queries, scores[g * units + u] (scaled). q holds the
// group's query rows contiguously [group, d].
TESSERA_CPU_TARGET_CLONES void cluster_scores(const float* q, int group, int d, float scale,
                                              const float* centroids, const float* radius2,
                                              const float* bonus, int64_t units, float* scores) {
  float dots[64];
  for (int64_t u = 0; u < units; ++u) {
    dot_many(q, d, group, centroids + u * d, d, dots);
    for (int g = 0; g < group; ++g) scores[g * units + u] = dots[g] * scale + bonus[g] * radius2[u];
  }
}

// Quest's bound sum_i max(q_i lo_i, q_i hi_i) for R query rows, lo / hi loaded once.
template <int R>
TESSERA_SPARSE_INLINE void quest_rows(const float* q, int d, const float* lo, const float* hi,
                                      float* out) {
  Vec16 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec16{};
  const int d16 = d & ~15;
  for (int i = 0; i < d16; i += 16) {
    const Vec16 l = load16(lo + i), h = load16(hi + i);
    for (int r = 0; r < R; ++r) {
      const Vec16 qv = load16(q + r * d + i);
      const Vec16 a = qv * l, b = qv * h;
      acc[r] += a > b ? a : b;
    }
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.0f;
    for (int i = d16; i < d; ++i) tail += std::max(q[r * d + i] * lo[i], q[r * d + i] * hi[i]);
    out[r] = sparse_simd::hsum(acc[r]) + tail;
  }
}

TESSERA_CPU_TARGET_CLONES void quest_scores(const float* q, int group, int d, float scale,
                                            const float* stats, int64_t first_page, int64_t units,
                                            float* scores) {
  float b[64];
  for (int64_t u = 0; u < units; ++u) {
    const float* lo = stats + (first_page + u) * 2 * d;
    int g = 0;
    for (; g + 4 <= group; g += 4) quest_rows<4>(q + g * d, d, lo, lo + d, b + g);
    for (; g < group; ++g) quest_rows<1>(q + g * d, d, lo, lo + d, b + g);
    for (g = 0; g < group; ++g) scores[g * units + u] = b[g] * scale;
  }
}

// mean+std: scale q . mu + scale^2 / 2 (q^2) . var (stats hold mean and variance per page).
TESSERA_CPU_TARGET_CLONES void meanstd_scores(const float* q, const float* qsq, int group, int d,
                                              float scale, const float* stats, int64_t first_page,
                                              int64_t units, float* scores) {
  float m[64], v[64];
  for (int64_t u = 0; u < units; ++u) {
    const float* mu = stats + (first_page + u) * 2 * d;
    dot_many(q, d, group, mu, d, m);
    dot_many(qsq, d, group, mu + d, d, v);
    for (int g = 0; g < group; ++g)
      scores[g * units + u] = scale * m[g] + 0.5f * scale * scale * v[g];
  }
}

// e[u] = exp(s[u] - max) in place over one head's scores; returns the max.
TESSERA_CPU_TARGET_CLONES float exp_shifted(float* s, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t u = 0; u < n; ++u) mx = std::max(mx, s[u]);
#pragma omp simd
  for (int64_t u = 0; u < n; ++u) s[u] = simd::exp_approx(s[u] - mx);
  return mx;
}

}  // namespace

const char* sparse_method_name(SparseMethod m) {
  switch (m) {
    case SparseMethod::kCluster:
      return "cluster";
    case SparseMethod::kQuest:
      return "quest";
    case SparseMethod::kMeanStd:
      return "meanstd";
    case SparseMethod::kSinkWindow:
      return "sink_window";
  }
  return "?";
}

SparseMethod parse_sparse_method(std::string_view name) {
  for (auto m : {SparseMethod::kCluster, SparseMethod::kQuest, SparseMethod::kMeanStd,
                 SparseMethod::kSinkWindow}) {
    if (name == sparse_method_name(m)) return m;
  }
  TESSERA_FAIL("sparse method must be one of cluster, quest, meanstd, sink_window; got '", name,
               "'");
}

void SparseSelectConfig::validate() const {
  TESSERA_CHECK(head_dim > 0, "sparse head_dim must be positive, got ", head_dim);
  TESSERA_CHECK(group > 0, "sparse group (query heads per kv head) must be positive, got ", group);
  TESSERA_CHECK(page_tokens > 0, "sparse page_tokens must be positive, got ", page_tokens);
  TESSERA_CHECK(sinks >= 0, "sparse sinks must be >= 0, got ", sinks);
  TESSERA_CHECK(window >= 0, "sparse window must be >= 0, got ", window);
  TESSERA_CHECK(budget > 0, "sparse budget must be positive, got ", budget);
  TESSERA_CHECK(budget <= std::numeric_limits<int32_t>::max(), "sparse budget must fit int32, got ",
                budget);
  // The window also covers the positions of the last, not yet full page: up to page_tokens - 1.
  TESSERA_CHECK(budget >= sinks + window + page_tokens, "sparse budget=", budget,
                " must be at least sinks + window + page_tokens = ", sinks, " + ", window, " + ",
                page_tokens, " = ", sinks + window + page_tokens,
                " (the forced tokens must leave room to choose)");
  TESSERA_CHECK(std::isfinite(scale) && scale >= 0.0f,
                "sparse scale must be finite and >= 0 (0 = ", "1/sqrt(head_dim)), got ", scale);
  TESSERA_CHECK(chunk_pages > 0, "sparse chunk_pages must be positive, got ", chunk_pages);
  TESSERA_CHECK(std::isfinite(clusters_per_page) && clusters_per_page >= 0.0,
                "sparse clusters_per_page must be >= 0 (0 = equal metadata bytes), got ",
                clusters_per_page);
  TESSERA_CHECK(clusters_per_page <= page_tokens, "sparse clusters_per_page=", clusters_per_page,
                " exceeds page_tokens=", page_tokens, " (a cluster needs a member)");
  TESSERA_CHECK(kmeans_iters > 0 && kmeans_iters <= 1000,
                "sparse kmeans_iters must be in [1, 1000], got ", kmeans_iters);
}

float SparseSelectConfig::softmax_scale() const {
  return scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

double SparseSelectConfig::equal_bytes_clusters_per_page(int head_dim, int page_tokens) {
  const double quest = 2.0 * head_dim * 4.0;         // min and max, fp32
  const double per_cluster = 4.0 * head_dim + 16.0;  // centroid, radius, offset, min/max pos
  return (quest - 4.0 * page_tokens) / per_cluster;  // members: one int32 per token
}

double SparseSelectConfig::effective_clusters_per_page() const {
  if (clusters_per_page > 0.0) return clusters_per_page;
  // Small head dims leave too few bytes to match Quest: at least one cluster per chunk.
  return std::max(equal_bytes_clusters_per_page(head_dim, page_tokens), 1.0 / chunk_pages);
}

void KeyRows::read(int64_t pos, float* out) const {
  const int64_t block = block_table[pos / kv.block_size];
  const int slot = static_cast<int>(pos % kv.block_size);
  const void* row = kv.k_row(block, slot, head);
  if (kv.dtype == KvDType::kF32) {
    std::memcpy(out, row, sizeof(float) * kv.head_dim_k);
    return;
  }
  const float s = kv.k_scale_at(block, slot, head);
  for (int d = 0; d < kv.head_dim_k; ++d) out[d] = kv_load(kv.dtype, row, d, s);
}

SparseHeadIndex::SparseHeadIndex(const SparseSelectConfig& config, int head)
    : config_(config), head_(head) {
  config_.validate();
  member_offsets_.push_back(0);
}

void SparseHeadIndex::set_budget(int64_t budget) {
  SparseSelectConfig c = config_;
  c.budget = budget;
  c.validate();
  config_ = c;
}

void SparseHeadIndex::update(const KeyRows& keys, int64_t num_tokens) {
  TESSERA_CHECK(keys.kv.head_dim_k == config_.head_dim, "key head_dim=", keys.kv.head_dim_k,
                " differs from the sparse config's head_dim=", config_.head_dim);
  TESSERA_CHECK(num_tokens >= indexed_tokens(), "num_tokens=", num_tokens, " is below the ",
                indexed_tokens(),
                " tokens already indexed (a shortened sequence needs a new index)");
  const int64_t full = num_tokens / config_.page_tokens;
  if (full <= indexed_pages_) return;
  switch (config_.method) {
    case SparseMethod::kQuest:
    case SparseMethod::kMeanStd:
      index_pages_quest_meanstd(keys, indexed_pages_, full);
      break;
    case SparseMethod::kCluster: {
      // Complete chunks: one k-means each, sealed (whatever the open chunk held before).
      int64_t p = sealed_pages_;
      while (p + config_.chunk_pages <= full) {
        cluster_chunk(keys, p, p + config_.chunk_pages);
        p += config_.chunk_pages;
        sealed_pages_ = p;
        sealed_clusters_ = static_cast<int64_t>(radius2_.size());
        open_ = OpenChunk{};
      }
      // The open chunk of `want` pages: k-means on its first 2^m pages (re-run only when the
      // page count reaches a power of two), the pages after them assigned to those centres. The
      // result depends only on the pages, not on how they arrived: incremental = one pass.
      const int64_t want = full - p;
      if (want > 0) {
        int64_t pow2 = 1;
        while (pow2 * 2 <= want) pow2 *= 2;
        if (open_.clustered_pages < pow2) {
          cluster_chunk(keys, p, p + pow2);
          open_.pages = pow2;
        }
        if (open_.pages < want) assign_pages(keys, p + open_.pages, p + want);
        open_.pages = want;
      }
      break;
    }
    case SparseMethod::kSinkWindow:
      break;
  }
  indexed_pages_ = full;
}

void SparseHeadIndex::index_pages_quest_meanstd(const KeyRows& keys, int64_t first_page,
                                                int64_t end_page) {
  const int d = config_.head_dim, pt = config_.page_tokens;
  page_stats_.resize(static_cast<size_t>(end_page * 2 * d));
  std::vector<float> row(static_cast<size_t>(d));
  std::vector<double> sum(static_cast<size_t>(d)), sum2(static_cast<size_t>(d));
  for (int64_t p = first_page; p < end_page; ++p) {
    float* a = page_stats_.data() + p * 2 * d;
    float* b = a + d;
    if (config_.method == SparseMethod::kQuest) {
      std::fill(a, a + d, std::numeric_limits<float>::infinity());
      std::fill(b, b + d, kNegInf);
      for (int t = 0; t < pt; ++t) {
        keys.read(p * pt + t, row.data());
        for (int i = 0; i < d; ++i) {
          a[i] = std::min(a[i], row[i]);
          b[i] = std::max(b[i], row[i]);
        }
      }
    } else {
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(sum2.begin(), sum2.end(), 0.0);
      for (int t = 0; t < pt; ++t) {
        keys.read(p * pt + t, row.data());
        for (int i = 0; i < d; ++i) {
          sum[i] += row[i];
          sum2[i] += static_cast<double>(row[i]) * row[i];
        }
      }
      for (int i = 0; i < d; ++i) {
        const double mean = sum[i] / pt;
        a[i] = static_cast<float>(mean);
        b[i] = static_cast<float>(std::max(0.0, sum2[i] / pt - mean * mean));  // variance
      }
    }
  }
}

KMeansOptions SparseHeadIndex::kmeans_options(int64_t pages, int64_t first_token) const {
  KMeansOptions opt;
  opt.clusters = std::max<int>(
      1, static_cast<int>(std::lround(pages * config_.effective_clusters_per_page())));
  opt.iters = config_.kmeans_iters;
  opt.seed =
      mix_seed(config_.seed, static_cast<uint64_t>(head_), static_cast<uint64_t>(first_token));
  opt.farthest_seeds = static_cast<int>(std::ceil(config_.farthest_seeds * opt.clusters));
  opt.spherical = config_.spherical;
  opt.metric = metric_.empty() ? nullptr : metric_.data();
  return opt;
}

void SparseHeadIndex::cluster_chunk(const KeyRows& keys, int64_t first_page, int64_t end_page) {
  const int d = config_.head_dim, pt = config_.page_tokens;
  const int n = static_cast<int>((end_page - first_page) * pt);
  const int64_t first = first_page * pt;
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) keys.read(first + i, x.data() + static_cast<size_t>(i) * d);
  OpenChunk& o = open_;
  o = OpenChunk{};
  o.first_token = first;
  o.clustered_pages = end_page - first_page;
  o.model = kmeans_keys(x.data(), n, d, kmeans_options(end_page - first_page, first));
  const int k = o.model.clusters();
  o.members.assign(static_cast<size_t>(k), {});
  o.sum.assign(static_cast<size_t>(k) * d, 0.0f);
  o.sumsq.assign(static_cast<size_t>(k), 0.0f);
  add_to_open(x.data(), first, n, o.model.assign.data());
  publish_open();
}

void SparseHeadIndex::assign_pages(const KeyRows& keys, int64_t first_page, int64_t end_page) {
  const int d = config_.head_dim, pt = config_.page_tokens;
  const int n = static_cast<int>((end_page - first_page) * pt);
  const int64_t first = first_page * pt;
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) keys.read(first + i, x.data() + static_cast<size_t>(i) * d);
  std::vector<int32_t> assign(static_cast<size_t>(n));
  kmeans_assign(open_.model, x.data(), n, d,
                kmeans_options(open_.clustered_pages, open_.first_token), assign.data());
  add_to_open(x.data(), first, n, assign.data());
  publish_open();
}

void SparseHeadIndex::add_to_open(const float* x, int64_t first, int n, const int32_t* assign) {
  const int d = config_.head_dim;
  OpenChunk& o = open_;
  for (int i = 0; i < n; ++i) {
    const int c = assign[i];
    const float* xi = x + static_cast<size_t>(i) * d;
    o.members[c].push_back(static_cast<int32_t>(first + i));  // positions ascend
    float* sum = o.sum.data() + static_cast<size_t>(c) * d;
    float sq = 0.0f;
    for (int j = 0; j < d; ++j) {
      sum[j] += xi[j];
      sq += xi[j] * xi[j];
    }
    o.sumsq[c] += sq;
  }
}

// The open chunk's clusters replace the tail after the sealed ones: raw-key centroid, mean
// squared radius E|x|^2 - |c|^2, member list.
void SparseHeadIndex::publish_open() {
  const int d = config_.head_dim;
  const auto keep = static_cast<size_t>(sealed_clusters_);
  centroids_.resize(keep * d);
  radius2_.resize(keep);
  min_pos_.resize(keep);
  max_pos_.resize(keep);
  member_offsets_.resize(keep + 1);
  members_.resize(static_cast<size_t>(member_offsets_.back()));
  const OpenChunk& o = open_;
  for (size_t c = 0; c < o.members.size(); ++c) {
    const auto& m = o.members[c];
    if (m.empty()) continue;
    const float inv = 1.0f / static_cast<float>(m.size());
    float c2 = 0.0f;
    for (int j = 0; j < d; ++j) {
      const float v = o.sum[c * d + j] * inv;
      centroids_.push_back(v);
      c2 += v * v;
    }
    radius2_.push_back(std::max(0.0f, o.sumsq[c] * inv - c2));
    min_pos_.push_back(m.front());
    max_pos_.push_back(m.back());
    members_.insert(members_.end(), m.begin(), m.end());
    member_offsets_.push_back(static_cast<int32_t>(members_.size()));
  }
}

void SparseHeadIndex::set_query_samples(const float* q, int64_t rows, int64_t q_stride) {
  const int d = config_.head_dim;
  TESSERA_CHECK(rows > 0, "set_query_samples needs at least one query, got rows=", rows);
  // Second moment E[q q^T] (fp64), regularised, then its Cholesky factor L (Sigma = L L^T).
  std::vector<double> m(static_cast<size_t>(d) * d, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = q + r * q_stride;
    for (int a = 0; a < d; ++a) {
      for (int b = 0; b <= a; ++b) m[a * d + b] += static_cast<double>(x[a]) * x[b];
    }
  }
  double trace = 0.0;
  for (int a = 0; a < d; ++a) trace += m[a * d + a];
  TESSERA_CHECK(std::isfinite(trace), "query samples must be finite");
  const double ridge = 1e-2 * trace / d + 1e-12;
  for (int a = 0; a < d; ++a) m[a * d + a] += ridge;
  metric_.assign(static_cast<size_t>(d) * d, 0.0f);
  std::vector<double> l(static_cast<size_t>(d) * d, 0.0);
  for (int a = 0; a < d; ++a) {
    for (int b = 0; b <= a; ++b) {
      double sum = m[a * d + b];
      for (int c = 0; c < b; ++c) sum -= l[a * d + c] * l[b * d + c];
      l[a * d + b] = a == b ? std::sqrt(std::max(sum, 1e-30)) : sum / l[b * d + b];
    }
  }
  for (size_t i = 0; i < l.size(); ++i) metric_[i] = static_cast<float>(l[i]);
}

void SparseHeadIndex::recluster_globally(const KeyRows& keys) {
  TESSERA_CHECK(config_.method == SparseMethod::kCluster,
                "recluster_globally needs the cluster method, got ",
                sparse_method_name(config_.method));
  const int64_t clusters = num_units();
  const int64_t pages = indexed_pages_;
  sealed_pages_ = 0;
  sealed_clusters_ = 0;
  SparseSelectConfig saved = config_;
  config_.clusters_per_page = pages > 0 ? static_cast<double>(clusters) / pages : 1.0;
  if (pages > 0) cluster_chunk(keys, 0, pages);
  config_ = saved;
  open_ = OpenChunk{};
  // Everything is one chunk now; later updates re-cluster from here as an open chunk would.
  sealed_pages_ = pages;
  sealed_clusters_ = num_units();
}

int64_t SparseHeadIndex::num_units() const {
  if (config_.method == SparseMethod::kCluster) return static_cast<int64_t>(radius2_.size());
  if (config_.method == SparseMethod::kSinkWindow) return 0;
  return indexed_pages_;
}

std::span<const int32_t> SparseHeadIndex::cluster_members(int64_t c) const {
  TESSERA_CHECK(c >= 0 && c < static_cast<int64_t>(radius2_.size()), "cluster ", c,
                " out of range [0, ", radius2_.size(), ")");
  return {members_.data() + member_offsets_[c],
          static_cast<size_t>(member_offsets_[c + 1] - member_offsets_[c])};
}

int64_t SparseHeadIndex::metadata_bytes() const {
  switch (config_.method) {
    case SparseMethod::kCluster:
      return static_cast<int64_t>(sizeof(float) * (centroids_.size() + radius2_.size()) +
                                  sizeof(int32_t) * (member_offsets_.size() + members_.size() +
                                                     min_pos_.size() + max_pos_.size()));
    case SparseMethod::kQuest:
    case SparseMethod::kMeanStd:
      return static_cast<int64_t>(sizeof(float) * page_stats_.size());
    case SparseMethod::kSinkWindow:
      return 0;
  }
  return 0;
}

int64_t SparseHeadIndex::select(const float* q, int64_t q_stride, int64_t num_tokens,
                                int32_t* out) const {
  const int64_t n = num_tokens;
  if (n <= config_.budget) {
    for (int64_t p = 0; p < n; ++p) out[p] = static_cast<int32_t>(p);
    return n;
  }
  const int64_t sink_end = std::min(config_.sinks, n);
  int64_t window_begin = std::max(sink_end, std::min(n - config_.window, indexed_tokens()));
  if (config_.method == SparseMethod::kSinkWindow) {
    window_begin = std::max(sink_end, n - (config_.budget - sink_end));
  }
  const int64_t middle = config_.budget - sink_end - (n - window_begin);
  TESSERA_CHECK(middle >= 0, "sparse index is behind: positions [", indexed_tokens(), ", ", n,
                ") are not indexed and exceed the budget ", config_.budget,
                "; call update() with num_tokens=", n, " first");
  return select_range(q, q_stride, n, sink_end, window_begin, middle, out);
}

int64_t SparseHeadIndex::select_range(const float* q, int64_t q_stride, int64_t num_tokens,
                                      int64_t sink_end, int64_t window_begin, int64_t middle_budget,
                                      int32_t* out) const {
  TESSERA_CHECK(sink_end >= 0 && sink_end <= num_tokens, "sink_end=", sink_end,
                " must be in [0, num_tokens=", num_tokens, "]");
  TESSERA_CHECK(middle_budget >= 0, "middle_budget must be >= 0, got ", middle_budget);
  const int64_t wb_max =
      config_.method == SparseMethod::kSinkWindow ? num_tokens : indexed_tokens();
  window_begin = std::clamp(std::min(window_begin, wb_max), sink_end, num_tokens);
  int64_t count = 0;
  for (int64_t p = 0; p < sink_end; ++p) out[count++] = static_cast<int32_t>(p);

  const int64_t middle_tokens = window_begin - sink_end;
  int64_t remaining = std::min(middle_budget, middle_tokens);
  if (remaining == middle_tokens) {  // everything fits
    for (int64_t p = sink_end; p < window_begin; ++p) out[count++] = static_cast<int32_t>(p);
    remaining = 0;
  } else if (config_.method == SparseMethod::kSinkWindow) {
    for (int64_t p = window_begin - remaining; p < window_begin; ++p) {
      out[count++] = static_cast<int32_t>(p);
    }
    remaining = 0;
  }
  if (remaining > 0) {
    const int group = config_.group, d = config_.head_dim, pt = config_.page_tokens;
    const float scale = config_.softmax_scale();
    const bool clusters = config_.method == SparseMethod::kCluster;
    // Candidate units: every cluster, or the pages overlapping [sink_end, window_begin).
    const int64_t first_page = clusters ? 0 : sink_end / pt;
    const int64_t end_page = clusters ? 0 : (window_begin + pt - 1) / pt;
    const int64_t units = clusters ? num_units() : end_page - first_page;
    SelectScratch& s = scratch();
    TESSERA_CHECK(group <= 64, "sparse selection supports group <= 64, got ", group);
    s.scores.resize(static_cast<size_t>(group * units));
    s.density.assign(static_cast<size_t>(units), 0.0f);
    s.qrows.resize(static_cast<size_t>(group) * d);
    s.bonus.resize(static_cast<size_t>(group));
    for (int g = 0; g < group; ++g) {
      std::copy_n(q + g * q_stride, d, s.qrows.data() + static_cast<size_t>(g) * d);
      float n2 = 0.0f;
      for (int i = 0; i < d; ++i) n2 += q[g * q_stride + i] * q[g * q_stride + i];
      // log E exp(scale q . k) over a Gaussian cluster of isotropic variance r^2 / d.
      s.bonus[g] = config_.radius_bonus ? 0.5f * scale * scale * n2 / static_cast<float>(d) : 0.0f;
    }
    if (clusters) {
      cluster_scores(s.qrows.data(), group, d, scale, centroids_.data(), radius2_.data(),
                     s.bonus.data(), units, s.scores.data());
    } else if (config_.method == SparseMethod::kQuest) {
      quest_scores(s.qrows.data(), group, d, scale, page_stats_.data(), first_page, units,
                   s.scores.data());
    } else {
      s.qsq.resize(static_cast<size_t>(group) * d);
      for (size_t i = 0; i < s.qsq.size(); ++i) s.qsq[i] = s.qrows[i] * s.qrows[i];
      meanstd_scores(s.qrows.data(), s.qsq.data(), group, d, scale, page_stats_.data(), first_page,
                     units, s.scores.data());
    }
    // Estimated share of each head's attention mass per token of a unit, averaged over the
    // group: exp(score) normalised by the head's total over all units (weighted by their sizes).
    for (int g = 0; g < group; ++g) {
      float* sg = s.scores.data() + static_cast<int64_t>(g) * units;
      exp_shifted(sg, units);
      double z = 0.0;
      if (clusters) {
        for (int64_t u = 0; u < units; ++u) {
          z += static_cast<double>(member_offsets_[u + 1] - member_offsets_[u]) * sg[u];
        }
      } else {
        for (int64_t u = 0; u < units; ++u) z += sg[u];
        z *= pt;
      }
      const auto inv = static_cast<float>(1.0 / z);
      for (int64_t u = 0; u < units; ++u) s.density[u] += sg[u] * inv;
    }
    s.order.resize(static_cast<size_t>(units));
    std::iota(s.order.begin(), s.order.end(), 0);
    auto by_density = [&](int32_t a, int32_t b) {
      return s.density[a] > s.density[b] || (s.density[a] == s.density[b] && a < b);
    };
    // Only the leading units are needed: sort a generous prefix, the rest only if it runs out.
    const int64_t avg =
        std::max<int64_t>(1, (window_begin - sink_end) / std::max<int64_t>(units, 1));
    const int64_t want = std::min(units, 2 * remaining / avg + 64);
    if (want > 0) {
      std::nth_element(s.order.begin(), s.order.begin() + (want - 1), s.order.end(), by_density);
    }
    std::sort(s.order.begin(), s.order.begin() + want, by_density);
    bool sorted_all = want == units;
    for (int64_t i = 0; i < units && remaining > 0; ++i) {
      if (i == want && !sorted_all) {
        std::sort(s.order.begin() + want, s.order.end(), by_density);
        sorted_all = true;
      }
      const int32_t u = s.order[i];
      if (clusters) {
        const int32_t* m = members_.data() + member_offsets_[u];
        const int32_t size = member_offsets_[u + 1] - member_offsets_[u];
        const bool inside = min_pos_[u] >= sink_end && max_pos_[u] < window_begin;
        for (int32_t j = 0; j < size && remaining > 0; ++j) {
          if (inside || (m[j] >= sink_end && m[j] < window_begin)) {
            out[count++] = m[j];
            --remaining;
          }
        }
      } else {
        const int64_t p = first_page + u;
        const int64_t lo = std::max(p * pt, sink_end), hi = std::min((p + 1) * pt, window_begin);
        for (int64_t t = lo; t < hi && remaining > 0; ++t) {
          out[count++] = static_cast<int32_t>(t);
          --remaining;
        }
      }
    }
  }
  for (int64_t p = window_begin; p < num_tokens; ++p) out[count++] = static_cast<int32_t>(p);
  return count;
}

SparseSequenceIndex::SparseSequenceIndex(const SparseSelectConfig& config, int num_kv_heads)
    : config_(config) {
  config_.validate();
  TESSERA_CHECK(num_kv_heads > 0, "num_kv_heads must be positive, got ", num_kv_heads);
  heads_.reserve(static_cast<size_t>(num_kv_heads));
  for (int kh = 0; kh < num_kv_heads; ++kh) heads_.emplace_back(config_, kh);
}

void SparseSequenceIndex::set_budget(int64_t budget) {
  for (auto& h : heads_) h.set_budget(budget);
  config_.budget = budget;
}

void SparseSequenceIndex::set_query_samples(const float* q, int64_t rows,
                                            const int64_t q_stride[2]) {
  const int group = config_.group, d = config_.head_dim;
  std::vector<float> rows_of(static_cast<size_t>(rows) * group * d);
  for (int kh = 0; kh < num_kv_heads(); ++kh) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int g = 0; g < group; ++g) {
        const float* src =
            q + r * q_stride[0] + (static_cast<int64_t>(kh) * group + g) * q_stride[1];
        std::copy(src, src + d, rows_of.data() + (r * group + g) * d);
      }
    }
    heads_[static_cast<size_t>(kh)].set_query_samples(rows_of.data(), rows * group, d);
  }
}

void SparseSequenceIndex::update(const PagedKv& kv, const int32_t* block_table,
                                 int64_t num_tokens) {
  TESSERA_CHECK(kv.num_kv_heads == num_kv_heads(), "cache has ", kv.num_kv_heads,
                " kv heads, the sparse index ", num_kv_heads());
  // Checked here as well as per head: an exception cannot leave the parallel loop below.
  TESSERA_CHECK(kv.head_dim_k == config_.head_dim, "key head_dim=", kv.head_dim_k,
                " differs from the sparse config's head_dim=", config_.head_dim);
  TESSERA_CHECK(num_tokens >= heads_[0].indexed_tokens(), "num_tokens=", num_tokens,
                " is below the ", heads_[0].indexed_tokens(),
                " tokens already indexed (a shortened sequence needs a new index)");
  // Most decode steps fill no page: no work, and no parallel region to start.
  if (num_tokens / config_.page_tokens * config_.page_tokens <= heads_[0].indexed_tokens()) return;
  const int heads = num_kv_heads();
#pragma omp parallel for schedule(dynamic, 1) if (heads > 1)
  for (int kh = 0; kh < heads; ++kh) {
    heads_[static_cast<size_t>(kh)].update(KeyRows{kv, block_table, kh}, num_tokens);
  }
}

void SparseSequenceIndex::select(const float* q, int64_t q_stride, int64_t num_tokens, int32_t* idx,
                                 int32_t* counts, int64_t max_entries) const {
  const int64_t need = std::min(config_.budget, num_tokens);
  TESSERA_CHECK(max_entries >= need, "max_entries=", max_entries, " is below the ", need,
                " tokens a list may hold");
  for (int kh = 0; kh < num_kv_heads(); ++kh) {
    counts[kh] = static_cast<int32_t>(heads_[static_cast<size_t>(kh)].select(
        q + static_cast<int64_t>(kh) * config_.group * q_stride, q_stride, num_tokens,
        idx + kh * max_entries));
  }
}

int64_t SparseSequenceIndex::metadata_bytes() const {
  int64_t b = 0;
  for (const auto& h : heads_) b += h.metadata_bytes();
  return b;
}

SparseShard sparse_shard(const SparseSelectConfig& config, int64_t global_tokens,
                         int64_t block_tokens, int world, int rank) {
  config.validate();
  TESSERA_CHECK(block_tokens > 0, "block_tokens must be positive, got ", block_tokens);
  TESSERA_CHECK(world > 0 && rank >= 0 && rank < world, "rank=", rank,
                " must be in [0, world=", world, ")");
  TESSERA_CHECK(global_tokens >= 0, "global_tokens must be >= 0, got ", global_tokens);
  // Positions below p that rank r holds.
  auto below = [&](int64_t p, int r) {
    const int64_t round = block_tokens * world;
    return p / round * block_tokens +
           std::clamp<int64_t>(p % round - r * block_tokens, 0, block_tokens);
  };
  const int64_t n = global_tokens;
  const bool all = n <= config.budget;
  const int64_t sinks = std::min(config.sinks, n);
  const int64_t win = all ? n : std::max(sinks, n - config.window);
  std::vector<int64_t> mid(static_cast<size_t>(world));
  int64_t total_mid = 0;
  for (int r = 0; r < world; ++r) {
    mid[r] = below(win, r) - below(sinks, r);
    total_mid += mid[r];
  }
  const int64_t want = all ? total_mid : config.budget - sinks - (n - win);
  // Shares proportional to the middle tokens held; the remainder one by one to the first ranks.
  std::vector<int64_t> share(static_cast<size_t>(world));
  int64_t given = 0;
  for (int r = 0; r < world; ++r) {
    share[r] = total_mid > 0 ? want * mid[r] / total_mid : 0;
    given += share[r];
  }
  for (int r = 0; r < world && given < want; ++r) {
    if (share[r] < mid[r]) {
      ++share[r];
      ++given;
    }
  }
  SparseShard s;
  s.local_tokens = below(n, rank);
  s.sink_end = below(sinks, rank);
  s.window_begin = below(win, rank);
  s.middle_budget = share[rank];
  return s;
}

void sparse_select_check(std::span<const SparseSequenceIndex* const> seqs,
                         const int64_t* num_tokens, int64_t max_entries) {
  if (seqs.empty()) return;
  const int heads = seqs[0]->num_kv_heads();
  const int group = seqs[0]->config().group;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& c = seqs[i]->config();
    const int64_t n = num_tokens[i];
    TESSERA_CHECK(n >= 0 && n <= std::numeric_limits<int32_t>::max(), "num_tokens[", i, "]=", n,
                  " must be in [0, 2^31)");
    TESSERA_CHECK(seqs[i]->num_kv_heads() == heads && c.group == group,
                  "every sequence of a batch needs the same kv heads and group; sequence ", i,
                  " has ", seqs[i]->num_kv_heads(), " x ", c.group, ", sequence 0 ", heads, " x ",
                  group);
    TESSERA_CHECK(max_entries >= std::min(c.budget, n), "max_entries=", max_entries,
                  " is below sequence ", i, "'s list length ", std::min(c.budget, n));
    if (n > c.budget && c.method != SparseMethod::kSinkWindow) {
      const int64_t indexed = seqs[i]->head(0).indexed_tokens();
      const int64_t forced = std::min(c.sinks, n) + n - std::min(n - c.window, indexed);
      TESSERA_CHECK(forced <= c.budget, "sparse index of sequence ", i, " is behind (indexed ",
                    indexed, " of ", n, " tokens): call update() with num_tokens=", n, " first");
    }
  }
}

void sparse_select_batch(std::span<const SparseSequenceIndex* const> seqs, const float* q,
                         const int64_t q_stride[2], const int64_t* num_tokens, int32_t* idx,
                         int32_t* counts, int64_t max_entries) {
  if (seqs.empty()) return;
  // Everything that could throw is checked first: an exception cannot leave the parallel loop.
  sparse_select_check(seqs, num_tokens, max_entries);
  const int heads = seqs[0]->num_kv_heads();
  const int group = seqs[0]->config().group;
  const int64_t pairs = static_cast<int64_t>(seqs.size()) * heads;
#pragma omp parallel for schedule(dynamic, 1) if (pairs > 1)
  for (int64_t pr = 0; pr < pairs; ++pr) {
    const int64_t s = pr / heads;
    const int kh = static_cast<int>(pr % heads);
    const float* qs = q + s * q_stride[0] + static_cast<int64_t>(kh) * group * q_stride[1];
    counts[pr] = static_cast<int32_t>(seqs[static_cast<size_t>(s)]->head(kh).select(
        qs, q_stride[1], num_tokens[s], idx + pr * max_entries));
  }
}

}  // namespace tessera::kernels
