// `tessera bench scheduler`: the scheduler's step time (schedule() + update()) with 1,024 running
// requests and no model, against the bare KV-cache bookkeeping of the same step as a baseline
// measured in the same process, in interleaved rounds. Key: scheduler_step_us_1024 (median).
#include "bench/scheduler_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "bench/bench.h"
#include "caches/kv_cache_manager.h"
#include "runtime/scheduler/scheduler.h"

namespace tessera::bench {
namespace {

using Clock = std::chrono::steady_clock;

double us_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double at = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(at);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (at - static_cast<double>(lo));
}

constexpr int64_t kBlockSize = 16;
constexpr int64_t kMaxModelLen = 4096;
constexpr int32_t kVocab = 32000;

caches::KVCacheManagerConfig kv_config(int64_t num_requests) {
  caches::KVCacheManagerConfig c;
  c.groups.push_back({std::make_shared<caches::FullAttentionSpec>(
                          caches::AttentionShape{kBlockSize, 8, 128, 128, DType::kBF16}),
                      {0}});
  // Room for every request at max_model_len: the measured steps never preempt.
  c.num_blocks = static_cast<int32_t>(num_requests * caches::cdiv(kMaxModelLen, kBlockSize) + 1);
  c.enable_prefix_caching = true;
  return c;
}

// Baseline: what one decode step costs the KV cache alone — append() of one token to each of n
// sequences (allocate a block when one fills, append the token, commit, hash full blocks).
class AppendBaseline {
 public:
  AppendBaseline(int64_t n, std::mt19937& rng) : kv_(kv_config(n)) {
    for (int64_t s = 0; s < n; ++s) {
      std::vector<int32_t> prompt(64 + rng() % 449);
      for (auto& t : prompt) t = static_cast<int32_t>(rng() % kVocab);
      kv_.add_sequence(s, prompt);
      kv_.allocate(s, static_cast<int64_t>(prompt.size()));
      kv_.commit(s, static_cast<int64_t>(prompt.size()));
      seqs_.push_back(s);
    }
  }
  double step_us() {
    const auto t0 = Clock::now();
    for (caches::SeqId s : seqs_) {
      if (!kv_.append(s, static_cast<int32_t>((s * 31 + step_) % kVocab))) std::abort();
    }
    const auto t1 = Clock::now();
    ++step_;
    return us_between(t0, t1);
  }

 private:
  caches::KVCacheManager kv_;
  std::vector<caches::SeqId> seqs_;
  int64_t step_ = 0;
};

}  // namespace

SchedulerStepResult measure_scheduler_step(const SchedulerStepOptions& o) {
  std::mt19937 rng(o.seed);
  caches::KVCacheManager kv(kv_config(o.num_requests));
  scheduler::SchedulerConfig sc;
  sc.max_num_seqs = o.num_requests;
  sc.max_num_batched_tokens = 8192;
  sc.max_model_len = kMaxModelLen;
  scheduler::Scheduler s(sc, kv);

  std::vector<int32_t> system_prompt(256);
  for (auto& t : system_prompt) t = static_cast<int32_t>(rng() % kVocab);
  int64_t next_id = 0;
  auto add = [&]() {
    scheduler::Request r;
    r.id = "req-" + std::to_string(next_id++);
    if (o.churn) {
      r.prompt_ids = system_prompt;
      for (int64_t n = 32 + rng() % 225; n > 0; --n) {
        r.prompt_ids.push_back(static_cast<int32_t>(rng() % kVocab));
      }
      r.params.max_tokens = 64 + rng() % 193;
    } else {
      r.prompt_ids.resize(64 + rng() % 449);
      for (auto& t : r.prompt_ids) t = static_cast<int32_t>(rng() % kVocab);
      r.params.max_tokens = kMaxModelLen;
    }
    r.params.ignore_eos = true;
    auto res = s.add_request(std::move(r));
    if (!res) std::abort();
  };
  for (int64_t i = 0; i < o.num_requests; ++i) add();

  SchedulerStepResult res;
  res.num_requests = o.num_requests;
  auto sample = [&](const scheduler::StepPlan& plan) {
    scheduler::SampledTokens st;
    st.step = plan.step;
    st.token_ids.reserve(plan.num_sampled);
    for (const auto& row : plan.seqs) {
      if (row.sample)
        st.token_ids.push_back(static_cast<int32_t>((row.seq * 31 + plan.step) % kVocab));
    }
    return st;
  };
  // Warm-up: prefill everything, then a few decode steps.
  for (int64_t warm = 0, decoding = 0; decoding < 20; ++warm) {
    const scheduler::StepPlan& plan = s.schedule();
    const bool all_decode =
        plan.num_rows() == o.num_requests && plan.num_tokens() == o.num_requests;
    for (const auto& out : s.update(plan, sample(plan))) {
      if (out.finished && o.churn) add();
    }
    if (all_decode || (o.churn && warm > 200)) ++decoding;
  }

  AppendBaseline baseline(o.num_requests, rng);
  std::vector<double> step_us, sched_us, update_us, encode_us, bytes, base_us;
  double rows = 0, tokens = 0;
  const scheduler::SchedulerStats before = s.stats();
  int64_t admitted = 0;
  constexpr int64_t kRound = 50;
  for (int64_t i = 0; i < o.steps; ++i) {
    if (i % kRound == 0) {
      for (int k = 0; k < 5; ++k) base_us.push_back(baseline.step_us());
    }
    const auto t0 = Clock::now();
    const scheduler::StepPlan& plan = s.schedule();
    const auto t1 = Clock::now();
    scheduler::SampledTokens st = sample(plan);
    const auto t2 = Clock::now();
    const std::vector<scheduler::RequestOutput>& outs = s.update(plan, st);
    const auto t3 = Clock::now();
    const std::vector<uint8_t> encoded = plan.encode();
    const auto t4 = Clock::now();
    sched_us.push_back(us_between(t0, t1));
    update_us.push_back(us_between(t2, t3));
    step_us.push_back(us_between(t0, t1) + us_between(t2, t3));
    encode_us.push_back(us_between(t3, t4));
    bytes.push_back(static_cast<double>(encoded.size()));
    rows += static_cast<double>(plan.num_rows());
    tokens += static_cast<double>(plan.num_tokens());
    for (const auto& row : plan.seqs) admitted += row.is_new ? 1 : 0;
    for (const auto& out : outs) {
      if (out.finished) {
        ++res.finished;
        if (o.churn) add();
      }
    }
  }
  res.steps = o.steps;
  res.median_us = percentile(step_us, 0.5);
  res.p10_us = percentile(step_us, 0.1);
  res.p90_us = percentile(step_us, 0.9);
  res.min_us = percentile(step_us, 0.0);
  res.max_us = percentile(step_us, 1.0);
  res.schedule_median_us = percentile(sched_us, 0.5);
  res.update_median_us = percentile(update_us, 0.5);
  res.encode_median_us = percentile(encode_us, 0.5);
  res.plan_bytes = percentile(bytes, 0.5);
  res.mean_rows = rows / static_cast<double>(o.steps);
  res.mean_tokens = tokens / static_cast<double>(o.steps);
  res.admitted = admitted;
  res.preemptions = s.stats().preemptions - before.preemptions;
  res.baseline_append_median_us = percentile(base_us, 0.5);
  res.description =
      o.churn ? "1024 slots; requests = 256-token shared system prompt + 32-256 own tokens, "
                "64-256 output tokens, replaced when finished (admissions, prefix hits, chunked "
                "prefill in the measured steps); budget 8192 tokens; full attention, block 16"
              : "1024 requests decoding every step (prompts 64-512 random tokens, no stop); "
                "budget 8192 tokens; full attention, block 16, prefix caching on";
  return res;
}

