// Paged cache managers: full attention, sliding window and chunked local (blocks leave the
// window), state slots, hybrid groups on one pool, copy-on-write fork, prefix caching with extra
// keys and LRU eviction.
#include "caches/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "caches/block_hash.h"

namespace tessera::caches {
namespace {

const AttentionShape kShape{16, 2, 64, 64, DType::kF16};

SpecPtr full(int64_t bs = 16) {
  return std::make_shared<FullAttentionSpec>(AttentionShape{bs, 2, 64, 64, DType::kF16});
}
SpecPtr sliding(int64_t window, int64_t bs = 16) {
  return std::make_shared<SlidingWindowSpec>(AttentionShape{bs, 2, 64, 64, DType::kF16}, window);
}
SpecPtr chunked(int64_t chunk, int64_t bs = 16) {
  return std::make_shared<ChunkedLocalAttentionSpec>(AttentionShape{bs, 2, 64, 64, DType::kF16},
                                                     chunk);
}
SpecPtr mamba() { return MambaSpec::mamba2(64, 1, 4, 16, 16, 4, DType::kF16, DType::kF32); }

KVCacheManager make(std::vector<SpecPtr> specs, int32_t blocks, bool caching = true,
                    int32_t slots = 0) {
  KVCacheManagerConfig c;
  for (auto& s : specs) c.groups.push_back({s, {static_cast<int64_t>(c.groups.size())}});
  c.num_blocks = blocks;
  c.num_state_slots = slots;
  c.enable_prefix_caching = caching;
  return KVCacheManager(c);
}

std::vector<int32_t> tokens(int64_t n, int32_t seed) {
  std::vector<int32_t> t(n);
  std::mt19937 rng(seed);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 32000);
  return t;
}

// Runs a whole prompt through allocate + commit in chunks of `chunk` tokens.
void prefill(KVCacheManager& m, SeqId seq, int64_t chunk = 64) {
  while (m.num_computed(seq) < m.num_tokens(seq)) {
    const int64_t n = std::min(chunk, m.num_tokens(seq) - m.num_computed(seq));
    ASSERT_TRUE(m.allocate(seq, n));
    m.commit(seq, n);
    m.check_invariants();
  }
}

TEST(KVCacheManager, FullAttentionAllocateCommitFree) {
  auto m = make({full()}, 64, /*caching=*/false);
  auto p = tokens(37, 1);
  EXPECT_EQ(m.add_sequence(1, p), 0);
  prefill(m, 1, 10);
  EXPECT_EQ(m.block_table(1, 0).size(), 3u);  // cdiv(37, 16)
  EXPECT_EQ(m.num_used_blocks(), 3);
  for (int i = 0; i < 11; ++i) ASSERT_TRUE(m.append(1, 7));
  EXPECT_EQ(m.num_computed(1), 48);
  EXPECT_EQ(m.block_table(1, 0).size(), 3u);
  ASSERT_TRUE(m.append(1, 7));
  EXPECT_EQ(m.block_table(1, 0).size(), 4u);
  m.free(1);
  EXPECT_EQ(m.pool().num_free(), 63);
  m.check_invariants();
  EXPECT_THROW(m.free(1), Error);
}

TEST(KVCacheManager, FullPoolIsAReturnValue) {
  auto m = make({full()}, 4, false);  // 3 usable blocks = 48 tokens
  m.add_sequence(1, tokens(60, 2));
  EXPECT_FALSE(m.allocate(1, 60));
  EXPECT_EQ(m.num_used_blocks(), 0);  // nothing changed
  EXPECT_TRUE(m.allocate(1, 48));
  m.commit(1, 48);
  EXPECT_FALSE(m.append(1, 3));
  EXPECT_EQ(m.num_tokens(1), 60);       // the refused token did not join
  EXPECT_THROW(m.commit(1, 1), Error);  // nothing allocated for it
  m.check_invariants();
}

TEST(KVCacheManager, BlockTablesArePaddedWithNullBlock) {
  auto m = make({full()}, 16, false);
  m.add_sequence(1, tokens(40, 3));
  m.add_sequence(2, tokens(5, 4));
  prefill(m, 1);
  prefill(m, 2);
  const SeqId seqs[] = {1, 2};
  auto bt = m.block_tables(0, seqs, 4);
  ASSERT_EQ(bt.size(), 8u);
  auto t1 = m.block_table(1, 0), t2 = m.block_table(2, 0);
  EXPECT_EQ(std::vector<int32_t>(bt.begin(), bt.begin() + 3),
            std::vector<int32_t>(t1.begin(), t1.end()));
  EXPECT_EQ(bt[3], 0);
  EXPECT_EQ(bt[4], t2[0]);
  EXPECT_EQ(bt[5], 0);
  EXPECT_THROW(m.block_tables(0, seqs, 2), Error);
}

// Acceptance 4 (block count): a request sharing a 1,000-token prefix reuses all its full blocks.
TEST(KVCachePrefix, ThousandTokenPrefixReusesEveryFullBlock) {
  auto m = make({full()}, 512);
  auto prefix = tokens(1000, 5);
  auto a = prefix, b = prefix;
  auto sa = tokens(37, 6), sb = tokens(51, 7);
  a.insert(a.end(), sa.begin(), sa.end());
  b.insert(b.end(), sb.begin(), sb.end());
  EXPECT_EQ(m.add_sequence(1, a), 0);
  prefill(m, 1, 128);
  const int64_t hit = m.add_sequence(2, b);
  EXPECT_EQ(hit, 62 * 16);  // 1000 / 16 = 62 full blocks
  auto ta = m.block_table(1, 0), tb = m.block_table(2, 0);
  ASSERT_EQ(tb.size(), 62u);
  EXPECT_TRUE(std::equal(tb.begin(), tb.end(), ta.begin()));
  for (int i = 0; i < 62; ++i) EXPECT_EQ(m.pool().ref_count(tb[i]), 2);
  prefill(m, 2, 128);
  EXPECT_NE(m.block_table(2, 0)[62], ta[62]);  // the diverging block is its own
  auto st = m.stats();
  EXPECT_EQ(st.requests, 2);
  EXPECT_EQ(st.hit_requests, 1);
  EXPECT_EQ(st.hit_tokens, 992);
  EXPECT_EQ(st.queried_tokens, static_cast<int64_t>(a.size() + b.size()));
  EXPECT_EQ(st.miss_tokens(), static_cast<int64_t>(a.size() + b.size()) - 992);
  m.check_invariants();
  // After both finish, a third request still hits the freed (cached) blocks.
  m.free(1);
  m.free(2);
  // b (1051 tokens) was fully computed: 65 full blocks cached, and (1051 - 1) / 16 = 65 may hit.
  EXPECT_EQ(m.add_sequence(3, b), 65 * 16);
}

TEST(KVCachePrefix, HitLeavesOneTokenToCompute) {
  auto m = make({full()}, 64);
  auto p = tokens(64, 8);  // exactly 4 blocks
  m.add_sequence(1, p);
  prefill(m, 1);
  m.free(1);
  EXPECT_EQ(m.add_sequence(2, p), 48);  // 3 blocks: the 4th holds the token left to compute
  m.check_invariants();
}

// max_hit_tokens caps what a sequence reads from the cache (whole blocks): 0 reads nothing and is
// no query, yet the sequence's own blocks still join the cache for the next one.
TEST(KVCachePrefix, MaxHitTokensCapsTheReadNotTheRegistration) {
  auto m = make({full()}, 64);
  auto p = tokens(100, 21);
  EXPECT_EQ(m.add_sequence(1, p, {}, 0), 0);
  EXPECT_EQ(m.stats().requests, 0);
  EXPECT_EQ(m.stats().queried_tokens, 0);
  prefill(m, 1);
  m.free(1);
  EXPECT_EQ(m.add_sequence(2, p, {}, 0), 0);  // the blocks are there, but not to be read
  EXPECT_EQ(m.num_computed(2), 0);
  m.free(2);
  EXPECT_EQ(m.add_sequence(3, p, {}, 47), 32);  // 47 tokens: 2 whole blocks
  EXPECT_EQ(m.stats().requests, 1);
  EXPECT_EQ(m.stats().hit_tokens, 32);
  m.free(3);
  EXPECT_EQ(m.add_sequence(4, p, {}, 48), 48);
  m.free(4);
  EXPECT_EQ(m.add_sequence(5, p), 96);  // uncapped: (100 - 1) / 16 = 6 blocks
  m.free(5);
  EXPECT_THROW(m.add_sequence(6, p, {}, -1), Error);
  EXPECT_FALSE(m.has(6));  // nothing added by the refused call
  m.check_invariants();
}

TEST(KVCachePrefix, ExtraKeysSeparatePrefixes) {
  auto m = make({full()}, 128);
  auto p = tokens(100, 9);
  m.add_sequence(1, p, {.lora_id = 3});
  prefill(m, 1);
  EXPECT_EQ(m.add_sequence(2, p, {.lora_id = 4}), 0);                    // other adapter
  EXPECT_EQ(m.add_sequence(3, p, {.lora_id = 3, .cache_salt = 77}), 0);  // other tenant
  EXPECT_EQ(m.add_sequence(4, p, {.lora_id = 3}), 96);
  // The salt enters the first block only (later blocks inherit it through the chain).
  EXPECT_EQ(hash_block(5, std::span<const int32_t>(p).first(16), {}, false),
            hash_block(5, std::span<const int32_t>(p).first(16), {.cache_salt = 1}, false));
  EXPECT_NE(hash_block(0, std::span<const int32_t>(p).first(16), {}, true),
            hash_block(0, std::span<const int32_t>(p).first(16), {.cache_salt = 1}, true));
}

TEST(KVCachePrefix, DisabledCachingNeverHits) {
  auto m = make({full()}, 128, false);
  auto p = tokens(100, 10);
  m.add_sequence(1, p);
  prefill(m, 1);
  EXPECT_EQ(m.add_sequence(2, p), 0);
  EXPECT_EQ(m.pool().num_cached(), 0);
}

TEST(KVCachePrefix, EvictsLeastRecentlyFreedFirst) {
  auto m = make({full()}, 9);  // 8 usable blocks
  auto pa = tokens(64, 11), pb = tokens(64, 12);
  m.add_sequence(1, pa);
  prefill(m, 1);
  m.free(1);  // A's 4 blocks cached and free, freed first
  m.add_sequence(2, pb);
  prefill(m, 2);
  m.free(2);  // B's 4 blocks cached and free, freed later
  EXPECT_EQ(m.pool().num_cached(), 8);
  m.add_sequence(3, tokens(32, 13));  // needs 2 blocks: evicts the LRU ones, A's tail first
  prefill(m, 3);
  EXPECT_EQ(m.stats().evictions, 2);
  EXPECT_EQ(m.add_sequence(4, pb), 48);  // B intact
  EXPECT_EQ(m.add_sequence(5, pa), 32);  // A lost its last two blocks (freed tail first)
  m.check_invariants();
}

// Acceptance 3: a sequence 100x longer than its window never holds more blocks than the bound.
TEST(KVCacheSlidingWindow, HundredWindowsStayWithinSpecBound) {
  for (int64_t window : {1, 7, 16, 64, 100}) {
    auto spec = sliding(window);
    const int64_t max_batched = 48;
    const CacheLimits limits{100 * window + 64, max_batched, 1, 0};
    const int64_t bound = spec->max_pages(limits);
    auto m = make({spec}, 4096, true);
    m.add_sequence(1, tokens(100 * window, 14));
    std::mt19937 rng(window);
    int64_t max_held = 0;
    while (m.num_computed(1) < 100 * window) {
      const int64_t n =
          std::min<int64_t>(1 + rng() % max_batched, 100 * window - m.num_computed(1));
      ASSERT_TRUE(m.allocate(1, n));
      const auto t = m.block_table(1, 0);
      const int64_t held = std::count_if(t.begin(), t.end(), [](int32_t b) { return b != 0; });
      max_held = std::max(max_held, held);
      ASSERT_LE(held, bound) << "window " << window << " at " << m.num_computed(1);
      ASSERT_EQ(m.num_used_blocks(), held);
      m.commit(1, n);
      m.check_invariants();
    }
    for (int i = 0; i < 3 * window; ++i) {  // decode
      ASSERT_TRUE(m.append(1, 1));
      ASSERT_LE(m.num_used_blocks(), bound);
    }
    EXPECT_GE(max_held, 2) << "window " << window;
    EXPECT_EQ(m.block_table(1, 0).size(), static_cast<size_t>(cdiv(m.num_computed(1), 16)));
  }
}

TEST(KVCacheChunkedLocal, FreesBlocksOfFinishedChunks) {
  auto spec = chunked(64);
  const CacheLimits limits{6400, 32, 1, 0};
  const int64_t bound = spec->max_pages(limits);
  auto m = make({spec}, 1024, false);
  m.add_sequence(1, tokens(6400, 15));
  std::mt19937 rng(1);
  while (m.num_computed(1) < 6400) {
    const int64_t n = std::min<int64_t>(1 + rng() % 32, 6400 - m.num_computed(1));
    ASSERT_TRUE(m.allocate(1, n));
    ASSERT_LE(m.num_used_blocks(), bound);
    m.commit(1, n);
    // Every block before the current chunk is gone.
    const int64_t chunk_start_block = m.num_computed(1) / 64 * 64 / 16;
    const auto t = m.block_table(1, 0);
    for (int64_t i = 0; i < chunk_start_block; ++i) ASSERT_EQ(t[i], 0);
  }
  EXPECT_THROW(make({chunked(40)}, 16), Error);  // chunk not a multiple of block size
}

TEST(KVCacheSlidingWindow, PrefixHitNeedsOnlyTheLastWindow) {
  // 21 usable blocks: sequence 1 uses each exactly once, so its freed blocks are all that is
  // left to evict, least recently freed (earliest in the prompt) first.
  auto m = make({sliding(33)}, 22);  // window 33: the last cdiv(32, 16) = 2 blocks matter
  auto p = tokens(20 * 16 + 5, 16);
  m.add_sequence(1, p);
  prefill(m, 1, 16);
  // Early blocks left the window during prefill; they are free but still cached.
  m.free(1);
  EXPECT_EQ(m.pool().num_cached(), 20);
  m.add_sequence(2, tokens(10 * 16, 17));
  ASSERT_TRUE(m.allocate(2, 160));  // evicts sequence 1's first 10 blocks
  m.commit(2, 160);
  EXPECT_EQ(m.stats().evictions, 10);
  std::vector<uint64_t> hashes;
  extend_block_hashes(hashes, p, 16, {});
  EXPECT_EQ(m.pool().lookup(group_key(hashes[0], 0)), -1);  // full attention would miss here
  const int64_t hit = m.add_sequence(3, p);
  EXPECT_EQ(hit, 20 * 16);  // (325 - 1) / 16 = 20 blocks; blocks 18 and 19 hold the window
  const auto t = m.block_table(3, 0);
  ASSERT_EQ(t.size(), 20u);
  for (int i = 0; i < 18; ++i) EXPECT_EQ(t[i], 0) << i;  // not needed: null
  EXPECT_EQ(t[18], m.pool().lookup(group_key(hashes[18], 0)));
  EXPECT_EQ(t[19], m.pool().lookup(group_key(hashes[19], 0)));
  EXPECT_NE(t[19], 0);
  m.check_invariants();
}

TEST(KVCacheFork, CopyOnWriteOfSharedPartialBlock) {
  auto m = make({full()}, 32, false);
  m.add_sequence(1, tokens(20, 18));
  prefill(m, 1);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(m.fork(1, 2, &copies));
  EXPECT_TRUE(copies.empty());
  const auto t1 = std::vector<int32_t>(m.block_table(1, 0).begin(), m.block_table(1, 0).end());
  EXPECT_EQ(m.pool().ref_count(t1[0]), 2);
  EXPECT_EQ(m.pool().ref_count(t1[1]), 2);
  ASSERT_TRUE(m.append(2, 5, &copies));  // the child writes slot 20: block 1 is shared
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, t1[1]);
  const int32_t fresh = m.block_table(2, 0)[1];
  EXPECT_EQ(copies[0].dst, fresh);
  EXPECT_NE(fresh, t1[1]);
  EXPECT_EQ(m.block_table(2, 0)[0], t1[0]);  // full block still shared
  copies.clear();
  ASSERT_TRUE(m.append(1, 6, &copies));  // the parent now owns block 1 alone: no copy
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(m.block_table(1, 0)[1], t1[1]);
  EXPECT_THROW(m.fork(1, 2, &copies), Error);  // child id taken
  m.free(1);
  m.free(2);
  EXPECT_EQ(m.pool().num_free(), 31);
  m.check_invariants();
}

