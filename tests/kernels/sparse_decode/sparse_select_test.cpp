// Token selection for sparse decode (torch-free): bad options are clear errors; every method's
// lists have the documented shape (exactly the budget, sinks, window and unindexed tokens always
// in, no repeats); a budget that covers the context gives dense paged decode through selection
// and attention; clusters partition the indexed tokens; incremental indexing equals one pass;
// k-means recovers separated groups; metadata bytes match Quest's.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/paged/paged_attention.h"
#include "kernels/sparse_decode/key_kmeans.h"
#include "kernels/sparse_decode/sparse_attention.h"
#include "kernels/sparse_decode/sparse_decode_step.h"
#include "kernels/sparse_decode/sparse_select.h"
#include "tests/kernels/sparse_decode/sparse_test_pool.h"

namespace tessera::kernels {
namespace {

using testing::Pool;
using testing::PoolSpec;

const SparseMethod kAll[] = {SparseMethod::kCluster, SparseMethod::kQuest, SparseMethod::kMeanStd,
                             SparseMethod::kSinkWindow};

SparseSelectConfig config(SparseMethod m, int64_t budget, int d, int group, int page) {
  SparseSelectConfig c;
  c.method = m;
  c.budget = budget;
  c.sinks = 3;
  c.window = 10;
  c.page_tokens = page;
  c.head_dim = d;
  c.group = group;
  c.chunk_pages = 4;
  return c;
}

// Runs f and expects a tessera::Error whose message contains every fragment.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> fragments) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& frag : fragments) {
      EXPECT_NE(std::string(e.what()).find(frag), std::string::npos)
          << "message '" << e.what() << "' lacks '" << frag << "'";
    }
  }
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

// Acceptance 5 at the API level: one clear error naming the option and its value.
TEST(SparseSelect, BadOptionsAreClearErrors) {
  auto good = config(SparseMethod::kCluster, 64, 16, 2, 4);
  EXPECT_NO_THROW(good.validate());
  auto c = good;
  c.budget = 0;
  expect_error([&] { c.validate(); }, {"budget must be positive", "0"});
  c.budget = -5;
  expect_error([&] { SparseSequenceIndex(c, 2); }, {"budget", "-5"});
  c = good;
  c.budget = 16;  // sinks 3 + window 10 + page 4 = 17
  expect_error([&] { c.validate(); }, {"budget=16", "sinks + window + page_tokens", "17"});
  c = good;
  c.head_dim = 0;
  expect_error([&] { c.validate(); }, {"head_dim", "0"});
  c = good;
  c.kmeans_iters = 0;
  expect_error([&] { c.validate(); }, {"kmeans_iters", "0"});
  c = good;
  c.sinks = -1;
  expect_error([&] { c.validate(); }, {"sinks", "-1"});
  c = good;
  c.clusters_per_page = 9;
  expect_error([&] { c.validate(); }, {"clusters_per_page=9", "page_tokens=4"});
  expect_error([] { parse_sparse_method("kmeans"); },
               {"cluster, quest, meanstd, sink_window", "'kmeans'"});
  EXPECT_EQ(parse_sparse_method("quest"), SparseMethod::kQuest);
  SparseSequenceIndex idx(good, 2);
  expect_error([&] { idx.set_budget(10); }, {"budget=10"});
  // Selecting past what was indexed is refused, not silently over budget.
  PoolSpec ps{{200}, 4, 2, 16, 16, KvDType::kF32, 3};
  Pool pool(ps);
  idx.update(pool.view(), pool.table(0), 100);
  auto q = randn(4 * 16, 1);
  std::vector<int32_t> lists(2 * 64), counts(2);
  expect_error([&] { idx.select(q.data(), 16, 200, lists.data(), counts.data(), 64); },
               {"behind", "num_tokens=200"});
  expect_error([&] { idx.select(q.data(), 16, 100, lists.data(), counts.data(), 63); },
               {"max_entries=63"});
  SparseSelectConfig other = good;
  other.head_dim = 24;
  SparseSequenceIndex wrong(other, 2);
  expect_error([&] { wrong.update(pool.view(), pool.table(0), 100); },
               {"head_dim=16", "head_dim=24"});
}

