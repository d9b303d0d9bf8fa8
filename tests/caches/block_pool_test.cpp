// Block pool: null block, LRU free-list order, reference counts, prefix index and eviction.
#include "caches/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <unordered_map>

namespace tessera::caches {
namespace {

TEST(BlockPool, NullBlockIsNeverHandedOut) {
  BlockPool pool(5);
  EXPECT_EQ(pool.num_free(), 4);
  std::vector<int32_t> got;
  ASSERT_TRUE(pool.allocate(4, got));
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(pool.allocate(), -1);  // full: a return value, not an exception
  EXPECT_FALSE(pool.allocate(1, got));
  EXPECT_EQ(got.size(), 4u);
  EXPECT_THROW(pool.free(BlockPool::kNullBlock), Error);
}

TEST(BlockPool, AllOrNothing) {
  BlockPool pool(4);
  std::vector<int32_t> got;
  EXPECT_FALSE(pool.allocate(4, got));
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(pool.num_free(), 3);
}

TEST(BlockPool, FreeListIsLeastRecentlyFreedFirst) {
  BlockPool pool(6);
  std::vector<int32_t> b;
  ASSERT_TRUE(pool.allocate(5, b));
  for (int32_t x : {b[3], b[0], b[4], b[1], b[2]}) pool.free(x);
  EXPECT_EQ(pool.free_list(), (std::vector<int32_t>{b[3], b[0], b[4], b[1], b[2]}));
  EXPECT_EQ(pool.allocate(), b[3]);
  EXPECT_EQ(pool.allocate(), b[0]);
}

TEST(BlockPool, RefCountsAndDoubleFree) {
  BlockPool pool(3);
  const int32_t a = pool.allocate();
  pool.ref(a);
  EXPECT_EQ(pool.ref_count(a), 2);
  pool.free(a);
  EXPECT_EQ(pool.num_free(), 1);  // still referenced once
  pool.free(a);
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_THROW(pool.free(a), Error);  // freed twice
  EXPECT_THROW(pool.free(7), Error);  // out of range
}

TEST(BlockPool, RefOfFreeBlockTakesItOffTheFreeList) {
  BlockPool pool(4);
  const int32_t a = pool.allocate();
  pool.cache(a, 42);
  pool.free(a);
  EXPECT_EQ(pool.lookup(42), a);  // cached and free: still findable
  pool.ref(a);                    // a prefix hit
  EXPECT_EQ(pool.num_free(), 2);
  auto fl = pool.free_list();
  EXPECT_EQ(std::count(fl.begin(), fl.end(), a), 0);
}

TEST(BlockPool, EvictsCachedBlocksInLruOrder) {
  BlockPool pool(4);
  std::vector<int32_t> b;
  ASSERT_TRUE(pool.allocate(3, b));
  pool.cache(b[0], 100);
  pool.cache(b[1], 101);
  pool.cache(b[2], 102);
  pool.free(b[1]);
  pool.free(b[0]);
  pool.free(b[2]);
  EXPECT_EQ(pool.num_cached(), 3);
  EXPECT_EQ(pool.allocate(), b[1]);  // least recently freed goes first
  EXPECT_EQ(pool.lookup(101), -1);
  EXPECT_EQ(pool.lookup(100), b[0]);
  EXPECT_EQ(pool.evictions(), 1);
  EXPECT_EQ(pool.allocate(), b[0]);
  EXPECT_EQ(pool.lookup(100), -1);
  EXPECT_EQ(pool.lookup(102), b[2]);
  EXPECT_EQ(pool.evictions(), 2);
  EXPECT_FALSE(pool.is_cached(b[0]));
}

TEST(BlockPool, DuplicateKeyKeepsFirstBlock) {
  BlockPool pool(4);
  const int32_t a = pool.allocate(), c = pool.allocate();
  pool.cache(a, 9);
  pool.cache(c, 9);
  EXPECT_EQ(pool.lookup(9), a);
  EXPECT_FALSE(pool.is_cached(c));
  const int32_t d = pool.allocate();
  EXPECT_GT(d, 0);
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_THROW(pool.cache(-1, 10), Error);
  pool.free(d);
  EXPECT_THROW(pool.cache(d, 10), Error);  // only referenced blocks are cached
}

// The open-addressing index against std::unordered_map over random inserts, erases and finds, with
// keys drawn from a small set (long probe runs, erases in the middle of runs, wrap-around) and keys
// that share their low bits (a plain modulo table would put them all in one bucket).
TEST(PrefixIndex, MatchesUnorderedMapUnderChurn) {
  for (const bool aligned : {false, true}) {
    constexpr int32_t kMax = 200;
    PrefixIndex index(kMax);
    std::unordered_map<uint64_t, int32_t> ref;
    std::mt19937_64 rng(aligned ? 7 : 3);
    auto key = [&]() -> uint64_t {
      const uint64_t k = rng() % 400;
      return aligned ? k << 40 : k;
    };
    for (int op = 0; op < 200000; ++op) {
      const uint64_t k = key();
      switch (rng() % 3) {
        case 0:
          if (static_cast<int32_t>(ref.size()) < kMax || ref.count(k)) {
            const auto b = static_cast<int32_t>(rng() % 1000);
            EXPECT_EQ(index.insert(k, b), ref.emplace(k, b).second);
          }
          break;
        case 1:
          index.erase(k);
          ref.erase(k);
          break;
        default: {
          auto it = ref.find(k);
          ASSERT_EQ(index.find(k), it == ref.end() ? -1 : it->second) << "op " << op;
        }
      }
      ASSERT_EQ(index.size(), static_cast<int64_t>(ref.size()));
    }
    auto entries = index.entries();
    std::sort(entries.begin(), entries.end());
    std::vector<std::pair<uint64_t, int32_t>> want(ref.begin(), ref.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(entries, want);
    for (const auto& [k, b] : want) EXPECT_EQ(index.find(k), b);
    index.clear();
    EXPECT_EQ(index.size(), 0);
    for (const auto& [k, b] : want) EXPECT_EQ(index.find(k), -1);
  }
}

TEST(PrefixIndex, RefusesMoreThanItsCapacity) {
  PrefixIndex index(2);
  EXPECT_TRUE(index.insert(1, 1));
  EXPECT_TRUE(index.insert(2, 2));
  EXPECT_FALSE(index.insert(2, 3));  // present: refused without counting against capacity
  EXPECT_THROW(index.insert(3, 3), Error);
  index.erase(1);
  EXPECT_TRUE(index.insert(3, 3));
  EXPECT_EQ(index.find(2), 2);
  EXPECT_EQ(index.find(3), 3);
}

TEST(BlockPool, ValidatesSize) {
  EXPECT_THROW(BlockPool(0), Error);
  BlockPool only_null(1);
  EXPECT_EQ(only_null.num_free(), 0);
  EXPECT_EQ(only_null.allocate(), -1);
}

}  // namespace
}  // namespace tessera::caches
