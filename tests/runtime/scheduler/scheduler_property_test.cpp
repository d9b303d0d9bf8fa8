// Property test of the scheduler: well over 100,000 random steps over several cache layouts (full
// attention with block sizes 1 and 4, a hybrid of full + sliding window + local chunks, chunked
// prefill off, prefix caching off), with random arrivals, prompt lengths, shared prefixes, LoRA
// names, cache salts, priorities, aborts (also between schedule() and update()), refused requests,
// and pools so small that preemption is frequent. The FakeRunner computes every step through the
// plans' block tables, so wrong tables, positions or prefix hits change the tokens.
// Checked: every accepted request finishes exactly once (refused ones never); the token budget,
// max_num_seqs and the long-prefill threshold always hold; the KV manager's invariants hold after
// every schedule() and update(); after the last request every block is back in the pool; every
// request that was not aborted produced exactly the tokens of reference_generate() (no cache) and
// of a run with a pool large enough never to preempt; aborted ones a prefix of them; and
// preemptions, prefix hits, aborts and refusals all happened many times.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <set>

#include "runtime/scheduler/scheduler.h"
#include "tests/runtime/scheduler/harness.h"

namespace tessera::scheduler::testing {
namespace {

constexpr int32_t kVocab = 64;  // small, so eos (id 0) and stop ids occur

struct Layout {
  std::string name;
  std::vector<caches::SpecPtr> specs;
  int32_t num_blocks;  // tiny: preemption is frequent
  bool prefix_caching;
  SchedulerConfig sched;
  int64_t steps;
};

std::vector<Layout> layouts() {
  auto cfg = [](int64_t budget, int64_t seqs, int64_t len, int64_t threshold, bool chunked) {
    SchedulerConfig c;
    c.max_num_batched_tokens = budget;
    c.max_num_seqs = seqs;
    c.max_model_len = len;
    c.long_prefill_token_threshold = threshold;
    c.enable_chunked_prefill = chunked;
    c.eos_token_ids = {0};
    return c;
  };
  return {
      {"full_bs4", {full_spec(4)}, 17, true, cfg(16, 6, 48, 0, true), 26000},
      {"full_bs1_threshold", {full_spec(1)}, 41, true, cfg(12, 4, 32, 5, true), 22000},
      {"hybrid_sliding_chunked",
       {full_spec(2), sliding_spec(5, 2), chunked_spec(8, 2)},
       46,
       true,
       cfg(10, 5, 40, 0, true),
       22000},
      {"no_chunked_prefill", {full_spec(3)}, 15, true, cfg(30, 8, 30, 0, false), 16000},
      {"no_prefix_cache", {full_spec(4)}, 13, false, cfg(9, 3, 40, 4, true), 16000},
  };
}

struct Totals {
  int64_t steps = 0, accepted = 0, refused = 0, aborted = 0, preemptions = 0, hit_tokens = 0;
  int64_t preempted_then_finished = 0;
};

class Workload {
 public:
  Workload(const SchedulerConfig& c, uint32_t seed) : c_(c), rng_(seed) {
    for (int i = 0; i < 4; ++i) {
      std::vector<int32_t> p(static_cast<size_t>(c.max_model_len));
      for (auto& t : p) t = static_cast<int32_t>(rng_() % kVocab);
      prefixes_.push_back(p);
    }
  }
  int64_t uniform(int64_t lo, int64_t hi) {  // [lo, hi]
    return lo + static_cast<int64_t>(rng_() % static_cast<uint64_t>(hi - lo + 1));
  }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