// The lists' contract, for every method, page size and context length around the budget.
TEST(SparseSelect, ListsHoldExactlyTheBudgetWithSinksWindowAndNoRepeats) {
  const int d = 16, group = 3, hkv = 2;
  for (int page : {1, 3, 8}) {
    for (SparseMethod m : kAll) {
      PoolSpec ps{{700}, page, hkv, d, d, KvDType::kF32, 5u + page};
      Pool pool(ps);
      auto c = config(m, 96, d, group, page);
      SparseSequenceIndex idx(c, hkv);
      auto q = randn(static_cast<size_t>(hkv) * group * d, 7);
      std::vector<int32_t> lists(hkv * 96), counts(hkv);
      for (int n : {1, 50, 96, 97, 130, 333, 700}) {
        SCOPED_TRACE("page=" + std::to_string(page) + " method=" + sparse_method_name(m) +
                     " n=" + std::to_string(n));
        idx.update(pool.view(), pool.table(0), n);
        idx.select(q.data(), d, n, lists.data(), counts.data(), 96);
        for (int kh = 0; kh < hkv; ++kh) {
          const std::vector<int32_t> l(lists.begin() + kh * 96,
                                       lists.begin() + kh * 96 + counts[kh]);
          ASSERT_EQ(counts[kh], std::min(n, 96));
          const std::set<int32_t> s(l.begin(), l.end());
          ASSERT_EQ(s.size(), l.size()) << "a position repeats";
          ASSERT_GE(*s.begin(), 0);
          ASSERT_LT(*s.rbegin(), n);
          for (int p = 0; p < std::min(n, 3); ++p) EXPECT_TRUE(s.count(p)) << "sink " << p;
          const int64_t unindexed = idx.head(kh).indexed_tokens();
          for (int64_t p = std::max<int64_t>(0, std::min<int64_t>(n - 10, unindexed)); p < n; ++p) {
            EXPECT_TRUE(s.count(static_cast<int32_t>(p))) << "window / unindexed " << p;
          }
          if (m == SparseMethod::kSinkWindow && n > 96) {
            EXPECT_TRUE(s.count(n - 93)) << "sink_window: the last budget - sinks tokens";
          }
        }
      }
    }
  }
}

// Acceptance 1 (single rank): when the budget covers the context, selection + sparse attention is
// dense paged decode, for every method, through the split path and the fused step.
TEST(SparseSelect, FullBudgetEqualsDensePagedDecode) {
  const int d = 32, group = 4, hkv = 2, hq = hkv * group;
  PoolSpec ps{{333, 40, 129}, 16, hkv, d, d, KvDType::kF32, 9};
  Pool pool(ps);
  const int n = static_cast<int>(ps.lens.size());
  auto q = randn(static_cast<size_t>(n) * hq * d, 3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<int32_t> lens(ps.lens.begin(), ps.lens.end()), q_starts(n + 1);
  std::iota(q_starts.begin(), q_starts.end(), 0);
  std::vector<float> dense(static_cast<size_t>(n) * hq * d), dense_lse(static_cast<size_t>(n) * hq);
  PagedAttentionView pa;
  pa.q = q.data();
  pa.kv = pool.view();
  pa.block_tables = pool.tables.data();
  pa.seq_lens = lens.data();
  pa.q_starts = q_starts.data();
  pa.out = dense.data();
  pa.lse = dense_lse.data();
  pa.q_stride[0] = static_cast<int64_t>(hq) * d;
  pa.q_stride[1] = d;
  pa.total_q = n;
  pa.num_seqs = n;
  pa.max_blocks_per_seq = pool.max_blocks;
  pa.num_q_heads = hq;
  pa.scale = scale;
  paged_attention_ref(pa);
  for (SparseMethod m : kAll) {
    std::vector<SparseSequenceIndex> seqs;
    std::vector<const SparseSequenceIndex*> ptrs;
    std::vector<int64_t> tokens;
    for (int s = 0; s < n; ++s) {
      seqs.emplace_back(config(m, 400, d, group, 16), hkv);
      seqs.back().update(pool.view(), pool.table(s), lens[s]);
      tokens.push_back(lens[s]);
    }
    for (const auto& s : seqs) ptrs.push_back(&s);
    // Split path; fused step; the fused step's fallback when pairs are fewer than threads.
    for (int path : {0, 1, 2}) {
      const bool fused = path > 0;
      const int threads = omp_get_max_threads();
      if (path == 2) omp_set_num_threads(n * hkv + 1);
      std::vector<int32_t> idx(static_cast<size_t>(n) * hkv * 400), counts(n * hkv);
      std::vector<float> out(dense.size(), NAN), lse(dense_lse.size(), NAN);
      SparseDecodeView v;
      v.q = q.data();
      v.kv = pool.view();
      v.block_tables = pool.tables.data();
      v.idx = idx.data();
      v.counts = counts.data();
      v.out = out.data();
      v.lse = lse.data();
      v.q_stride[0] = pa.q_stride[0];
      v.q_stride[1] = pa.q_stride[1];
      v.num_seqs = n;
      v.max_blocks_per_seq = pool.max_blocks;
      v.num_q_heads = hq;
      v.max_entries = 400;
      v.scale = scale;
      if (fused) {
        sparse_decode_step_cpu(ptrs, v, tokens.data());
        omp_set_num_threads(threads);
      } else {
        sparse_select_batch(ptrs, q.data(), pa.q_stride, tokens.data(), idx.data(), counts.data(),
                            400);
        sparse_decode_cpu(v);
      }
      for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_NEAR(out[i], dense[i], 1e-5) << sparse_method_name(m) << " path " << path;
      }
      for (size_t i = 0; i < lse.size(); ++i) ASSERT_NEAR(lse[i], dense_lse[i], 1e-5);
    }
  }
}

