// `tessera bench caches`: the paged KV cache's management costs and memory efficiency.
//  - alloc_free_per_s: allocate + free of one block on one thread (BlockPool), against a baseline
//    free list of std::list + std::vector reference counts run in the same process, in
//    interleaved rounds (medians and p10/p90);
//  - paged_waste_pct vs contiguous_waste_pct: KV bytes reserved but unused while serving a
//    mixed-length workload (described in the output), paged blocks vs max-length contiguous
//    buffers, averaged over every decode step;
//  - prefix_hit_rate on a shared-system-prompt workload, with the ideal rate for reference.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <list>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/timing.h"
#include "caches/block_pool.h"
#include "caches/kv_cache_manager.h"
#include "caches/memory_plan.h"

namespace tessera::bench {
namespace {

using caches::BlockPool;
using caches::KVCacheManager;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Allocate + free pairs per second over `iters` pairs. The pool must end with every block back
// (*consistent is cleared otherwise).
double pool_alloc_free_per_s(int64_t iters, bool* consistent) {
  BlockPool pool(1 << 16);
  // Hold half the pool so the free list is not trivially short.
  std::vector<int32_t> held;
  pool.allocate(pool.num_free() / 2, held);
  const int64_t free_before = pool.num_free();
  uint64_t sink = 0;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < iters; ++i) {
    const int32_t b = pool.allocate();
    sink += static_cast<uint32_t>(b);
    pool.free(b);
  }
  const double rate = iters / seconds_since(t0);
  if (sink == 42) std::puts("");  // keep the loop observable
  if (pool.num_free() != free_before) *consistent = false;
  return rate;
}

// Baseline: the textbook free list (std::list of ids, a node allocation per free).
double list_alloc_free_per_s(int64_t iters, bool* consistent) {
  std::list<int32_t> free_list;
  std::vector<int32_t> refs(1 << 16, 0);
  for (int32_t b = 1 + (1 << 15); b < (1 << 16); ++b) free_list.push_back(b);
  const size_t free_before = free_list.size();
  uint64_t sink = 0;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < iters; ++i) {
    const int32_t b = free_list.front();
    free_list.pop_front();
    refs[b] = 1;
    sink += static_cast<uint32_t>(b);
    if (--refs[b] == 0) free_list.push_back(b);
  }
  const double rate = iters / seconds_since(t0);
  if (sink == 42) std::puts("");
  if (free_list.size() != free_before) *consistent = false;
  return rate;
}

struct WasteResult {
  double paged_waste_pct = 0, contiguous_waste_pct = 0;
  double tokens = 0, paged_reserved = 0, contiguous_reserved = 0;
  int64_t requests = 0, steps = 0, failed_allocations = 0;
};

// Serving simulation: `concurrency` sequences in flight; each step every sequence decodes one
// token; a finished sequence is freed and a new request (prefilled at once) takes its place.
// Lengths: 60% chat (prompt 32-512, output 16-256), 30% documents (prompt 512-2048, output
// 64-512), 10% long (prompt 2048-3584, output 128-512); max_model_len 4096, block_size 16.
WasteResult waste(int64_t steps, int concurrency, uint32_t seed) {
  const int64_t max_len = 4096, bs = 16;
  caches::KVCacheManagerConfig cfg;
  cfg.groups.push_back({std::make_shared<caches::FullAttentionSpec>(
                            caches::AttentionShape{bs, 8, 128, 128, DType::kBF16}),
                        {0}});
  cfg.num_blocks = static_cast<int32_t>(concurrency * max_len / bs + 1);
  cfg.enable_prefix_caching = false;
  KVCacheManager m(cfg);
  std::mt19937 rng(seed);
  auto uni = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % (hi - lo)); };
  struct Live {
    caches::SeqId id;
    int64_t target;
  };
  std::vector<Live> live;
  caches::SeqId next = 1;
  WasteResult r;
  auto start = [&]() {
    const uint32_t kind = rng() % 10;
    int64_t prompt, output;
    if (kind < 6) {
      prompt = uni(32, 512), output = uni(16, 256);
    } else if (kind < 9) {
      prompt = uni(512, 2048), output = uni(64, 512);
    } else {
      prompt = uni(2048, 3584), output = uni(128, 512);
    }
    std::vector<int32_t> toks(prompt, 1);
    const caches::SeqId id = next++;
    m.add_sequence(id, toks);
    if (!m.allocate(id, prompt)) ++r.failed_allocations;
    m.commit(id, prompt);
    live.push_back({id, std::min(prompt + output, max_len)});
    ++r.requests;
  };
  for (int i = 0; i < concurrency; ++i) start();
  for (int64_t s = 0; s < steps; ++s) {
    for (size_t i = 0; i < live.size();) {
      if (!m.append(live[i].id, 1)) ++r.failed_allocations;
      if (m.num_computed(live[i].id) >= live[i].target) {
        m.free(live[i].id);
        live[i] = live.back();
        live.pop_back();
      } else {
        ++i;
      }
    }
    while (static_cast<int>(live.size()) < concurrency) start();
    double tokens = 0;
    for (const auto& l : live) tokens += m.num_computed(l.id);
    r.tokens += tokens;
    r.paged_reserved += static_cast<double>(m.num_used_blocks()) * bs;
    r.contiguous_reserved += static_cast<double>(live.size()) * max_len;
    ++r.steps;
  }
  r.paged_waste_pct = 100.0 * (1.0 - r.tokens / r.paged_reserved);
  r.contiguous_waste_pct = 100.0 * (1.0 - r.tokens / r.contiguous_reserved);
  return r;
}