TEST(KVCacheFork, WriteIntoSharedBlockWithoutCopiesIsRefusedWholesale) {
  auto m = make({full(), sliding(64)}, 32, false);  // two groups on one pool
  m.add_sequence(1, tokens(20, 18));
  prefill(m, 1);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(m.fork(1, 2, &copies));
  const int32_t free_before = m.pool().num_free();
  const auto t2 = std::vector<int32_t>(m.block_table(2, 0).begin(), m.block_table(2, 0).end());
  EXPECT_THROW(m.append(2, 5), Error);          // slot 20 is in a shared block: a copy is needed
  EXPECT_EQ(m.pool().num_free(), free_before);  // nothing allocated, nothing leaked
  EXPECT_EQ(std::vector<int32_t>(m.block_table(2, 0).begin(), m.block_table(2, 0).end()), t2);
  m.check_invariants();
  ASSERT_TRUE(m.append(2, 5, &copies));  // with somewhere to report the copy it works
  EXPECT_EQ(copies.size(), 2u);          // one per group
  m.check_invariants();
}

TEST(KVCacheState, ForkWithoutCopiesLeavesNothingBehind) {
  auto m = make({mamba()}, 0, true, 3);
  m.add_sequence(1, tokens(10, 19));
  ASSERT_TRUE(m.allocate(1, 10));
  m.commit(1, 10);
  EXPECT_THROW(m.fork(1, 2, nullptr), Error);
  EXPECT_FALSE(m.has(2));
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(m.fork(1, 2, &copies));  // the slot was not leaked: the fork still fits
  m.check_invariants();
}

