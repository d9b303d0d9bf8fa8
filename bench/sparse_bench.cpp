// `tessera bench sparse`: token selection for sparse decode on synthetic families (bench/
// sparse_families.h), all methods on the same tensors: cluster (k-means over keys), Quest (page
// min / max), mean+std page scores, sink+window and the oracle top-k. Per (family, context,
// budget, method): attention-mass recall, oracle top-k hit rate, relative output error, needle
// hits, KV bytes read per step, selection bytes and time. Then the decode step (selection + sparse
// attention, fast CPU) against dense paged decode (fast CPU) on the same pool and threads;
// incremental clustering after 4,096 decode steps against re-clustering from scratch; and (full
// run) an ablation of the cluster method's choices.
//
// Equal metadata bytes: Quest and mean+std keep two fp32 vectors per page (8 * head_dim bytes);
// the cluster index gets as many clusters per page as fit in the same bytes counting everything it
// stores (centroid, radius, offsets, min / max position, one int32 per member):
// SparseSelectConfig::equal_bytes_clusters_per_page. The JSON reports each index's bytes. The
// cluster index also sees 64 query samples per kv head (what a prefill provides) for its metric.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/sparse_families.h"
#include "common/error.h"
#include "kernels/paged/paged_attention.h"
#include "kernels/sparse_decode/sparse_attention.h"
#include "kernels/sparse_decode/sparse_decode_step.h"
#include "kernels/sparse_decode/sparse_select.h"

namespace tessera::bench {

namespace {

using Clock = std::chrono::steady_clock;
using kernels::SparseMethod;
using kernels::SparseSelectConfig;
using kernels::SparseSequenceIndex;
using nlohmann::json;

constexpr int kHeadDim = 128, kBlock = 16, kSinks = 4, kWindow = 64, kQuerySamples = 64;
const std::vector<std::string> kMethods = {"cluster", "quest", "meanstd", "sink_window", "oracle"};

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

SparseSelectConfig base_config(SparseMethod m, int64_t budget, int group) {
  SparseSelectConfig c;
  c.method = m;
  c.budget = budget;
  c.sinks = kSinks;
  c.window = kWindow;
  c.page_tokens = kBlock;
  c.head_dim = kHeadDim;
  c.group = group;
  return c;
}

// Exact attention of every decode query head over the whole context: probabilities [queries,
// Hq, tokens] and outputs [queries, Hq, head_dim] (fp64).
struct Exact {
  int64_t tokens = 0;
  int hq = 0;
  std::vector<float> probs;
  std::vector<double> out;
  const float* p(int j, int h) const {
    return probs.data() + (static_cast<int64_t>(j) * hq + h) * tokens;
  }
};

Exact exact_attention(const SparseFamily& f) {
  Exact e;
  const int hq = f.num_q_heads(), d = kHeadDim, nq = f.shape.queries, group = f.shape.group;
  const int hkv = f.shape.kv_heads;
  const int64_t n = f.shape.tokens;
  e.tokens = n;
  e.hq = hq;
  e.probs.resize(static_cast<size_t>(nq) * hq * n);
  e.out.assign(static_cast<size_t>(nq) * hq * d, 0.0);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // One (query, kv head) per task: each key and value row is read once for the whole group.
#pragma omp parallel for schedule(dynamic, 1)
  for (int jk = 0; jk < nq * hkv; ++jk) {
    const int j = jk / hkv, kh = jk % hkv;
    const float* q = f.q.data() + (static_cast<size_t>(j) * hq + kh * group) * d;
    float* p0 = e.probs.data() + (static_cast<size_t>(j) * hq + kh * group) * n;
    std::vector<double> mx(static_cast<size_t>(group), -1e300), z(static_cast<size_t>(group), 0.0);
    std::vector<float> o(static_cast<size_t>(group) * d, 0.0f), dots(static_cast<size_t>(group));
    for (int64_t t = 0; t < n; ++t) {
      const float* k = f.key(t, kh);
      for (int g = 0; g < group; ++g) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < d; ++i) s += q[g * d + i] * k[i];
        p0[g * n + t] = s * scale;
        mx[g] = std::max<double>(mx[g], s * scale);
      }
    }
    for (int g = 0; g < group; ++g) {
      float* p = p0 + g * n;
      const auto m = static_cast<float>(mx[g]);
      double sum = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        p[t] = std::exp(p[t] - m);
        sum += p[t];
      }
      z[g] = sum;
      const auto inv = static_cast<float>(1.0 / sum);
      for (int64_t t = 0; t < n; ++t) p[t] *= inv;
    }
    // Outputs in fp64 from the normalised probabilities, one value row for the whole group.
    std::vector<double> acc(static_cast<size_t>(group) * d, 0.0);
    for (int64_t t = 0; t < n; ++t) {
      const float* v = f.value(t, kh);
      for (int g = 0; g < group; ++g) {
        const double w = p0[g * n + t];
        double* a = acc.data() + static_cast<size_t>(g) * d;
#pragma omp simd
        for (int i = 0; i < d; ++i) a[i] += w * v[i];
      }
    }
    std::copy(acc.begin(), acc.end(),
              e.out.begin() + (static_cast<size_t>(j) * hq + kh * group) * d);
  }
  return e;
}