struct PrefixResult {
  double hit_rate = 0, ideal_hit_rate = 0;
  int64_t requests = 0, evictions = 0;
};

// Shared-prefix workload: 8 system prompts of 512 tokens (picked with Zipf-like weights), each
// request adds a unique 32-256-token question, decodes 64 tokens and finishes; 16 in flight; a
// pool of 2048 blocks (32k tokens) so that cached prefixes compete with live sequences.
PrefixResult prefix_workload(int64_t requests, uint32_t seed) {
  const int64_t bs = 16, system_len = 512;
  caches::KVCacheManagerConfig cfg;
  cfg.groups.push_back({std::make_shared<caches::FullAttentionSpec>(
                            caches::AttentionShape{bs, 8, 128, 128, DType::kBF16}),
                        {0}});
  cfg.num_blocks = 2048;
  cfg.enable_prefix_caching = true;
  KVCacheManager m(cfg);
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> systems(8);
  for (auto& s : systems) {
    s.resize(system_len);
    for (auto& t : s) t = static_cast<int32_t>(rng() % 32000);
  }
  std::discrete_distribution<int> pick({32, 16, 8, 4, 2, 1, 1, 1});
  std::vector<bool> seen(8, false);
  int64_t ideal_hits = 0, queried = 0;
  std::vector<caches::SeqId> live;
  PrefixResult r;
  for (caches::SeqId id = 1; id <= requests; ++id) {
    const int s = pick(rng);
    auto prompt = systems[s];
    const int64_t q = 32 + rng() % 224;
    for (int64_t i = 0; i < q; ++i) prompt.push_back(static_cast<int32_t>(rng() % 32000));
    if (seen[s]) ideal_hits += system_len / bs * bs;
    seen[s] = true;
    queried += static_cast<int64_t>(prompt.size());
    const int64_t hit = m.add_sequence(id, prompt);
    const int64_t rest = static_cast<int64_t>(prompt.size()) - hit;
    if (m.allocate(id, rest)) {
      m.commit(id, rest);
      for (int i = 0; i < 64 && m.append(id, 7); ++i) {
      }
    }
    live.push_back(id);
    if (live.size() >= 16) {
      const size_t k = rng() % live.size();
      m.free(live[k]);
      live.erase(live.begin() + k);
    }
  }
  const auto st = m.stats();
  r.hit_rate = st.hit_rate();
  r.ideal_hit_rate = static_cast<double>(ideal_hits) / queried;
  r.requests = requests;
  r.evictions = st.evictions;
  return r;
}

