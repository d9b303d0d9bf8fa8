// Torch-free checks of sparse decode attention: the fast CPU kernel against the fp64 reference on
// the same views over odd sizes and every page format; both against an independent fp64 formula
// and against dense paged decode when the list is the whole context; the documented rules (empty
// lists, duplicate entries); and exact LSE merging of any split of a token set.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/merge/lse_merge.h"
#include "kernels/paged/paged_attention.h"
#include "kernels/sparse_decode/sparse_attention.h"
#include "tests/kernels/sparse_decode/sparse_test_pool.h"

namespace tessera::kernels {
namespace {

using testing::Pool;
using testing::PoolSpec;

// Lists [num_seqs, hkv, max_entries] plus counts, and the query rows.
struct Lists {
  int max_entries = 0;
  std::vector<int32_t> idx, counts;
  std::vector<std::vector<int32_t>> list;  // [seq * hkv + kh]
};

Lists pack(const std::vector<std::vector<int32_t>>& list) {
  Lists l;
  l.list = list;
  for (const auto& x : list)
    l.max_entries = std::max<int>(l.max_entries, static_cast<int>(x.size()));
  l.max_entries = std::max(l.max_entries, 1);
  l.idx.assign(list.size() * l.max_entries, -7);  // padding never read
  for (size_t i = 0; i < list.size(); ++i) {
    std::copy(list[i].begin(), list[i].end(), l.idx.begin() + i * l.max_entries);
    l.counts.push_back(static_cast<int32_t>(list[i].size()));
  }
  return l;
}

struct Result {
  std::vector<float> out, lse;
};

Result run(Pool& pool, const std::vector<float>& q, int hq, const Lists& l, float scale,
           bool reference, int splits = 0) {
  const auto& s = pool.spec;
  const int n = static_cast<int>(s.lens.size());
  Result r;
  r.out.assign(static_cast<size_t>(n) * hq * s.dv, NAN);
  r.lse.assign(static_cast<size_t>(n) * hq, NAN);
  SparseDecodeView a;
  a.q = q.data();
  a.kv = pool.view();
  a.block_tables = pool.tables.data();
  a.idx = l.idx.data();
  a.counts = l.counts.data();
  a.out = r.out.data();
  a.lse = r.lse.data();
  a.q_stride[0] = static_cast<int64_t>(hq) * s.dk;
  a.q_stride[1] = s.dk;
  a.num_seqs = n;
  a.max_blocks_per_seq = pool.max_blocks;
  a.num_q_heads = hq;
  a.max_entries = l.max_entries;
  a.scale = scale;
  a.splits = splits;
  reference ? sparse_decode_ref(a) : sparse_decode_cpu(a);
  return r;
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

// Random lists: a random subset of [0, len) in random order, `want` entries (capped at len).
std::vector<std::vector<int32_t>> random_lists(const PoolSpec& s, int want, std::mt19937& rng) {
  std::vector<std::vector<int32_t>> out;
  for (int len : s.lens) {
    for (int h = 0; h < s.hkv; ++h) {
      std::vector<int32_t> all(static_cast<size_t>(len));
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(static_cast<size_t>(std::min(want, len)));
      out.push_back(all);
    }
  }
  return out;
}

void expect_close(const Result& got, const Result& want, double tol, const std::string& what) {
  ASSERT_EQ(got.out.size(), want.out.size());
  for (size_t i = 0; i < got.out.size(); ++i) {
    ASSERT_NEAR(got.out[i], want.out[i], tol * (1.0 + std::fabs(want.out[i])))
        << what << " out " << i;
  }
  for (size_t i = 0; i < got.lse.size(); ++i) {
    if (std::isinf(want.lse[i])) {
      ASSERT_EQ(got.lse[i], want.lse[i]) << what << " lse " << i;
    } else {
      ASSERT_NEAR(got.lse[i], want.lse[i], tol * (1.0 + std::fabs(want.lse[i])))
          << what << " lse " << i;
    }
  }
}

struct Shape {
  std::vector<int> lens;
  int block_size, hq, hkv, dk, dv, entries;
};

TEST(SparseDecodeCore, FastCpuMatchesReferenceAndFp64Formula) {
  const std::vector<Shape> shapes = {
      {{37, 5, 61}, 16, 4, 2, 24, 24, 20},         // GQA 2, lists shorter than contexts
      {{19}, 1, 3, 1, 40, 24, 19},                 // block size 1, dk != dv, whole context
      {{50, 7, 33, 12, 29}, 3, 6, 3, 17, 33, 64},  // prime batch, odd dims, block size 3
      {{300, 2}, 16, 8, 8, 128, 128, 150},         // MHA, head_dim 128
      {{10000}, 16, 4, 1, 64, 64, 9000},           // one list of 9,000 entries (>= 8K)
  };
  uint32_t seed = 3;
  for (const auto& sh : shapes) {
    for (KvDType dtype :
         {KvDType::kF32, KvDType::kF16, KvDType::kBF16, KvDType::kI8, KvDType::kF8E4M3}) {
      if (sh.entries > 1000 && dtype != KvDType::kF32 && dtype != KvDType::kI8) continue;
      PoolSpec ps{sh.lens, sh.block_size, sh.hkv, sh.dk, sh.dv, dtype, seed++};
      Pool pool(ps);
      std::mt19937 rng(seed);
      Lists l = pack(random_lists(ps, sh.entries, rng));
      auto q = randn(sh.lens.size() * sh.hq * sh.dk, seed + 100);
      const float scale = 1.0f / std::sqrt(static_cast<float>(sh.dk));
      const std::string what = "bs=" + std::to_string(sh.block_size) +
                               " hq=" + std::to_string(sh.hq) + " dk=" + std::to_string(sh.dk) +
                               " dtype=" + std::to_string(static_cast<int>(dtype));
      Result ref = run(pool, q, sh.hq, l, scale, true);
      for (int splits : {0, 1, 3}) {
        expect_close(run(pool, q, sh.hq, l, scale, false, splits), ref, 2e-5,
                     what + " splits=" + std::to_string(splits));
      }
      // The reference against a formula that never touches the pages.
      const int group = sh.hq / sh.hkv;
      std::vector<double> o;
      for (size_t s = 0; s < sh.lens.size(); ++s) {
        for (int h = 0; h < sh.hq; ++h) {
          const double lse = testing::attend_fp64(pool, static_cast<int>(s), h / group,
                                                  q.data() + (s * sh.hq + h) * sh.dk, scale,
                                                  l.list[s * sh.hkv + h / group], o);
          ASSERT_NEAR(ref.lse[s * sh.hq + h], lse, 1e-5 * (1 + std::fabs(lse))) << what;
          for (int d = 0; d < sh.dv; ++d) {
            ASSERT_NEAR(ref.out[(s * sh.hq + h) * sh.dv + d], o[d], 1e-5) << what;
          }
        }
      }
    }
  }
}

// Acceptance 1 at the kernel level: a list that covers the context equals dense paged decode.
TEST(SparseDecodeCore, WholeContextEqualsDensePagedDecode) {
  for (int bs : {1, 3, 16}) {
    PoolSpec ps{{1, 45, 300, 2048}, bs, 2, 64, 64, KvDType::kF32, 11u + bs};
    Pool pool(ps);
    const int hq = 8;
    std::mt19937 rng(5);
    Lists l = pack(random_lists(ps, 1 << 20, rng));  // every position, shuffled
    auto q = randn(ps.lens.size() * hq * ps.dk, 9);
    const float scale = 0.125f;
    std::vector<int32_t> lens(ps.lens.begin(), ps.lens.end());
    std::vector<int32_t> q_starts(lens.size() + 1);
    std::iota(q_starts.begin(), q_starts.end(), 0);
    Result dense;
    dense.out.resize(lens.size() * hq * ps.dv);
    dense.lse.resize(lens.size() * hq);
    PagedAttentionView pa;
    pa.q = q.data();
    pa.kv = pool.view();
    pa.block_tables = pool.tables.data();
    pa.seq_lens = lens.data();
    pa.q_starts = q_starts.data();
    pa.out = dense.out.data();
    pa.lse = dense.lse.data();
    pa.q_stride[0] = static_cast<int64_t>(hq) * ps.dk;
    pa.q_stride[1] = ps.dk;
    pa.total_q = static_cast<int64_t>(lens.size());
    pa.num_seqs = static_cast<int>(lens.size());
    pa.max_blocks_per_seq = pool.max_blocks;
    pa.num_q_heads = hq;
    pa.scale = scale;
    paged_attention_ref(pa);
    expect_close(run(pool, q, hq, l, scale, true), dense, 1e-5, "ref bs=" + std::to_string(bs));
    expect_close(run(pool, q, hq, l, scale, false), dense, 1e-5, "cpu bs=" + std::to_string(bs));
  }
}

TEST(SparseDecodeCore, EmptyListGivesZerosAndNegInfLseAndMergesAway) {
  PoolSpec ps{{40, 40}, 16, 2, 32, 32, KvDType::kF32, 21};
  Pool pool(ps);
  const int hq = 4;
  auto q = randn(2 * hq * ps.dk, 4);
  std::vector<std::vector<int32_t>> lists = {{}, {1, 2, 3}, {5, 39}, {}};
  Lists l = pack(lists);
  for (bool ref : {true, false}) {
    Result r = run(pool, q, hq, l, 0.2f, ref);
    // seq 0 kv head 0 (q heads 0, 1) and seq 1 kv head 1 (q heads 6, 7) are empty.
    for (int row : {0, 1, 6, 7}) {
      EXPECT_EQ(r.lse[row], -INFINITY);
      for (int d = 0; d < ps.dv; ++d) EXPECT_EQ(r.out[row * ps.dv + d], 0.0f);
    }
    // Merged with a non-empty part, an empty one changes nothing (bitwise: weight exactly 0).
    std::vector<float> outs(2 * ps.dv), lses = {r.lse[2], r.lse[0]}, o(ps.dv), lse(1);
    std::copy_n(r.out.begin() + 2 * ps.dv, ps.dv, outs.begin());
    std::copy_n(r.out.begin(), ps.dv, outs.begin() + ps.dv);
    lse_merge_ref({outs.data(), lses.data(), o.data(), lse.data(), 2, 1, ps.dv});
    for (int d = 0; d < ps.dv; ++d) EXPECT_EQ(o[d], r.out[2 * ps.dv + d]);
    EXPECT_EQ(lse[0], r.lse[2]);
  }
  // Every list empty (max_entries 1 of padding): all zeros, no NaN.
  Lists none = pack({{}, {}, {}, {}});
  Result r = run(pool, q, hq, none, 0.2f, false, 4);
  for (float x : r.out) EXPECT_EQ(x, 0.0f);
  for (float x : r.lse) EXPECT_EQ(x, -INFINITY);
}

// A duplicated entry counts twice: the same as a cache holding that token twice, computed by dense
// paged decode over a second pool where the token is physically repeated at the end.
TEST(SparseDecodeCore, DuplicateEntriesCountOncePerOccurrence) {
  const int len = 29, dup = 7, hq = 2;
  PoolSpec ps{{len}, 3, 1, 16, 16, KvDType::kF32, 31};
  Pool pool(ps);
  PoolSpec ps2 = ps;
  ps2.lens = {len + 1};
  Pool twice(ps2);
  for (int p = 0; p <= len; ++p) {  // copy the first pool's tokens, token `dup` again at the end
    const int from = p < len ? p : dup;
    std::copy_n(pool.key(0, from, 0), ps.dk, twice.k[0].data() + static_cast<size_t>(p) * ps.dk);
    std::copy_n(pool.value(0, from, 0), ps.dv, twice.v[0].data() + static_cast<size_t>(p) * ps.dv);
    twice.write(0, p);
  }
  auto q = randn(hq * ps.dk, 8);
  std::vector<int32_t> list(len);
  std::iota(list.begin(), list.end(), 0);
  list.push_back(dup);
  Lists l = pack({list});
  std::vector<int32_t> all(len + 1);
  std::iota(all.begin(), all.end(), 0);
  Lists l2 = pack({all});
  Result want = run(twice, q, hq, l2, 0.3f, true);
  expect_close(run(pool, q, hq, l, 0.3f, true), want, 1e-6, "ref");
  expect_close(run(pool, q, hq, l, 0.3f, false), want, 1e-5, "cpu");
  // And it differs from the list without the duplicate (the rule has an effect).
  list.pop_back();
  Result once = run(pool, q, hq, pack({list}), 0.3f, true);
  EXPECT_GT(std::fabs(once.lse[0] - want.lse[0]), 1e-4);
}

// Any split of a token set, each part attended separately and merged by LSE, equals attention over
// the whole set: sinks / chosen / window parts, random partitions, parts that are empty.
TEST(SparseDecodeCore, AnySplitMergedByLseEqualsTheWholeSet) {
  PoolSpec ps{{700, 129, 64}, 16, 2, 40, 40, KvDType::kF32, 41};
  Pool pool(ps);
  const int hq = 6, n = 3, rows = n * hq;
  auto q = randn(n * hq * ps.dk, 12);
  std::mt19937 rng(77);
  for (int trial = 0; trial < 12; ++trial) {
    const int parts = 1 + trial % 5;
    Lists whole = pack(random_lists(ps, 400, rng));
    std::vector<std::vector<std::vector<int32_t>>> split(parts);
    for (auto& p : split) p.resize(whole.list.size());
    for (size_t li = 0; li < whole.list.size(); ++li) {
      const auto& w = whole.list[li];
      if (trial % 2 == 0) {  // contiguous ranges (sinks | chosen | window), some maybe empty
        std::vector<size_t> cut = {0, w.size()};
        for (int c = 1; c < parts; ++c) cut.push_back(rng() % (w.size() + 1));
        std::sort(cut.begin(), cut.end());
        for (int p = 0; p < parts; ++p)
          split[p][li].assign(w.begin() + cut[p], w.begin() + cut[p + 1]);
      } else {  // every entry to a random part
        for (int32_t x : w) split[rng() % parts][li].push_back(x);
      }
    }
    for (bool ref : {true, false}) {
      Result want = run(pool, q, hq, whole, 0.15f, true);
      std::vector<float> outs, lses;
      for (int p = 0; p < parts; ++p) {
        Result r = run(pool, q, hq, pack(split[p]), 0.15f, ref);
        outs.insert(outs.end(), r.out.begin(), r.out.end());
        lses.insert(lses.end(), r.lse.begin(), r.lse.end());
      }
      Result merged;
      merged.out.resize(static_cast<size_t>(rows) * ps.dv);
      merged.lse.resize(rows);
      LseMergeView m{outs.data(), lses.data(), merged.out.data(), merged.lse.data(), parts,
                     rows,        ps.dv};
      ref ? lse_merge_ref(m) : lse_merge_cpu(m);
      expect_close(merged, want, 1e-5, "trial " + std::to_string(trial) + (ref ? " ref" : " cpu"));
    }
  }
}

}  // namespace
}  // namespace tessera::kernels