TEST(KVCacheState, OneSlotPerSequenceAndForkCopiesState) {
  auto m = make({mamba()}, 0, true, 3);  // 2 usable slots
  m.add_sequence(1, tokens(100, 19));
  ASSERT_TRUE(m.allocate(1, 100));
  m.commit(1, 100);
  EXPECT_EQ(m.block_table(1, 0).size(), 1u);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(m.append(1, 1));
  EXPECT_EQ(m.block_table(1, 0).size(), 1u);  // length does not matter
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(m.fork(1, 2, &copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, m.block_table(1, 0)[0]);
  EXPECT_EQ(copies[0].dst, m.block_table(2, 0)[0]);
  EXPECT_FALSE(m.fork(1, 3, &copies));  // no slot left
  m.add_sequence(4, tokens(3, 20));
  EXPECT_FALSE(m.allocate(4, 3));
  m.free(2);
  EXPECT_TRUE(m.allocate(4, 3));
  m.check_invariants();
}

TEST(KVCacheHybrid, GroupsShareOnePoolAndAgreeOnHits) {
  auto m = make({full(), sliding(40), chunked(64)}, 200);
  auto p = tokens(300, 21);
  m.add_sequence(1, p);
  prefill(m, 1, 50);
  // full: 19 blocks; sliding keeps tokens [261, 300) = blocks 16..18; chunked [256, 300) = 16..18.
  EXPECT_EQ(m.num_used_blocks(), 19 + 3 + 3);
  m.free(1);
  const int64_t hit = m.add_sequence(2, p);
  EXPECT_EQ(hit, 18 * 16);  // (300 - 1) / 16 = 18 blocks, every group accepts it
  for (int32_t g = 0; g < 3; ++g) EXPECT_EQ(m.block_table(2, g).size(), 18u);
  m.check_invariants();
  // With a state group, no prefix hits (the state covers the whole prefix).
  auto h = make({full(), mamba()}, 64, true, 4);
  h.add_sequence(1, p);
  prefill(h, 1);
  h.free(1);
  EXPECT_EQ(h.add_sequence(2, p), 0);
  h.check_invariants();
}

TEST(KVCacheHybrid, GroupLayersBySpec) {
  auto f = full();
  auto w = sliding(128);
  auto enc = std::make_shared<EncoderOnlySpec>(kShape);
  auto groups = group_layers({f, w, full(), sliding(128), enc, mamba(), w});
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].layers, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(groups[1].layers, (std::vector<int64_t>{1, 3, 6}));
  EXPECT_EQ(groups[2].layers, (std::vector<int64_t>{5}));
  EXPECT_THROW(make({full(16), full(32)}, 10), Error);  // pool groups need one block size
}

}  // namespace
}  // namespace tessera::caches