// Sums over the selections scored so far (one per query and kv head; recall and error also over
// the group's heads).
struct Quality {
  double recall = 0, error = 0, topk = 0, needles = 0, lists = 0, heads = 0;
  int64_t count = 0;
};

void score_selection(const SparseFamily& f, const Exact& e, int j, int kh, const int32_t* sel,
                     int64_t count, const std::vector<uint8_t>* oracle_mark, int64_t oracle_count,
                     Quality& q) {
  const int d = kHeadDim, group = f.shape.group;
  std::vector<double> o(static_cast<size_t>(d));
  for (int g = 0; g < group; ++g) {
    const int h = kh * group + g;
    const float* p = e.p(j, h);
    double mass = 0.0;
    std::fill(o.begin(), o.end(), 0.0);
    for (int64_t i = 0; i < count; ++i) {
      const double w = p[sel[i]];
      mass += w;
      const float* v = f.value(sel[i], kh);
      for (int c = 0; c < d; ++c) o[c] += w * v[c];
    }
    const double* exact = e.out.data() + (static_cast<size_t>(j) * f.num_q_heads() + h) * d;
    double num = 0.0, den = 0.0;
    for (int c = 0; c < d; ++c) {
      const double oc = mass > 0 ? o[c] / mass : 0.0;
      num += (oc - exact[c]) * (oc - exact[c]);
      den += exact[c] * exact[c];
    }
    q.recall += mass;
    q.error += std::sqrt(num / std::max(den, 1e-300));
    q.heads += 1;
  }
  if (oracle_mark != nullptr) {
    int64_t hits = 0;
    for (int64_t i = 0; i < count; ++i) hits += (*oracle_mark)[static_cast<size_t>(sel[i])];
    q.topk += oracle_count > 0 ? static_cast<double>(hits) / oracle_count : 1.0;
  }
  const auto& nd = f.needles[static_cast<size_t>(j) * f.shape.kv_heads + kh];
  if (!nd.empty()) {
    int found = 0;
    for (int32_t x : nd) found += std::find(sel, sel + count, x) != sel + count;
    q.needles += static_cast<double>(found) / static_cast<double>(nd.size());
  }
  q.count += count;
  q.lists += 1;
}

// The oracle: the `budget` tokens of largest mean probability over the group.
void oracle_select(const Exact& e, int j, int kh, int group, int64_t budget,
                   std::vector<float>& mean, std::vector<int32_t>& out) {
  const int64_t n = e.tokens;
  mean.assign(static_cast<size_t>(n), 0.0f);
  for (int g = 0; g < group; ++g) {
    const float* p = e.p(j, kh * group + g);
    for (int64_t t = 0; t < n; ++t) mean[t] += p[t];
  }
  out.resize(static_cast<size_t>(n));
  std::iota(out.begin(), out.end(), 0);
  const int64_t k = std::min(budget, n);
  std::nth_element(out.begin(), out.begin() + (k - 1), out.end(), [&](int32_t a, int32_t b) {
    return mean[a] > mean[b] || (mean[a] == mean[b] && a < b);
  });
  out.resize(static_cast<size_t>(k));
}

// Touches a buffer larger than the last-level cache, so every timed step starts cold (as it would
// after the other layers of a model).
struct CacheFlusher {
  std::vector<float> buf = std::vector<float>(static_cast<size_t>(16) << 20, 1.0f);  // 64 MB
  double sink = 0.0;
  void flush() {
    float s = 0.0f;
    const auto n = static_cast<int64_t>(buf.size());
#pragma omp parallel for reduction(+ : s)
    for (int64_t i = 0; i < n; i += 16) {
      buf[i] += 1.0f;
      s += buf[i];
    }
    sink += s;
  }
};