// Clusters partition the indexed tokens, stay within one chunk, and the incremental index (one
// token at a time) equals one built in a single pass; re-clustering globally keeps a partition.
TEST(SparseSelect, ClustersPartitionTokensAndIncrementalEqualsOnePass) {
  const int d = 24, hkv = 2, page = 4;
  PoolSpec ps{{622}, page, hkv, d, d, KvDType::kF32, 13};
  Pool pool(ps);
  auto c = config(SparseMethod::kCluster, 64, d, 2, page);
  c.chunk_pages = 8;  // 155 full pages: 19 sealed chunks, an open one of 3 (k-means on 2, 1 joined)
  SparseSequenceIndex inc(c, hkv), once(c, hkv);
  auto samples = randn(static_cast<size_t>(20) * hkv * 2 * d, 17);
  const int64_t st[2] = {static_cast<int64_t>(hkv) * 2 * d, d};
  inc.set_query_samples(samples.data(), 20, st);
  once.set_query_samples(samples.data(), 20, st);
  for (int n = 1; n <= 622; ++n) inc.update(pool.view(), pool.table(0), n);
  once.update(pool.view(), pool.table(0), 622);
  for (int kh = 0; kh < hkv; ++kh) {
    const auto& h = inc.head(kh);
    EXPECT_EQ(h.indexed_tokens(), 620);
    ASSERT_EQ(h.num_units(), once.head(kh).num_units());
    std::vector<int> seen(620, 0);
    for (int64_t u = 0; u < h.num_units(); ++u) {
      const auto m = h.cluster_members(u);
      const auto o = once.head(kh).cluster_members(u);
      ASSERT_TRUE(std::equal(m.begin(), m.end(), o.begin(), o.end())) << "cluster " << u;
      ASSERT_FALSE(m.empty());
      EXPECT_TRUE(std::is_sorted(m.begin(), m.end()));
      EXPECT_EQ(m.front() / (page * c.chunk_pages), m.back() / (page * c.chunk_pages));
      for (int32_t p : m) ++seen[p];
    }
    for (int p = 0; p < 620; ++p) ASSERT_EQ(seen[p], 1) << "token " << p;
    // Sealed chunks get round(8 * clusters_per_page) clusters each (equal bytes).
    EXPECT_NEAR(static_cast<double>(h.num_units()) / 155.0, c.effective_clusters_per_page(), 0.3);
  }
  SparseSequenceIndex global = once;
  for (int kh = 0; kh < hkv; ++kh) {
    global.head(kh).recluster_globally(KeyRows{pool.view(), pool.table(0), kh});
    const auto& h = global.head(kh);
    EXPECT_LE(h.num_units(), once.head(kh).num_units());
    EXPECT_GT(h.num_units(), once.head(kh).num_units() / 2);
    std::vector<int> seen(620, 0);
    for (int64_t u = 0; u < h.num_units(); ++u) {
      for (int32_t p : h.cluster_members(u)) ++seen[p];
    }
    for (int p = 0; p < 620; ++p) ASSERT_EQ(seen[p], 1) << "token " << p;
  }
}

