// Acceptance 2: a randomized property test of 100,000 operations (add with prefix hits, chunked
// prefill, decode, fork, free; small pools so that allocations fail and cached blocks are
// evicted) over every manager kind. After every operation:
//  - KVCacheManager::check_invariants(): each block is free or referenced, reference counts equal
//    the block-table references, the free list holds each unreferenced block once, the prefix
//    index is consistent (a double free throws inside the pool);
//  - a shadow store of what each block slot holds shows that every token a sequence can still
//    attend to reads back through its block table, so prefix hits returned the right blocks and
//    copy-on-write copied before writing; no token is written into a block someone else holds.
// At the end every sequence is freed and the whole pool must be free again (no leak).
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "caches/kv_cache_manager.h"

namespace tessera::caches {
namespace {

constexpr int64_t kBs = 4;

SpecPtr full() {
  return std::make_shared<FullAttentionSpec>(AttentionShape{kBs, 1, 8, 8, DType::kF32});
}
SpecPtr sliding(int64_t w) {
  return std::make_shared<SlidingWindowSpec>(AttentionShape{kBs, 1, 8, 8, DType::kF32}, w);
}
SpecPtr chunked(int64_t c) {
  return std::make_shared<ChunkedLocalAttentionSpec>(AttentionShape{kBs, 1, 8, 8, DType::kF32}, c);
}
SpecPtr mamba() { return MambaSpec::mamba1(8, 4, 4, DType::kF32, DType::kF32); }

uint64_t fold(uint64_t h, int32_t t) { return (h ^ static_cast<uint64_t>(t)) * 0x100000001b3ull; }
constexpr uint64_t kStateSeed = 0xcbf29ce484222325ull;

class Harness {
 public:
  Harness(std::vector<SpecPtr> specs, int32_t blocks, bool caching, int32_t slots, uint32_t seed)
      : rng_(seed) {
    KVCacheManagerConfig c;
    for (auto& s : specs) c.groups.push_back({s, {static_cast<int64_t>(c.groups.size())}});
    c.num_blocks = blocks;
    c.num_state_slots = slots;
    c.enable_prefix_caching = caching;
    m_ = std::make_unique<KVCacheManager>(c);
    for (auto& s : specs) {
      if (s->is_state()) {
        store_.emplace_back();
        state_.emplace_back(slots, 0);
      } else {
        store_.emplace_back(blocks, std::vector<int32_t>(kBs, -1));
        state_.emplace_back();
      }
    }
    for (int i = 0; i < 4; ++i) {
      prefixes_.push_back(random_tokens(8 + rng_() % 24));
    }
  }

  void run(int ops) {
    for (int i = 0; i < ops; ++i) {
      const uint32_t r = rng_() % 100;
      if (live_.empty() || (r < 20 && live_.size() < 8)) {
        op_add();
      } else if (r < 55) {
        op_step();
      } else if (r < 70) {
        op_decode();
      } else if (r < 80) {
        op_fork();
      } else {
        op_free();
      }
      m_->check_invariants();
      verify();
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (SeqId s : live_) m_->free(s);
    live_.clear();
    m_->check_invariants();
    EXPECT_EQ(m_->pool().num_free(), m_->pool().num_blocks() - 1) << "blocks leaked";
    EXPECT_EQ(m_->num_used_blocks(), 0);
  }

  const KVCacheManager& manager() const { return *m_; }
  int64_t failed_allocations = 0;
  int64_t cow_copies = 0;
  int64_t adds = 0, prefix_hits = 0, steps = 0, decodes = 0, forks = 0, frees = 0;
  // Every kind of operation ran many times.
  void expect_coverage(bool hits) const {
    EXPECT_EQ(adds + steps + decodes + forks + frees + failed_allocations >= kOps, true);
    for (int64_t n : {adds, steps, decodes, forks, frees}) EXPECT_GT(n, 1000);
    if (hits) EXPECT_GT(prefix_hits, 100);
  }
  static constexpr int64_t kOps = 20000;

 private:
  std::vector<int32_t> random_tokens(int64_t n) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = static_cast<int32_t>(rng_() % 50);  // small vocabulary: shared blocks
    return t;
  }
  SeqId pick() { return live_[rng_() % live_.size()]; }

  void op_add() {
    auto prompt = prefixes_[rng_() % prefixes_.size()];
    prompt.resize(prompt.size() * (1 + rng_() % 3) / 3 + 1);
    auto suffix = random_tokens(rng_() % 12);
    prompt.insert(prompt.end(), suffix.begin(), suffix.end());
    const SeqId id = next_id_++;
    const int64_t hit = m_->add_sequence(id, prompt, {.lora_id = rng_() % 2});
    ASSERT_EQ(hit % kBs, 0);
    ASSERT_LE(hit, static_cast<int64_t>(prompt.size()) - 1);
    tokens_[id] = prompt;
    live_.push_back(id);
    ++adds;
    if (hit > 0) ++prefix_hits;
  }

  // Prefill (or catch up on decoded tokens) up to 12 tokens of one sequence.
  void op_step() {
    const SeqId s = pick();
    const int64_t c = m_->num_computed(s), t = m_->num_tokens(s);
    if (c == t) return op_decode();
    const int64_t n = 1 + rng_() % std::min<int64_t>(12, t - c);
    std::vector<BlockCopy> copies;
    if (!m_->allocate(s, n, &copies)) {
      ++failed_allocations;
      return;
    }
    apply(copies);
    write(s, c, n);
    m_->commit(s, n);
    ++steps;
  }