std::unique_ptr<SparseSequenceIndex> build_index(const SparseFamily& f,
                                                 const SparseSelectConfig& config, int64_t tokens,
                                                 double* ms) {
  auto idx = std::make_unique<SparseSequenceIndex>(config, f.shape.kv_heads);
  const auto t0 = Clock::now();
  if (config.method == SparseMethod::kCluster && !f.q_samples.empty()) {
    const int64_t st[2] = {static_cast<int64_t>(f.num_q_heads()) * kHeadDim, kHeadDim};
    idx->set_query_samples(f.q_samples.data(), f.shape.query_samples, st);
  }
  idx->update(f.kv(), f.block_table.data(), tokens);
  if (ms) *ms = ms_since(t0);
  return idx;
}

// Mean recall of the cluster selections of index `idx` over all decode queries.
double cluster_recall(const SparseFamily& f, const Exact& e, const SparseSequenceIndex& idx,
                      int64_t budget) {
  const int hkv = f.shape.kv_heads;
  std::vector<int32_t> sel(static_cast<size_t>(hkv) * budget), counts(hkv);
  Quality q;
  for (int j = 0; j < f.shape.queries; ++j) {
    idx.select(f.q.data() + static_cast<size_t>(j) * f.num_q_heads() * kHeadDim, kHeadDim,
               f.shape.tokens, sel.data(), counts.data(), budget);
    for (int kh = 0; kh < hkv; ++kh) {
      score_selection(f, e, j, kh, sel.data() + kh * budget, counts[kh], nullptr, 0, q);
    }
  }
  return q.recall / q.heads;
}

struct Params {
  bool quick = false;
  std::vector<int64_t> contexts, budgets;
  int kv_heads = 4, group = 4, queries = 4;
  int timing_rounds = 15;
  std::vector<int64_t> timing_contexts, timing_budgets;
  std::string timing_family = "rope";
  std::vector<std::string> incremental_families;
  int64_t incremental_prefill = 8192, incremental_budget = 1024;
};

Params params(bool quick) {
  Params p;
  p.quick = quick;
  if (quick) {
    p.contexts = {32768};
    p.budgets = {256, 2048};
    p.queries = 2;
    p.kv_heads = 2;
    p.timing_rounds = 7;
    p.timing_contexts = {32768};
    p.timing_budgets = {2048};
    // needles: isolated keys must keep their clusters; scattered: the largest gap of the full
    // run (topics spread over every page, the hardest to group chunk by chunk).
    p.incremental_families = {"needles", "scattered"};
    p.incremental_prefill = 2048;
    p.incremental_budget = 512;
  } else {
    p.contexts = {8192, 32768, 131072};
    p.budgets = {256, 512, 1024, 2048, 4096};
    p.timing_contexts = p.contexts;
    p.timing_budgets = p.budgets;
    p.incremental_families = sparse_family_names();
  }
  return p;
}