  Request make(int64_t n, double now) {
    Request r;
    r.id = "r" + std::to_string(n);
    const int64_t len = chance(0.7) ? uniform(1, c_.max_model_len / 3)
                                    : uniform(1, c_.max_model_len + (chance(0.1) ? 4 : 0));
    if (chance(0.5)) {  // shared prefix + own suffix
      const auto& pre = prefixes_[uniform(0, 3)];
      const int64_t shared = uniform(0, len);
      r.prompt_ids.assign(pre.begin(), pre.begin() + std::min<int64_t>(shared, pre.size()));
    }
    while (static_cast<int64_t>(r.prompt_ids.size()) < len) {
      r.prompt_ids.push_back(static_cast<int32_t>(rng_() % kVocab));
    }
    if (chance(0.2)) r.lora = "adapter";
    if (chance(0.1)) r.cache_salt = "tenant";
    r.priority = static_cast<int32_t>(uniform(0, 2));
    r.arrival_time = now + static_cast<double>(uniform(0, 3));
    r.params.max_tokens = uniform(1, 24);
    r.params.min_tokens = uniform(0, std::min<int64_t>(3, r.params.max_tokens));
    r.params.ignore_eos = chance(0.1);
    if (chance(0.1)) r.params.stop_token_ids = {static_cast<int32_t>(uniform(0, kVocab - 1))};
    if (chance(0.01)) r.params.max_tokens = 0;  // refused
    return r;
  }

 private:
  SchedulerConfig c_;
  std::mt19937_64 rng_;
  std::vector<std::vector<int32_t>> prefixes_;
};

void run_layout(const Layout& L, uint32_t seed, Totals& totals) {
  SCOPED_TRACE(L.name);
  Harness h(kv_config(L.specs, L.num_blocks, L.prefix_caching), L.sched, kVocab);
  Workload w(L.sched, seed);
  std::map<std::string, Request> accepted;
  std::set<std::string> live, preempted_ids;
  int64_t n = 0, step = 0;
  auto check_plan = [&](const StepPlan& p) {
    std::set<int32_t> slots;
    for (const auto& row : p.seqs) {
      EXPECT_TRUE(slots.insert(row.slot).second) << "slot " << row.slot << " twice";
      EXPECT_LT(row.slot, L.sched.max_num_seqs);
      if (L.sched.long_prefill_token_threshold > 0) {
        EXPECT_LE(row.num_tokens, L.sched.long_prefill_token_threshold);
      }
    }
    for (const auto& rel : p.released) {
      if (rel.preempted) preempted_ids.insert(rel.request_id);
    }
  };
  auto abort_random = [&]() {
    if (live.empty()) return;
    auto it = live.begin();
    std::advance(it, w.uniform(0, static_cast<int64_t>(live.size()) - 1));
    EXPECT_TRUE(h.s.abort(*it));
    ++totals.aborted;
    live.erase(it);
  };
  auto collect = [&]() {
    for (const auto& o : h.last_outputs) {
      if (o.finished) live.erase(o.id);
    }
  };
  for (; step < L.steps || h.s.has_unfinished(); ++step) {
    ASSERT_LT(step, L.steps + 20000) << "did not drain";
    if (step < L.steps && h.s.num_waiting() < 6 && w.chance(0.3)) {
      for (int64_t k = w.uniform(1, 2); k > 0; --k) {
        Request r = w.make(n++, static_cast<double>(step));
        const bool valid =
            r.num_prompt_tokens() <= L.sched.max_model_len && r.params.max_tokens > 0;
        AddResult a = h.add(r);
        EXPECT_EQ(a.ok, valid) << a.error;
        if (a.ok) {
          accepted[r.id] = r;
          live.insert(r.id);
        } else {
          ++totals.refused;
          EXPECT_FALSE(a.error.empty());
        }
      }
    }
    if (step < L.steps && w.chance(0.02)) abort_random();
    if (w.chance(0.01)) {
      // Abort between schedule() and update().
      StepPlan plan = h.s.schedule();
      h.kv.check_invariants();
      check_plan(plan);
      EXPECT_LE(plan.num_tokens(), L.sched.max_num_batched_tokens);
      SampledTokens t = h.runner.execute(plan);
      h.check_tables(plan);
      abort_random();
      h.kv.check_invariants();
      h.last_outputs = h.s.update(plan, t);
      h.kv.check_invariants();
      for (const auto& o : h.last_outputs) {
        auto& tok = h.tokens[o.id];
        if (o.has_new_token()) tok.push_back(o.new_token_id);
        if (o.finished) {
          EXPECT_EQ(h.finished.count(o.id), 0u) << o.id << " finished twice";
          h.finished[o.id] = o;
        }
      }
    } else {
      check_plan(h.step());
    }
    collect();
    if (::testing::Test::HasFatalFailure() || ::testing::Test::HasFailure()) {
      FAIL() << "stopped at step " << step;
    }
  }
  totals.steps += step;
  totals.accepted += static_cast<int64_t>(accepted.size());
  const SchedulerStats st = h.s.stats();
  totals.preemptions += st.preemptions;
  totals.hit_tokens += st.prefix_hit_tokens;

  // Every accepted request finished exactly once; nothing else did.
  EXPECT_EQ(h.finished.size(), accepted.size());
  for (const auto& [id, o] : h.finished) EXPECT_TRUE(accepted.count(id)) << id;
  EXPECT_EQ(h.kv.num_used_blocks(), 0);
  EXPECT_EQ(h.kv.num_sequences(), 0);
  EXPECT_EQ(h.kv.pool().num_free(), L.num_blocks - 1);
  EXPECT_EQ(st.running + st.waiting, 0);

  // Tokens: the cache-free reference, for the finished ones exactly, for aborted ones a prefix.
  std::vector<Request> completed;
  for (const auto& [id, r] : accepted) {
    const RequestOutput& o = h.finished.at(id);
    const Reference ref = reference_generate(r, L.sched, kVocab);
    const auto& got = h.tokens[id];
    if (o.finish_reason == FinishReason::kAbort) {
      ASSERT_LE(got.size(), ref.tokens.size()) << id;
      EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.tokens.begin())) << id;
      continue;
    }
    EXPECT_EQ(got, ref.tokens) << id;
    EXPECT_EQ(o.finish_reason, ref.reason) << id;
    completed.push_back(r);
    if (preempted_ids.count(id)) ++totals.preempted_then_finished;
  }