  void op_decode() {
    const SeqId s = pick();
    if (m_->num_tokens(s) >= 80) return op_free();
    const int32_t tok = static_cast<int32_t>(rng_() % 50);
    m_->append_token(s, tok);
    tokens_[s].push_back(tok);
    ++decodes;
  }

  void op_fork() {
    if (live_.size() >= 8) return op_free();
    const SeqId p = pick();
    const SeqId id = next_id_++;
    std::vector<BlockCopy> copies;
    if (!m_->fork(p, id, &copies)) {
      ++failed_allocations;
      return;
    }
    apply(copies);
    tokens_[id] = tokens_[p];
    live_.push_back(id);
    ++forks;
  }

  void op_free() {
    const size_t i = rng_() % live_.size();
    m_->free(live_[i]);
    ++frees;
    tokens_.erase(live_[i]);
    live_.erase(live_.begin() + i);
  }

  void apply(const std::vector<BlockCopy>& copies) {
    for (const auto& cp : copies) {
      ++cow_copies;
      if (m_->manager(cp.group).spec().is_state()) {
        state_[cp.group][cp.dst] = state_[cp.group][cp.src];
      } else {
        ASSERT_EQ(m_->pool().ref_count(cp.dst), 1);
        store_[cp.group][cp.dst] = store_[cp.group][cp.src];
      }
    }
  }

  // Writes tokens [c, c + n) of `s` through its tables, as the model's KV append would.
  void write(SeqId s, int64_t c, int64_t n) {
    const auto& toks = tokens_[s];
    for (int32_t g = 0; g < m_->num_groups(); ++g) {
      auto table = m_->block_table(s, g);
      if (m_->manager(g).spec().is_state()) {
        ASSERT_EQ(table.size(), 1u);
        uint64_t& st = state_[g][table[0]];
        if (c == 0) st = kStateSeed;  // a fresh sequence starts from the zero state
        for (int64_t p = c; p < c + n; ++p) st = fold(st, toks[p]);
        continue;
      }
      for (int64_t p = c; p < c + n; ++p) {
        const int32_t b = table[p / kBs];
        ASSERT_NE(b, 0) << "write to the null block";
        ASSERT_EQ(m_->pool().ref_count(b), 1) << "write into shared block " << b;
        store_[g][b][p % kBs] = toks[p];
      }
    }
  }

  void verify() {
    for (SeqId s : live_) {
      const int64_t c = m_->num_computed(s);
      const auto& toks = tokens_[s];
      for (int32_t g = 0; g < m_->num_groups(); ++g) {
        auto table = m_->block_table(s, g);
        const auto& mgr = m_->manager(g);
        if (mgr.spec().is_state()) {
          if (c == 0) continue;
          uint64_t want = kStateSeed;
          for (int64_t p = 0; p < c; ++p) want = fold(want, toks[p]);
          ASSERT_EQ(state_[g][table[0]], want) << "seq " << s << " state";
          continue;
        }
        for (int64_t p = mgr.first_needed_token(c); p < c; ++p) {
          ASSERT_EQ(store_[g][table[p / kBs]][p % kBs], toks[p])
              << "seq " << s << " group " << g << " position " << p;
        }
      }
    }
  }

  std::mt19937 rng_;
  std::unique_ptr<KVCacheManager> m_;
  std::vector<std::vector<std::vector<int32_t>>> store_;  // [group][block][slot] -> token
  std::vector<std::vector<uint64_t>> state_;              // [group][slot] -> folded tokens
  std::vector<std::vector<int32_t>> prefixes_;
  std::map<SeqId, std::vector<int32_t>> tokens_;
  std::vector<SeqId> live_;
  SeqId next_id_ = 1;
};

constexpr int kOpsPerConfig = 20000;  // 5 configurations: 100,000 operations

TEST(CacheProperty, FullAttention) {
  Harness h({full()}, 40, true, 0, 1);
  h.run(kOpsPerConfig);
  h.expect_coverage(true);
  const auto st = h.manager().stats();
  EXPECT_GT(st.hit_tokens, 0);
  EXPECT_GT(st.evictions, 0);
  EXPECT_GT(h.failed_allocations, 0);
  EXPECT_GT(h.cow_copies, 0);
}

TEST(CacheProperty, SlidingWindow) {
  Harness h({sliding(10)}, 24, true, 0, 2);
  h.run(kOpsPerConfig);
  h.expect_coverage(true);
  EXPECT_GT(h.manager().stats().hit_tokens, 0);
  EXPECT_GT(h.manager().stats().evictions, 0);
}

TEST(CacheProperty, ChunkedLocal) {
  Harness h({chunked(8)}, 24, true, 0, 3);
  h.run(kOpsPerConfig);
  h.expect_coverage(true);
  EXPECT_GT(h.manager().stats().hit_tokens, 0);
  EXPECT_GT(h.manager().stats().evictions, 0);
}

TEST(CacheProperty, HybridAttentionGroupsShareThePool) {
  Harness h({full(), sliding(6), chunked(8)}, 60, true, 0, 4);
  h.run(kOpsPerConfig);
  h.expect_coverage(true);
  EXPECT_GT(h.manager().stats().hit_tokens, 0);
  EXPECT_GT(h.manager().stats().evictions, 0);
  EXPECT_GT(h.cow_copies, 0);
}

TEST(CacheProperty, HybridWithStateSlots) {
  Harness h({full(), mamba(), sliding(7)}, 48, false, 6, 5);
  h.run(kOpsPerConfig);
  h.expect_coverage(false);
  EXPECT_GT(h.failed_allocations, 0);
  EXPECT_GT(h.cow_copies, 0);
}

}  // namespace
}  // namespace tessera::caches