// Decode step timing on one family's pool: dense paged decode (every baseline tried) against a
// sparse step (selection + attention, sparse_decode_step_cpu) for each method and budget, cold
// caches, interleaved rounds, at all threads and at one. The speedup is the median over rounds of
// (best dense baseline of the round) / (step of the round): neighbours in time share the
// machine's load (other processes on a shared machine).
json time_steps(const SparseFamily& f, std::vector<std::unique_ptr<SparseSequenceIndex>>& built,
                const Params& p, CacheFlusher& flusher) {
  const int hkv = f.shape.kv_heads, hq = f.num_q_heads(), d = kHeadDim;
  const int64_t ctx = f.shape.tokens;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> out(static_cast<size_t>(hq) * d), lse(static_cast<size_t>(hq));
  const int32_t seq_len = static_cast<int32_t>(ctx), q_starts[2] = {0, 1};
  kernels::PagedAttentionView dense;
  dense.q = f.q.data();
  dense.kv = f.kv();
  dense.block_tables = f.block_table.data();
  dense.seq_lens = &seq_len;
  dense.q_starts = q_starts;
  dense.out = out.data();
  dense.lse = lse.data();
  dense.q_stride[0] = static_cast<int64_t>(hq) * d;
  dense.q_stride[1] = d;
  dense.total_q = 1;
  dense.num_seqs = 1;
  dense.max_blocks_per_seq = static_cast<int>(f.block_table.size());
  dense.num_q_heads = hq;
  dense.scale = scale;

  const std::vector<std::string> methods = {"cluster", "quest", "meanstd", "sink_window"};
  std::vector<std::unique_ptr<SparseSequenceIndex>> sw;  // sink+window per budget
  for (int64_t b : p.timing_budgets) {
    sw.push_back(std::make_unique<SparseSequenceIndex>(
        base_config(SparseMethod::kSinkWindow, b, f.shape.group), hkv));
  }
  const int64_t max_b = *std::max_element(p.timing_budgets.begin(), p.timing_budgets.end());
  std::vector<int32_t> sel(static_cast<size_t>(hkv) * max_b), counts(hkv);
  const int64_t q_stride[2] = {static_cast<int64_t>(hq) * d, d};
  const int64_t tokens = ctx;
  const int all = omp_get_max_threads();
  json per_threads = json::array();
  for (int threads : {all, 1}) {
    if (threads == 1 && all == 1 && !per_threads.empty()) break;
    omp_set_num_threads(threads);
    const std::vector<std::pair<std::string, int>> baselines = {
        {"paged_decode_auto_splits", 0},
        {"paged_decode_splits_" + std::to_string(4 * threads), 4 * threads}};
    std::map<std::string, std::vector<double>> base_ms, step_ms, select_ms;
    std::vector<double> best_base;  // per round
    for (int r = 0; r < p.timing_rounds; ++r) {
      double best = 1e300;
      for (const auto& [name, splits] : baselines) {
        dense.kv_splits = splits;
        flusher.flush();
        const auto t0 = Clock::now();
        kernels::paged_attention_cpu(dense);
        base_ms[name].push_back(ms_since(t0));
        best = std::min(best, base_ms[name].back());
      }
      best_base.push_back(best);
      for (size_t bi = 0; bi < p.timing_budgets.size(); ++bi) {
        const int64_t budget = p.timing_budgets[bi];
        for (size_t mi = 0; mi < methods.size(); ++mi) {
          SparseSequenceIndex* idx = mi < 3 ? built[mi].get() : sw[bi].get();
          idx->set_budget(budget);
          const SparseSequenceIndex* seqs[1] = {idx};
          kernels::SparseDecodeView v;
          v.q = f.q.data();
          v.kv = f.kv();
          v.block_tables = f.block_table.data();
          v.idx = sel.data();
          v.counts = counts.data();
          v.out = out.data();
          v.lse = lse.data();
          v.q_stride[0] = q_stride[0];
          v.q_stride[1] = q_stride[1];
          v.num_seqs = 1;
          v.max_blocks_per_seq = static_cast<int>(f.block_table.size());
          v.num_q_heads = hq;
          v.max_entries = static_cast<int>(budget);
          v.scale = scale;
          const std::string key = methods[mi] + "/" + std::to_string(budget);
          flusher.flush();
          auto t0 = Clock::now();
          kernels::sparse_decode_step_cpu(seqs, v, &tokens);
          step_ms[key].push_back(ms_since(t0));
          flusher.flush();
          t0 = Clock::now();
          kernels::sparse_select_batch(seqs, f.q.data(), q_stride, &tokens, sel.data(),
                                       counts.data(), budget);
          select_ms[key].push_back(ms_since(t0));
        }
      }
    }
    json base = json::array();
    double baseline = 1e300;
    for (const auto& [name, splits] : baselines) {
      const auto& v = base_ms[name];
      base.push_back({{"name", name},
                      {"kv_splits", splits},
                      {"median_ms", quantile(v, 0.5)},
                      {"p10_ms", quantile(v, 0.1)},
                      {"p90_ms", quantile(v, 0.9)}});
      baseline = std::min(baseline, quantile(v, 0.5));
    }
    json rows = json::array();
    const double dense_bytes = static_cast<double>(ctx) * hkv * 2.0 * d * sizeof(float);
    for (int64_t budget : p.timing_budgets) {
      for (const auto& m : methods) {
        const std::string key = m + "/" + std::to_string(budget);
        std::vector<double> ratio;
        for (int r = 0; r < p.timing_rounds; ++r) ratio.push_back(best_base[r] / step_ms[key][r]);
        rows.push_back({{"method", m},
                        {"budget", budget},
                        {"step_ms", quantile(step_ms[key], 0.5)},
                        {"step_p10_ms", quantile(step_ms[key], 0.1)},
                        {"step_p90_ms", quantile(step_ms[key], 0.9)},
                        {"select_ms", quantile(select_ms[key], 0.5)},
                        {"speedup_vs_dense", quantile(ratio, 0.5)},
                        {"speedup_p10", quantile(ratio, 0.1)},
                        {"speedup_p90", quantile(ratio, 0.9)},
                        {"speedup_of_medians", baseline / quantile(step_ms[key], 0.5)},
                        {"kv_bytes_per_step", static_cast<double>(budget) * hkv * 2.0 * d * 4.0},
                        {"dense_kv_bytes_per_step", dense_bytes}});
      }
    }
    per_threads.push_back(
        {{"threads", threads}, {"baselines", base}, {"dense_ms", baseline}, {"steps", rows}});
  }
  omp_set_num_threads(all);
  return {{"family", f.name}, {"context", ctx}, {"rounds", p.timing_rounds}, {"runs", per_threads}};
}