namespace tessera::caches {
namespace {

// The handle calls (bulk append, allocate, commit, block_table) leave two managers fed the same
// tokens in the same state as the per-token, by-id calls: same tables, same prefix-cache entries,
// same counters; a handle of a freed sequence is refused, and its place is reused.
TEST(KVCacheManager, HandleCallsMatchIdCalls) {
  for (auto specs : {std::vector<SpecPtr>{full()}, std::vector<SpecPtr>{full(), sliding(40)}}) {
    auto by_id = make(specs, 400);
    auto by_handle = make(specs, 400);
    std::mt19937 rng(5);
    const auto shared = tokens(48, 9);
    for (SeqId s = 0; s < 6; ++s) {
      auto p = shared;
      const auto own = tokens(5 + s * 7, static_cast<int32_t>(s));
      p.insert(p.end(), own.begin(), own.end());
      ASSERT_EQ(by_id.add_sequence(s, p), by_handle.add_sequence(s, p));
      const SeqHandle h = by_handle.handle(s);
      int64_t pending = static_cast<int64_t>(p.size());  // tokens appended but not computed
      for (int step = 0; step < 60; ++step) {
        // Several generated tokens at once on one side, one at a time on the other.
        const auto gen = tokens(1 + rng() % 3, step * 10 + static_cast<int32_t>(s));
        for (int32_t t : gen) by_id.append_token(s, t);
        by_handle.append_tokens(h, gen);
        pending = by_id.num_tokens(s) - by_id.num_computed(s);
        const int64_t n = 1 + static_cast<int64_t>(rng() % pending);
        ASSERT_TRUE(by_id.allocate(s, n));
        ASSERT_TRUE(by_handle.allocate(h, n));
        by_id.commit(s, n);
        by_handle.commit(h, n);
        for (int32_t g = 0; g < by_id.num_groups(); ++g) {
          auto a = by_id.block_table(s, g);
          auto b = by_handle.block_table(h, g);
          ASSERT_EQ(std::vector<int32_t>(a.begin(), a.end()),
                    std::vector<int32_t>(b.begin(), b.end()));
        }
      }
      EXPECT_EQ(by_id.num_tokens(s), by_handle.num_tokens(s));
      EXPECT_EQ(by_id.num_computed(s), by_handle.num_computed(s));
      by_id.check_invariants();
      by_handle.check_invariants();
      if (s % 2 == 1) {  // free every other one: its place is reused by the next sequence
        by_id.free(s);
        by_handle.free(s);
        EXPECT_THROW(by_handle.commit(h, 0), Error);
        EXPECT_THROW(by_handle.block_table(h, 0), Error);
      }
    }
    auto sorted = [](std::vector<std::pair<uint64_t, int32_t>> v) {
      std::sort(v.begin(), v.end());
      return v;
    };
    EXPECT_EQ(sorted(by_id.pool().index()), sorted(by_handle.pool().index()));
    EXPECT_EQ(by_id.stats().hit_tokens, by_handle.stats().hit_tokens);
    EXPECT_GT(by_id.stats().hit_tokens, 0);
    EXPECT_THROW(by_handle.handle(1), Error);
    EXPECT_THROW(by_handle.commit(SeqHandle{}, 0), Error);
  }
}

// A batch of commits (what the scheduler hands over after a decode step) leaves the manager as
// the same commits one at a time: tables, prefix index, hits of later sequences, freed blocks.
TEST(KVCacheManager, BatchedCommitsMatchOneAtATime) {
  for (auto specs : {std::vector<SpecPtr>{full()}, std::vector<SpecPtr>{full(), sliding(40)},
                     std::vector<SpecPtr>{full(), chunked(32)}}) {
    for (bool caching : {true, false}) {
      auto one = make(specs, 2000, caching);
      auto batch = make(specs, 2000, caching);
      std::mt19937 rng(11);
      const auto shared = tokens(40, 3);
      constexpr SeqId kSeqs = 12;
      std::vector<SeqHandle> h1, h2;
      for (SeqId s = 0; s < kSeqs; ++s) {
        auto p = shared;
        const auto own = tokens(3 + s * 5, static_cast<int32_t>(100 + s));
        p.insert(p.end(), own.begin(), own.end());
        ASSERT_EQ(one.add_sequence(s, p), batch.add_sequence(s, p));
        h1.push_back(one.handle(s));
        h2.push_back(batch.handle(s));
      }
      for (int step = 0; step < 80; ++step) {
        std::vector<KVCacheManager::Commit> commits;
        for (SeqId s = 0; s < kSeqs; ++s) {
          if (rng() % 4 == 0) continue;  // not in this step
          const auto gen = tokens(rng() % 3, step * 100 + static_cast<int32_t>(s));
          one.append_tokens(h1[s], gen);
          batch.append_tokens(h2[s], gen);
          const int64_t pending = one.num_tokens(s) - one.num_computed(s);
          if (pending == 0) continue;
          const int64_t n = 1 + static_cast<int64_t>(rng() % pending);
          ASSERT_TRUE(one.allocate(h1[s], n));
          ASSERT_TRUE(batch.allocate(h2[s], n));
          one.commit(h1[s], n);
          commits.push_back({h2[s], n});
        }
        batch.commit(std::span<const KVCacheManager::Commit>(commits));
        for (SeqId s = 0; s < kSeqs; ++s) {
          ASSERT_EQ(one.num_computed(s), batch.num_computed(s));
          for (int32_t g = 0; g < one.num_groups(); ++g) {
            auto a = one.block_table(s, g);
            auto b = batch.block_table(s, g);
            ASSERT_EQ(std::vector<int32_t>(a.begin(), a.end()),
                      std::vector<int32_t>(b.begin(), b.end()))
                << "seq " << s << " group " << g << " step " << step;
          }
        }
        one.check_invariants();
        batch.check_invariants();
      }
      auto sorted = [](std::vector<std::pair<uint64_t, int32_t>> v) {
        std::sort(v.begin(), v.end());
        return v;
      };
      EXPECT_EQ(sorted(one.pool().index()), sorted(batch.pool().index()));
      if (caching) EXPECT_FALSE(one.pool().index().empty());
      // A later sequence with a computed sequence's tokens hits the same blocks on both.
      for (SeqId s = 0; s < kSeqs; s += 5) {
        one.free(s);
        batch.free(s);
      }
      auto again = shared;
      const auto own = tokens(3, 100);
      again.insert(again.end(), own.begin(), own.end());
      EXPECT_EQ(one.add_sequence(99, again), batch.add_sequence(99, again));
      // Bad input in a batch: the commits before it are done, the error names the sequence.
      std::vector<KVCacheManager::Commit> bad{{batch.handle(1), 0}, {batch.handle(2), 1 << 20}};
      EXPECT_THROW(batch.commit(std::span<const KVCacheManager::Commit>(bad)), Error);
      std::vector<KVCacheManager::Commit> negative{{batch.handle(1), -1}};
      EXPECT_THROW(batch.commit(std::span<const KVCacheManager::Commit>(negative)), Error);
    }
  }
}

}  // namespace
}  // namespace tessera::caches
