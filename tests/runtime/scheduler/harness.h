// A scheduler, its KV cache manager and a FakeRunner wired together, for the scheduler tests: each
// step() schedules, checks the cache invariants and the plan's limits, runs the plan, checks that
// the runner's block tables (rebuilt from deltas) equal the scheduler's, and updates.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "caches/kv_cache_manager.h"
#include "runtime/scheduler/scheduler.h"
#include "tests/runtime/scheduler/fake_runner.h"

namespace tessera::scheduler::testing {

inline caches::SpecPtr full_spec(int64_t bs) {
  return std::make_shared<caches::FullAttentionSpec>(
      caches::AttentionShape{bs, 1, 8, 8, DType::kF16});
}
inline caches::SpecPtr sliding_spec(int64_t window, int64_t bs) {
  return std::make_shared<caches::SlidingWindowSpec>(
      caches::AttentionShape{bs, 1, 8, 8, DType::kF16}, window);
}
inline caches::SpecPtr chunked_spec(int64_t chunk, int64_t bs) {
  return std::make_shared<caches::ChunkedLocalAttentionSpec>(
      caches::AttentionShape{bs, 1, 8, 8, DType::kF16}, chunk);
}

inline caches::KVCacheManagerConfig kv_config(std::vector<caches::SpecPtr> specs,
                                              int32_t num_blocks, bool prefix_caching = true) {
  caches::KVCacheManagerConfig c;
  for (auto& s : specs) c.groups.push_back({s, {static_cast<int64_t>(c.groups.size())}});
  c.num_blocks = num_blocks;
  c.enable_prefix_caching = prefix_caching;
  return c;
}

inline std::vector<int32_t> token_range(int64_t n, int32_t first = 1000) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

inline Request make_request(std::string id, std::vector<int32_t> prompt, int64_t max_tokens,
                            int32_t priority = 0) {
  Request r;
  r.id = std::move(id);
  r.prompt_ids = std::move(prompt);
  r.params.max_tokens = max_tokens;
  r.priority = priority;
  return r;
}

struct Harness {
  Harness(caches::KVCacheManagerConfig kv_cfg, SchedulerConfig cfg, int32_t vocab = 50000)
      : kv(std::move(kv_cfg)), s(cfg, kv), runner(kv, cfg.max_num_seqs, vocab), vocab(vocab) {}

  AddResult add(Request r) { return s.add_request(std::move(r)); }

  // One engine step; returns the plan. Outputs accumulate in `outputs` / `tokens` / `finished`.
  StepPlan step() {
    StepPlan plan = s.schedule();
    kv.check_invariants();
    EXPECT_LE(plan.num_tokens(), s.config().max_num_batched_tokens);
    EXPECT_LE(plan.num_rows(), s.config().max_num_seqs);
    SampledTokens sampled = runner.execute(plan);
    check_tables(plan);
    last_outputs = s.update(plan, sampled);
    kv.check_invariants();
    for (const RequestOutput& o : last_outputs) {
      auto& t = tokens[o.id];
      if (o.has_new_token()) t.push_back(o.new_token_id);
      if (o.finished) {
        EXPECT_EQ(finished.count(o.id), 0u) << o.id << " finished twice";
        finished[o.id] = o;
      }
    }
    return plan;
  }
  // Steps until nothing is left (at most max_steps).
  int64_t run(int64_t max_steps = 100000) {
    int64_t n = 0;
    while (s.has_unfinished() && n < max_steps) {
      step();
      ++n;
    }
    EXPECT_FALSE(s.has_unfinished()) << "still unfinished after " << max_steps << " steps";
    return n;
  }
  // The runner's tables of the plan's rows, rebuilt from deltas, equal the scheduler's.
  void check_tables(const StepPlan& plan) {
    for (const ScheduledSeq& row : plan.seqs) {
      const int32_t slot = row.slot;
      const Request* r = s.running_at(slot);
      if (!r || r->seq != row.seq) continue;  // aborted between schedule and update
      for (int32_t g = 0; g < kv.num_groups(); ++g) {
        auto t = s.block_table(*r, g);
        EXPECT_EQ(runner.table(slot, g), std::vector<int32_t>(t.begin(), t.end()))
            << "slot " << slot << " group " << g << " of " << r->id;
      }
    }
  }

  caches::KVCacheManager kv;
  Scheduler s;
  FakeRunner runner;
  int32_t vocab;
  std::vector<RequestOutput> last_outputs;
  std::map<std::string, std::vector<int32_t>> tokens;
  std::map<std::string, RequestOutput> finished;
};

}  // namespace tessera::scheduler::testing