// Incremental clustering over `steps` decode steps after a prefill, against re-clustering every
// token from scratch (one global k-means with as many clusters).
json incremental_check(const std::string& fam, const Params& p) {
  constexpr int64_t kSteps = 4096;
  SparseFamilyShape shape;
  shape.tokens = p.incremental_prefill + kSteps;
  shape.kv_heads = 2;
  shape.group = p.group;
  shape.head_dim = kHeadDim;
  shape.block_size = kBlock;
  shape.queries = p.queries;
  shape.query_samples = kQuerySamples;
  shape.seed = 23;
  const SparseFamily f = make_sparse_family(fam, shape);
  const Exact e = exact_attention(f);
  const SparseSelectConfig cfg = base_config(SparseMethod::kCluster, p.incremental_budget, p.group);
  double ms = 0.0;
  auto inc = build_index(f, cfg, p.incremental_prefill, &ms);
  const auto t0 = Clock::now();
  for (int64_t t = 1; t <= kSteps; ++t)
    inc->update(f.kv(), f.block_table.data(), p.incremental_prefill + t);
  const double update_ms = ms_since(t0);
  auto bulk = build_index(f, cfg, shape.tokens, nullptr);
  // The incremental index equals one built in a single pass over the final context.
  bool equal = true;
  for (int kh = 0; kh < shape.kv_heads; ++kh) {
    const auto& a = inc->head(kh);
    const auto& b = bulk->head(kh);
    equal = equal && a.num_units() == b.num_units();
    for (int64_t c = 0; equal && c < a.num_units(); ++c) {
      const auto ma = a.cluster_members(c), mb = b.cluster_members(c);
      equal = std::equal(ma.begin(), ma.end(), mb.begin(), mb.end());
    }
  }
  auto global = std::make_unique<SparseSequenceIndex>(*bulk);
  const auto t1 = Clock::now();
#pragma omp parallel for schedule(dynamic, 1)
  for (int kh = 0; kh < shape.kv_heads; ++kh) {
    global->head(kh).recluster_globally(kernels::KeyRows{f.kv(), f.block_table.data(), kh});
  }
  const double global_ms = ms_since(t1);
  const double r_inc = cluster_recall(f, e, *inc, p.incremental_budget);
  const double r_glob = cluster_recall(f, e, *global, p.incremental_budget);
  const double gap = (r_glob - r_inc) / r_glob;
  return {{"family", fam},
          {"prefill", p.incremental_prefill},
          {"decode_steps", kSteps},
          {"budget", p.incremental_budget},
          {"recall_incremental", r_inc},
          {"recall_global", r_glob},
          {"relative_gap", gap},
          {"ok", gap <= 0.02},
          {"incremental_equals_single_pass", equal},
          {"update_us_per_step", update_ms * 1e3 / kSteps},
          {"global_recluster_ms", global_ms}};
}

// The cluster method's choices at one cell: which of them the defaults rest on.
json ablation(const SparseFamily& f, const Exact& e, int64_t budget) {
  struct Variant {
    const char* name;
    bool spherical, metric, radius;
    double farthest;
  };
  const Variant variants[] = {
      {"cosine (ClusterKV-like: normalised keys, k-means++)", true, false, true, 0.0},
      {"cosine + query metric + farthest seeds", true, true, true, 0.25},
      {"euclidean, no query metric", false, false, true, 0.25},
      {"euclidean + query metric, k-means++ only", false, true, true, 0.0},
      {"euclidean + query metric + farthest, no radius bonus", false, true, false, 0.25},
      {"default (euclidean + query metric + farthest + radius)", false, true, true, 0.25},
  };
  json rows = json::array();
  for (const auto& v : variants) {
    SparseSelectConfig c = base_config(SparseMethod::kCluster, budget, f.shape.group);
    c.spherical = v.spherical;
    c.radius_bonus = v.radius;
    c.farthest_seeds = v.farthest;
    auto idx = std::make_unique<SparseSequenceIndex>(c, f.shape.kv_heads);
    if (v.metric) {
      const int64_t st[2] = {static_cast<int64_t>(f.num_q_heads()) * kHeadDim, kHeadDim};
      idx->set_query_samples(f.q_samples.data(), f.shape.query_samples, st);
    }
    idx->update(f.kv(), f.block_table.data(), f.shape.tokens);
    rows.push_back({{"variant", v.name}, {"mass_recall", cluster_recall(f, e, *idx, budget)}});
  }
  return {{"family", f.name}, {"context", f.shape.tokens}, {"budget", budget}, {"variants", rows}};
}

}  // namespace