  // The same requests with a pool that never runs out: no preemption, the same tokens.
  // 16 sequences of max_model_len (the largest spec's blocks per token, +1 per group) always fit.
  SchedulerConfig big_sched = L.sched;
  big_sched.max_num_seqs = 16;
  const auto per_seq = static_cast<int32_t>(
      L.specs.size() * (caches::cdiv(L.sched.max_model_len, L.specs[0]->block_size()) + 1));
  caches::KVCacheManagerConfig big = kv_config(L.specs, 16 * per_seq + 1, L.prefix_caching);
  Harness b(big, big_sched, kVocab);
  std::vector<Request> pending(completed.rbegin(), completed.rend());
  while (!pending.empty() || b.s.has_unfinished()) {
    for (int k = 0; k < 4 && !pending.empty(); ++k) {
      ASSERT_TRUE(b.add(pending.back()));
      pending.pop_back();
    }
    b.step();
  }
  EXPECT_EQ(b.s.stats().preemptions, 0);
  for (const Request& r : completed) EXPECT_EQ(b.tokens[r.id], h.tokens[r.id]) << r.id;
}

TEST(SchedulerProperty, HundredThousandRandomSteps) {
  const auto t0 = std::chrono::steady_clock::now();
  Totals totals;
  uint32_t seed = 20261129;
  for (const Layout& L : layouts()) {
    Totals t;
    run_layout(L, seed++, t);
    if (HasFailure()) return;
    std::printf(
        "%-24s steps %6lld  requests %5lld  refused %4lld  aborted %4lld  preemptions %5lld  "
        "prefix-hit tokens %6lld  preempted-then-finished %4lld\n",
        L.name.c_str(), static_cast<long long>(t.steps), static_cast<long long>(t.accepted),
        static_cast<long long>(t.refused), static_cast<long long>(t.aborted),
        static_cast<long long>(t.preemptions), static_cast<long long>(t.hit_tokens),
        static_cast<long long>(t.preempted_then_finished));
    EXPECT_GT(t.preemptions, 50) << L.name;
    EXPECT_GT(t.aborted, 50) << L.name;
    EXPECT_GT(t.preempted_then_finished, 20) << L.name;
    if (L.prefix_caching) EXPECT_GT(t.hit_tokens, 1000) << L.name;
    totals.steps += t.steps;
    totals.refused += t.refused;
  }
  EXPECT_GE(totals.steps, 100000);
  EXPECT_GT(totals.refused, 50);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("total steps %lld in %.1f s\n", static_cast<long long>(totals.steps), s);
}

}  // namespace
}  // namespace tessera::scheduler::testing