namespace {

int run_scheduler(const BenchOptions& opt) {
  if (opt.rank != 0) return 0;
  SchedulerStepOptions o;
  o.steps = opt.quick ? 300 : 3000;
  const SchedulerStepResult d = measure_scheduler_step(o);
  o.churn = true;
  const SchedulerStepResult c = measure_scheduler_step(o);
  auto to_json = [](const SchedulerStepResult& r) {
    return nlohmann::json{{"requests", r.num_requests},
                          {"steps", r.steps},
                          {"median_us", r.median_us},
                          {"p10_us", r.p10_us},
                          {"p90_us", r.p90_us},
                          {"min_us", r.min_us},
                          {"max_us", r.max_us},
                          {"schedule_median_us", r.schedule_median_us},
                          {"update_median_us", r.update_median_us},
                          {"encode_median_us", r.encode_median_us},
                          {"plan_bytes_median", r.plan_bytes},
                          {"mean_rows", r.mean_rows},
                          {"mean_tokens", r.mean_tokens},
                          {"admitted", r.admitted},
                          {"finished", r.finished},
                          {"preemptions", r.preemptions},
                          {"baseline_kv_append_median_us", r.baseline_append_median_us},
                          {"ratio_vs_baseline", r.median_us / r.baseline_append_median_us},
                          {"description", r.description}};
  };
  if (opt.json) {
    nlohmann::json j;
    j["bench"] = "scheduler";
    j["quick"] = opt.quick;
    j["scheduler_step_us_1024"] = d.median_us;
    j["scheduler_step_us_1024_churn"] = c.median_us;
    j["goal_us"] = 50;
    j["decode"] = to_json(d);
    j["churn"] = to_json(c);
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("tessera bench scheduler%s: schedule() + update() per step, microseconds\n\n",
              opt.quick ? " (quick)" : "");
  std::printf("%-10s %6s %8s %8s %8s %8s %10s %10s %10s %10s %8s\n", "workload", "steps", "median",
              "p10", "p90", "max", "schedule", "update", "encode", "baseline", "ratio");
  for (const auto* r : {&d, &c}) {
    std::printf("%-10s %6lld %8.1f %8.1f %8.1f %8.1f %10.1f %10.1f %10.1f %10.1f %7.2fx\n",
                r == &d ? "decode" : "churn", static_cast<long long>(r->steps), r->median_us,
                r->p10_us, r->p90_us, r->max_us, r->schedule_median_us, r->update_median_us,
                r->encode_median_us, r->baseline_append_median_us,
                r->median_us / r->baseline_append_median_us);
  }
  std::printf(
      "\nscheduler_step_us_1024 = %.1f (goal <= 50)\nbaseline: KVCacheManager::append() of one "
      "token to each of the 1024 sequences, no scheduler, interleaved rounds\ndecode: %s\nchurn: "
      "%s (%lld admitted, %lld finished, %.0f rows and %.0f tokens per step)\n",
      d.median_us, d.description.c_str(), c.description.c_str(), static_cast<long long>(c.admitted),
      static_cast<long long>(c.finished), c.mean_rows, c.mean_tokens);
  return 0;
}

}  // namespace

Benchmark scheduler_benchmark() {
  return {"scheduler", "Scheduler step time with 1,024 running requests (no model)", run_scheduler};
}

}  // namespace tessera::bench