int run_sparse_bench(const BenchOptions& opt) {
  const Params p = params(opt.quick);
  const int threads = omp_get_max_threads();
  const bool print = opt.rank == 0 && !opt.json;
  const int d = kHeadDim, hkv = p.kv_heads, group = p.group;
  const int64_t token_kv_bytes = 2LL * d * sizeof(float);  // K and V rows of one kv head
  const double cpp = SparseSelectConfig::equal_bytes_clusters_per_page(kHeadDim, kBlock);
  const auto t_start = Clock::now();

  json cells = json::array(), timing = json::array(), build = json::array(),
       ablations = json::array(), incremental = json::array();
  json acceptance_recall = json::object();
  bool recall_ok = true;
  double speedup_32k_2k = 0.0, dense_bytes_32k = 0.0, kv_ratio_32k_2k = 0.0,
         select_ratio_32k_2k = 0.0;
  if (print) {
    std::printf(
        "# tessera bench sparse: Hkv=%d group=%d head_dim=%d block=%d sinks=%d window=%d, %d "
        "threads, %d queries x %d kv heads per cell; cluster: %.3f clusters/page (equal bytes with "
        "Quest's min/max)\n# recall/error per method (oracle = best possible recall at the "
        "budget)\n",
        hkv, group, kHeadDim, kBlock, kSinks, kWindow, threads, p.queries, hkv, cpp);
  }
  CacheFlusher flusher;

  for (int64_t ctx : p.contexts) {
    for (const auto& fam : sparse_family_names()) {
      SparseFamilyShape shape;
      shape.tokens = ctx;
      shape.kv_heads = hkv;
      shape.group = group;
      shape.head_dim = kHeadDim;
      shape.block_size = kBlock;
      shape.queries = p.queries;
      shape.query_samples = kQuerySamples;
      shape.seed = 17;
      const SparseFamily f = make_sparse_family(fam, shape);
      const Exact e = exact_attention(f);
      std::vector<std::unique_ptr<SparseSequenceIndex>> idx(3);
      const SparseMethod built[3] = {SparseMethod::kCluster, SparseMethod::kQuest,
                                     SparseMethod::kMeanStd};
      for (int m = 0; m < 3; ++m) {
        double ms = 0.0;
        idx[m] = build_index(f, base_config(built[m], p.budgets.back(), group), ctx, &ms);
        build.push_back({{"family", fam},
                         {"context", ctx},
                         {"method", kernels::sparse_method_name(built[m])},
                         {"build_ms", ms},
                         {"build_us_per_token_head", ms * 1e3 / (static_cast<double>(ctx) * hkv)},
                         {"metadata_bytes", idx[m]->metadata_bytes()},
                         {"metadata_bytes_per_token_head",
                          static_cast<double>(idx[m]->metadata_bytes()) / (ctx * hkv)},
                         {"units_per_head", idx[m]->head(0).num_units()}});
      }
      std::vector<uint8_t> mark(static_cast<size_t>(ctx));
      std::vector<float> mean;
      std::vector<int32_t> sel(static_cast<size_t>(hkv) * p.budgets.back()), counts(hkv);
      for (int64_t budget : p.budgets) {
        for (auto& x : idx) x->set_budget(budget);
        SparseSequenceIndex sw(base_config(SparseMethod::kSinkWindow, budget, group), hkv);
        std::vector<Quality> qual(kMethods.size());
        std::vector<std::vector<double>> sel_us(kMethods.size());
        std::vector<double> sel_bytes(kMethods.size(), 0.0);
        for (int j = 0; j < p.queries; ++j) {
          std::vector<std::vector<int32_t>> oracles(hkv);
          for (int kh = 0; kh < hkv; ++kh)
            oracle_select(e, j, kh, group, budget, mean, oracles[kh]);
          const float* q = f.q.data() + static_cast<size_t>(j) * f.num_q_heads() * d;
          for (size_t mi = 0; mi < kMethods.size(); ++mi) {
            const std::string& method = kMethods[mi];
            const auto t0 = Clock::now();
            if (method == "oracle") {
              for (int kh = 0; kh < hkv; ++kh) {
                std::copy(oracles[kh].begin(), oracles[kh].end(), sel.begin() + kh * budget);
                counts[kh] = static_cast<int32_t>(oracles[kh].size());
              }
            } else if (method == "sink_window") {
              sw.select(q, d, ctx, sel.data(), counts.data(), budget);
            } else {
              idx[mi]->select(q, d, ctx, sel.data(), counts.data(), budget);
            }
            sel_us[mi].push_back(ms_since(t0) * 1e3);
            for (int kh = 0; kh < hkv; ++kh) {
              std::fill(mark.begin(), mark.end(), 0);
              for (int32_t x : oracles[kh]) mark[static_cast<size_t>(x)] = 1;
              score_selection(f, e, j, kh, sel.data() + kh * budget, counts[kh], &mark,
                              static_cast<int64_t>(oracles[kh].size()), qual[mi]);
              // Bytes the selection reads besides the KV rows.
              if (method == "cluster") {
                sel_bytes[mi] += idx[0]->head(kh).num_units() * (4.0 * d + 8.0) + 4.0 * counts[kh];
              } else if (method == "quest" || method == "meanstd") {
                sel_bytes[mi] += idx[mi]->head(kh).num_units() * 8.0 * d;
              } else if (method == "oracle") {
                sel_bytes[mi] += static_cast<double>(ctx) * 4.0 * d;
              }
            }
          }
        }
        json line;
        for (size_t mi = 0; mi < kMethods.size(); ++mi) {
          const Quality& q = qual[mi];
          json c = {
              {"family", fam},
              {"context", ctx},
              {"budget", budget},
              {"method", kMethods[mi]},
              {"mass_recall", q.recall / q.heads},
              {"rel_error", q.error / q.heads},
              {"topk_hit", q.topk / q.lists},
              {"needle_hits", fam == "needles" ? json(q.needles / q.lists) : json()},
              {"tokens_per_list", static_cast<double>(q.count) / q.lists},
              {"kv_bytes_per_step", static_cast<double>(q.count) / p.queries * token_kv_bytes},
              {"dense_kv_bytes_per_step", static_cast<double>(ctx) * hkv * token_kv_bytes},
              {"selection_bytes_per_step", sel_bytes[mi] / p.queries},
              {"metadata_bytes", mi < 3 ? idx[mi]->metadata_bytes() : 0},
              {"selection_us", quantile(sel_us[mi], 0.5)}};
          cells.push_back(c);
          line[kMethods[mi]] = c;
        }
        if (ctx == 32768 && budget == 2048) {
          const double rc = line["cluster"]["mass_recall"], rq = line["quest"]["mass_recall"],
                       rm = line["meanstd"]["mass_recall"];
          const bool ok = rc >= rq && rc >= rm;
          recall_ok = recall_ok && ok;
          acceptance_recall[fam] = {{"cluster", rc}, {"quest", rq}, {"meanstd", rm}, {"ok", ok}};
          kv_ratio_32k_2k = line["cluster"]["kv_bytes_per_step"].get<double>() /
                            line["cluster"]["dense_kv_bytes_per_step"].get<double>();
          select_ratio_32k_2k = line["cluster"]["selection_bytes_per_step"].get<double>() /
                                line["cluster"]["dense_kv_bytes_per_step"].get<double>();
          dense_bytes_32k = line["cluster"]["dense_kv_bytes_per_step"];
        }
        if (print) {
          std::printf("%-9s %6lldK %5lld |", fam.c_str(), static_cast<long long>(ctx / 1024),
                      static_cast<long long>(budget));
          for (const auto& m : kMethods) {
            std::printf(" %s %.3f/%.3f", m == "sink_window" ? "sinkwin" : m.c_str(),
                        line[m]["mass_recall"].get<double>(), line[m]["rel_error"].get<double>());
          }
          if (fam == "needles") {
            std::printf(" | needle hits cluster %.2f quest %.2f",
                        line["cluster"]["needle_hits"].get<double>(),
                        line["quest"]["needle_hits"].get<double>());
          }
          std::printf("\n");
          std::fflush(stdout);
        }
      }
      if (fam == p.timing_family && std::find(p.timing_contexts.begin(), p.timing_contexts.end(),
                                              ctx) != p.timing_contexts.end()) {
        json t = time_steps(f, idx, p, flusher);
        for (const auto& run : t["runs"]) {
          for (const auto& row : run["steps"]) {
            if (ctx == 32768 && run["threads"] == threads && row["method"] == "cluster" &&
                row["budget"] == 2048) {
              speedup_32k_2k = row["speedup_vs_dense"];
            }
          }
          if (print) {
            std::printf(
                "# decode step, %s %lldK, %d threads: dense paged decode %.2f ms (best "
                "baseline, median of %d cold rounds)\n",
                fam.c_str(), static_cast<long long>(ctx / 1024), run["threads"].get<int>(),
                run["dense_ms"].get<double>(), p.timing_rounds);
            for (const auto& row : run["steps"]) {
              std::printf(
                  "#   %-11s budget %5lld: step %.3f ms [p10 %.3f, p90 %.3f] (select "
                  "alone %.3f) speedup %.2fx [p10 %.2f, p90 %.2f]\n",
                  row["method"].get<std::string>().c_str(),
                  static_cast<long long>(row["budget"].get<int64_t>()),
                  row["step_ms"].get<double>(), row["step_p10_ms"].get<double>(),
                  row["step_p90_ms"].get<double>(), row["select_ms"].get<double>(),
                  row["speedup_vs_dense"].get<double>(), row["speedup_p10"].get<double>(),
                  row["speedup_p90"].get<double>());
            }
          }
        }
        timing.push_back(t);
      }
      if (!p.quick && ctx == 32768) ablations.push_back(ablation(f, e, 2048));
    }
  }
  bool incremental_ok = true;
  for (const auto& fam : p.incremental_families) {
    json r = incremental_check(fam, p);
    incremental_ok = incremental_ok && r["ok"].get<bool>();
    if (print) {
      std::printf(
          "# incremental %-9s prefill %lld + 4096 steps, budget %lld: recall %.4f vs "
          "global re-clustering %.4f (gap %.2f%%), equal to one pass: %s, %.1f us/step\n",
          fam.c_str(), static_cast<long long>(p.incremental_prefill),
          static_cast<long long>(p.incremental_budget), r["recall_incremental"].get<double>(),
          r["recall_global"].get<double>(), 100.0 * r["relative_gap"].get<double>(),
          r["incremental_equals_single_pass"].get<bool>() ? "yes" : "NO",
          r["update_us_per_step"].get<double>());
    }
    incremental.push_back(r);
  }
  if (print) {
    for (const auto& a : ablations) {
      std::printf("# ablation %-9s 32K/2048:", a["family"].get<std::string>().c_str());
      for (const auto& v : a["variants"]) std::printf(" %.3f", v["mass_recall"].get<double>());
      std::printf("\n");
    }
    std::printf(
        "# 32K/2K: cluster KV bytes %.4f of dense, + selection bytes %.4f; step speedup "
        "%.2fx; cluster recall >= quest and meanstd on every family: %s; incremental "
        "within 2%%: %s; %.1f s\n",
        kv_ratio_32k_2k, select_ratio_32k_2k, speedup_32k_2k, recall_ok ? "yes" : "NO",
        incremental_ok ? "yes" : "NO", ms_since(t_start) / 1e3);
  }

  json out;
  out["shape"] = {{"kv_heads", hkv},      {"group", group},     {"head_dim", kHeadDim},
                  {"block_size", kBlock}, {"sinks", kSinks},    {"window", kWindow},
                  {"queries", p.queries}, {"threads", threads}, {"query_samples", kQuerySamples}};
  out["metadata_equalisation"] =
      "quest and meanstd: two fp32 vectors per page (8*head_dim bytes); cluster: "
      "clusters_per_page = (8*head_dim - 4*block_size) / (4*head_dim + 16), counting centroid, "
      "radius, offsets, min/max position and one int32 per member";
  out["clusters_per_page"] = cpp;
  out["cells"] = cells;
  out["index_build"] = build;
  out["timing"] = timing;
  out["incremental"] = incremental;
  out["ablation"] = ablations;
  out["dense_kv_bytes_32k"] = dense_bytes_32k;
  out["speedup_vs_dense_32k_2k"] = speedup_32k_2k;
  out["kv_bytes_ratio_32k_2k"] = kv_ratio_32k_2k;
  out["selection_bytes_ratio_32k_2k"] = select_ratio_32k_2k;
  out["acceptance"] = {{"recall_32k_2k", acceptance_recall},
                       {"recall_ok", recall_ok},
                       {"kv_bytes_ok", kv_ratio_32k_2k > 0 && kv_ratio_32k_2k <= 0.125},
                       {"speedup_ok", speedup_32k_2k >= 3.0},
                       {"incremental_ok", incremental_ok}};
  out["seconds"] = ms_since(t_start) / 1e3;
  // Other processes share this machine: the load average says how much (timing context).
  if (FILE* la = std::fopen("/proc/loadavg", "r")) {
    double l1 = 0.0;
    if (std::fscanf(la, "%lf", &l1) == 1) out["load_average_1min"] = l1;
    std::fclose(la);
  }
  if (opt.rank == 0 && opt.json) std::printf("%s\n", out.dump().c_str());
  return 0;
}

Benchmark sparse_benchmark() {
  return {"sparse",
          "Sparse decode: cluster / Quest / mean+std / sink+window / oracle selection on synthetic "
          "families, decode step vs dense paged decode",
          run_sparse_bench};
}

}  // namespace tessera::bench
