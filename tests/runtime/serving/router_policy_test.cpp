// The cache-aware policy and its prefix tree against SGLang's rules (policies/cache_aware.rs):
// balanced loads follow the longest prefix above the threshold, else the least loaded worker;
// imbalance (max - min > abs and max > rel * min) overrides the cache; a removed worker's
// prefixes are gone; eviction keeps each worker's share under its bound, oldest first.
#include "runtime/serving/router_policy.h"

#include <gtest/gtest.h>

#include <random>

namespace tessera::serving {
namespace {

TEST(PrefixTree, LongestMatchPerWorker) {
  PrefixTree t;
  t.insert("hello world", 0);
  t.insert("hello there", 1);
  t.insert("help", 2);
  auto m = t.longest_match("hello world, again", {0, 1, 2});
  EXPECT_EQ(m.worker, 0);
  EXPECT_EQ(m.chars, 11u);
  m = t.longest_match("hello thorn", {0, 1, 2});
  EXPECT_EQ(m.worker, 1);
  EXPECT_EQ(m.chars, 8u);                      // "hello th"
  m = t.longest_match("hello world", {1, 2});  // worker 0 not allowed
  EXPECT_EQ(m.worker, 1);
  EXPECT_EQ(m.chars, 6u);
  EXPECT_EQ(t.longest_match("zzz", {0, 1, 2}).worker, -1);
  EXPECT_EQ(t.worker_chars(0), 11u);
  EXPECT_EQ(t.worker_chars(2), 4u);
}

TEST(PrefixTree, MatchesABruteForceReference) {
  std::mt19937 rng(5);
  PrefixTree t;
  std::vector<std::pair<std::string, int>> inserted;
  for (int i = 0; i < 300; ++i) {
    std::string s;
    const int len = 1 + rng() % 12;
    for (int k = 0; k < len; ++k) s.push_back("abc"[rng() % 3]);
    const int w = rng() % 4;
    t.insert(s, w);
    inserted.push_back({s, w});
    std::string q;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 12); ++k) q.push_back("abc"[rng() % 3]);
    size_t best = 0;
    for (const auto& [text, worker] : inserted) {
      size_t l = 0;
      while (l < text.size() && l < q.size() && text[l] == q[l]) ++l;
      best = std::max(best, l);
    }
    EXPECT_EQ(t.longest_match(q, {0, 1, 2, 3}).chars, best) << q;
  }
}

TEST(PrefixTree, RemoveWorkerAndEvict) {
  PrefixTree t;
  t.insert("aaaa-old", 0);
  t.insert("bbbb-new", 0);
  t.insert("aaaa-old", 1);
  t.remove_worker(1);
  EXPECT_EQ(t.longest_match("aaaa-old", {1}).worker, -1);
  EXPECT_EQ(t.longest_match("aaaa-old", {0}).chars, 8u);
  t.evict(0, 10);  // 16 chars: the older text goes
  EXPECT_LE(t.worker_chars(0), 10u);
  EXPECT_EQ(t.longest_match("aaaa-old", {0}).worker, -1);
  EXPECT_EQ(t.longest_match("bbbb-new", {0}).chars, 8u);
}

TEST(CacheAwarePolicy, SharedPrefixesStickToOneWorker) {
  CacheAwarePolicy p;
  const std::string system = std::string(200, 's');
  auto first = p.select(system + "question one", {{0, 0}, {1, 0}});
  for (int i = 0; i < 10; ++i) {
    auto c = p.select(system + "question " + std::to_string(i), {{0, 3}, {1, 0}});
    EXPECT_EQ(c.worker, first.worker);
    EXPECT_TRUE(c.by_cache);
    EXPECT_GT(c.match_rate, 0.5);
  }
  // A different text goes to the worker with the smallest tree (1 holds nothing).
  auto other = p.select("completely different", {{0, 0}, {1, 2}});
  EXPECT_EQ(other.worker, 1);
  EXPECT_FALSE(other.by_cache);
  // Equal trees: the least loaded.
  CacheAwarePolicy q;
  EXPECT_EQ(q.select("abc", {{0, 3}, {1, 2}, {2, 5}}).worker, 1);
}

TEST(CacheAwarePolicy, ImbalanceOverridesTheCache) {
  RouterPolicyConfig cfg;
  cfg.balance_abs_threshold = 4;
  cfg.balance_rel_threshold = 1.5;
  CacheAwarePolicy p(cfg);
  const std::string text = std::string(100, 'x');
  EXPECT_EQ(p.select(text, {{0, 0}, {1, 0}}).worker, 0);
  // Loads 4 vs 0: difference not above 4 -> still the cached worker.
  EXPECT_EQ(p.select(text, {{0, 4}, {1, 0}}).worker, 0);
  // 5 vs 0: imbalanced -> the idle one, whatever the cache says.
  auto c = p.select(text, {{0, 5}, {1, 0}});
  EXPECT_EQ(c.worker, 1);
  EXPECT_FALSE(c.by_cache);
  // 10 vs 6: difference 4 (not above) -> cache again (worker 0 or 1, both hold it now).
  EXPECT_TRUE(p.select(text, {{0, 10}, {1, 6}}).by_cache);
  // 15 vs 10: diff 5 > 4 but 15 is not above 1.5 * 10 -> balanced.
  EXPECT_TRUE(p.select(text, {{0, 15}, {1, 10}}).by_cache);
}

TEST(CacheAwarePolicy, OnlyCandidatesAreChosen) {
  CacheAwarePolicy p;
  const std::string text = "the same prompt";
  EXPECT_EQ(p.select(text, {{0, 0}}).worker, 0);
  EXPECT_EQ(p.select(text, {{1, 9}, {2, 3}}).worker, 2);  // 0 is down: least loaded of the rest
  EXPECT_EQ(p.select(text, {}).worker, -1);
  p.remove_worker(2);
  EXPECT_EQ(p.worker_chars(2), 0u);
}

}  // namespace
}  // namespace tessera::serving