TEST(SparseSelect, MetadataBytesEqualQuests) {
  const int d = 128, page = 16;
  PoolSpec ps{{4096}, page, 1, d, d, KvDType::kF32, 21};
  Pool pool(ps);
  int64_t bytes[3];
  int i = 0;
  for (SparseMethod m : {SparseMethod::kCluster, SparseMethod::kQuest, SparseMethod::kMeanStd}) {
    auto c = config(m, 512, d, 1, page);
    c.chunk_pages = 16;
    SparseSequenceIndex idx(c, 1);
    idx.update(pool.view(), pool.table(0), 4096);
    bytes[i++] = idx.metadata_bytes();
  }
  EXPECT_EQ(bytes[1], 4096 / page * 2 * d * 4);  // min and max, fp32, per page
  EXPECT_EQ(bytes[2], bytes[1]);
  EXPECT_LE(bytes[0], bytes[1]);
  EXPECT_GE(bytes[0], 0.97 * bytes[1]);
}

// A needle: one key far along the query's direction among random keys. Cluster and Quest find it
// in every kv head; the keys come through any page format (KeyRows decodes).
TEST(SparseSelect, ClusterAndQuestFindANeedleInEveryPageFormat) {
  const int d = 64, hkv = 2, group = 2;
  for (KvDType t : {KvDType::kF32, KvDType::kF16, KvDType::kBF16, KvDType::kI8, KvDType::kF8E4M3}) {
    PoolSpec ps{{2048}, 16, hkv, d, d, t, 31};
    Pool pool(ps);
    auto q = randn(static_cast<size_t>(hkv) * group * d, 2);
    const int needle = 1234;
    for (int kh = 0; kh < hkv; ++kh) {
      float* k = pool.k[0].data() + (static_cast<int64_t>(needle) * hkv + kh) * d;
      for (int i = 0; i < d; ++i) k[i] = 1.5f * q[(kh * group) * d + i];
    }
    pool.write(0, needle);
    for (int kh = 0; kh < hkv; ++kh) {  // KeyRows reads what the pool holds
      std::vector<float> row(d);
      KeyRows{pool.view(), pool.table(0), kh}.read(needle, row.data());
      for (int i = 0; i < d; ++i) ASSERT_EQ(row[i], pool.key(0, needle, kh)[i]);
    }
    for (SparseMethod m : {SparseMethod::kCluster, SparseMethod::kQuest}) {
      SparseSequenceIndex idx(config(m, 128, d, group, 16), hkv);
      idx.update(pool.view(), pool.table(0), 2048);
      std::vector<int32_t> lists(hkv * 128), counts(hkv);
      idx.select(q.data(), d, 2048, lists.data(), counts.data(), 128);
      for (int kh = 0; kh < hkv; ++kh) {
        EXPECT_NE(
            std::find(lists.begin() + kh * 128, lists.begin() + kh * 128 + counts[kh], needle),
            lists.begin() + kh * 128 + counts[kh])
            << sparse_method_name(m) << " dtype " << static_cast<int>(t) << " kv head " << kh;
      }
    }
  }
}