int run_caches(const BenchOptions& opt) {
  if (opt.rank != 0) return 0;
  const int64_t iters = opt.quick ? 1'000'000 : 10'000'000;
  const int rounds = opt.quick ? 5 : 15;
  // Interleaved rounds (the order alternates) so that load from other processes hits both
  // alike; medians and spreads of the rates, and of each round's pool / list ratio.
  std::vector<double> pool_rates, list_rates;
  bool pool_ok = true, list_ok = true;
  pool_alloc_free_per_s(iters / 10, &pool_ok);  // warm-up
  list_alloc_free_per_s(iters / 10, &list_ok);
  for (int r = 0; r < rounds; ++r) {
    if (r % 2 == 0) {
      pool_rates.push_back(pool_alloc_free_per_s(iters, &pool_ok));
      list_rates.push_back(list_alloc_free_per_s(iters, &list_ok));
    } else {
      list_rates.push_back(list_alloc_free_per_s(iters, &list_ok));
      pool_rates.push_back(pool_alloc_free_per_s(iters, &pool_ok));
    }
  }
  const Spread pool_s = spread_of(pool_rates), list_s = spread_of(list_rates);
  const Spread ratio_s = spread_of(per_round_ratios(pool_rates, list_rates));
  const double pool_rate = pool_s.median, list_rate = list_s.median;
  const auto w = waste(opt.quick ? 2000 : 20000, 64, 1);
  const auto p = prefix_workload(opt.quick ? 500 : 5000, 2);
  const std::string waste_desc =
      "64 sequences in flight, decode one token per step, finished ones replaced; 60% chat "
      "(prompt 32-512, output 16-256), 30% documents (512-2048, 64-512), 10% long (2048-3584, "
      "128-512); max_model_len 4096, block_size 16; waste = 1 - tokens / reserved token slots, "
      "averaged over steps";
  const std::string prefix_desc =
      "8 system prompts of 512 tokens (weights 32:16:8:4:2:1:1:1), unique 32-256-token question, "
      "64 decoded tokens, 16 in flight, 2048-block pool; hit rate = cached prompt tokens / "
      "prompt tokens";
  if (opt.json) {
    nlohmann::json j;
    j["bench"] = "caches";
    j["quick"] = opt.quick;
    j["alloc_free_per_s"] = pool_rate;
    j["alloc_free_per_s_spread"] = to_json(pool_s);
    j["baseline_std_list_alloc_free_per_s"] = list_rate;
    j["baseline_std_list_alloc_free_per_s_spread"] = to_json(list_s);
    j["alloc_free_speedup_vs_std_list"] = pool_rate / list_rate;
    j["alloc_free_speedup_per_round"] = to_json(ratio_s);
    // Both sides end with every block they handed out back on their free list.
    j["pool_consistent"] = pool_ok;
    j["baseline_consistent"] = list_ok;
    j["paged_waste_pct"] = w.paged_waste_pct;
    j["contiguous_waste_pct"] = w.contiguous_waste_pct;
    j["waste_workload"] = {{"description", waste_desc},
                           {"requests", w.requests},
                           {"steps", w.steps},
                           {"mean_tokens_in_flight", w.tokens / w.steps},
                           {"failed_allocations", w.failed_allocations}};
    j["prefix_hit_rate"] = p.hit_rate;
    j["prefix_ideal_hit_rate"] = p.ideal_hit_rate;
    j["prefix_workload"] = {
        {"description", prefix_desc}, {"requests", p.requests}, {"evictions", p.evictions}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("tessera bench caches%s\n\n", opt.quick ? " (quick)" : "");
  std::printf("%-44s %16s\n", "metric", "value");
  std::printf("%-44s %16.3e  [p10 %.3e, p90 %.3e]\n", "alloc_free_per_s (BlockPool, 1 thread)",
              pool_rate, pool_s.p10, pool_s.p90);
  std::printf("%-44s %16.3e  [p10 %.3e, p90 %.3e]\n", "baseline: std::list free list", list_rate,
              list_s.p10, list_s.p90);
  std::printf("%-44s %15.2fx  [per round p10 %.2f, p90 %.2f]\n", "speedup vs baseline",
              pool_rate / list_rate, ratio_s.p10, ratio_s.p90);
  std::printf("%-44s %16.2f\n", "paged_waste_pct", w.paged_waste_pct);
  std::printf("%-44s %16.2f\n", "contiguous_waste_pct (max-length buffers)",
              w.contiguous_waste_pct);
  std::printf("%-44s %16.3f\n", "prefix_hit_rate", p.hit_rate);
  std::printf("%-44s %16.3f\n", "prefix_ideal_hit_rate", p.ideal_hit_rate);
  std::printf(
      "\nwaste workload: %s (%lld requests, %lld steps, %.0f tokens in flight on "
      "average)\nprefix workload: %s (%lld requests, %lld evictions)\n",
      waste_desc.c_str(), static_cast<long long>(w.requests), static_cast<long long>(w.steps),
      w.tokens / w.steps, prefix_desc.c_str(), static_cast<long long>(p.requests),
      static_cast<long long>(p.evictions));
  // The start-up plan table, for a hybrid model: 24 layers, one full-attention layer in six,
  // the others a 1024-token sliding window, on an 8 GiB budget.
  std::vector<caches::SpecPtr> layers;
  const caches::AttentionShape shape{16, 8, 128, 128, DType::kBF16};
  for (int l = 0; l < 24; ++l) {
    if (l % 6 == 5) {
      layers.push_back(std::make_shared<caches::FullAttentionSpec>(shape));
    } else {
      layers.push_back(std::make_shared<caches::SlidingWindowSpec>(shape, 1024));
    }
  }
  const auto plan = caches::plan_memory(layers, {32768, 2048, 64, 0}, 8LL << 30);
  std::printf("\nexample start-up plan (24-layer hybrid, 8 GiB):\n%s", plan.table().c_str());
  return 0;
}

}  // namespace

Benchmark caches_benchmark() {
  return {"caches", "KV cache: block alloc/free rate, paged vs contiguous waste, prefix hit rate",
          run_caches};
}

}  // namespace tessera::bench