TEST(SparseSelect, BatchSelectionEqualsPerSequence) {
  const int d = 16, hkv = 3, group = 2, hq = hkv * group;
  PoolSpec ps{{90, 300, 17, 511}, 8, hkv, d, d, KvDType::kF32, 41};
  Pool pool(ps);
  const int n = static_cast<int>(ps.lens.size());
  auto q = randn(static_cast<size_t>(n) * hq * d, 5);
  std::vector<SparseSequenceIndex> seqs;
  std::vector<const SparseSequenceIndex*> ptrs;
  std::vector<int64_t> tokens;
  for (int s = 0; s < n; ++s) {
    seqs.emplace_back(
        config(s % 2 ? SparseMethod::kQuest : SparseMethod::kCluster, 64, d, group, 8), hkv);
    seqs.back().update(pool.view(), pool.table(s), ps.lens[s]);
    tokens.push_back(ps.lens[s]);
  }
  for (const auto& s : seqs) ptrs.push_back(&s);
  std::vector<int32_t> batch(static_cast<size_t>(n) * hkv * 64), counts(n * hkv);
  const int64_t st[2] = {static_cast<int64_t>(hq) * d, d};
  sparse_select_batch(ptrs, q.data(), st, tokens.data(), batch.data(), counts.data(), 64);
  for (int s = 0; s < n; ++s) {
    std::vector<int32_t> one(hkv * 64), c1(hkv);
    seqs[s].select(q.data() + s * st[0], d, tokens[s], one.data(), c1.data(), 64);
    for (int kh = 0; kh < hkv; ++kh) {
      ASSERT_EQ(counts[s * hkv + kh], c1[kh]);
      for (int e = 0; e < c1[kh]; ++e) ASSERT_EQ(batch[(s * hkv + kh) * 64 + e], one[kh * 64 + e]);
    }
  }
}

// k-means: well separated groups come back whole (cosine and Euclidean, with a metric), the same
// seed gives the same answer, and farthest-first seeds give an isolated key its own cluster.
TEST(KeyKMeans, RecoversSeparatedGroupsAndIsolatesOutliers) {
  const int d = 20, groups = 5, per = 30, n = groups * per;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> dirs(groups * d), x(n * d);
  for (auto& v : dirs) v = normal(rng);
  std::vector<int> truth(n);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int i = 0; i < n; ++i) {
    truth[order[i]] = i / per;
    for (int j = 0; j < d; ++j) x[order[i] * d + j] = 10.0f * dirs[(i / per) * d + j] + normal(rng);
  }
  std::vector<float> metric(d * d, 0.0f);
  for (int j = 0; j < d; ++j) metric[j * d + j] = 1.0f + 0.1f * j;
  for (bool spherical : {true, false}) {
    for (const float* m :
         {static_cast<const float*>(nullptr), static_cast<const float*>(metric.data())}) {
      KMeansOptions opt;
      opt.clusters = groups;
      opt.iters = 20;
      opt.seed = 11;
      opt.spherical = spherical;
      opt.farthest_seeds = 2;
      opt.metric = m;
      const KMeansResult r = kmeans_keys(x.data(), n, d, opt);
      const auto& a = r.assign;
      EXPECT_EQ(a, kmeans_keys(x.data(), n, d, opt).assign) << "deterministic";
      // The returned model assigns its own keys as the final step did.
      std::vector<int32_t> again(n);
      kmeans_assign(r, x.data(), n, d, opt, again.data());
      EXPECT_EQ(again, a);
      for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
          ASSERT_EQ(a[i] == a[j], truth[i] == truth[j]) << "spherical=" << spherical;
        }
      }
    }
  }
  // One key far from a single tight group: farthest-first seeding keeps it alone.
  std::vector<float> y(61 * d);
  for (int i = 0; i < 60; ++i) {
    for (int j = 0; j < d; ++j) y[i * d + j] = dirs[j] + 0.3f * normal(rng);
  }
  for (int j = 0; j < d; ++j) y[60 * d + j] = -8.0f * dirs[j];
  KMeansOptions opt;
  opt.clusters = 4;
  opt.spherical = false;
  opt.farthest_seeds = 1;
  auto a = kmeans_keys(y.data(), 61, d, opt).assign;
  EXPECT_EQ(std::count(a.begin(), a.end(), a[60]), 1);
}

}  // namespace
}  // namespace tessera::kernels
