// The scheduler's step time without a model (`tessera bench scheduler`; `tessera bench engine`
// reuses measure_scheduler_step). Torch-free.
#pragma once

#include <cstdint>
#include <string>

namespace tessera::bench {

struct SchedulerStepOptions {
  int64_t num_requests = 1024;  // running at once, all decoding
  int64_t steps = 2000;         // measured steps (after warm-up)
  // false: every request decodes every measured step (the steady state of key
  // scheduler_step_us_1024). true: requests finish after 64-256 tokens and are replaced by new
  // ones sharing a 256-token system prompt, so steps also admit, prefill in chunks and free.
  bool churn = false;
  uint32_t seed = 1;
};

struct SchedulerStepResult {
  int64_t num_requests = 0, steps = 0;
  // schedule() + update() of one step, microseconds, over the measured steps.
  double median_us = 0, p10_us = 0, p90_us = 0, min_us = 0, max_us = 0;
  double schedule_median_us = 0, update_median_us = 0;
  double encode_median_us = 0;  // StepPlan::encode() (the broadcast's serialisation)
  double plan_bytes = 0;        // median encoded size
  double mean_rows = 0, mean_tokens = 0;
  int64_t admitted = 0, finished = 0, preemptions = 0;
  // Baseline, same process, interleaved rounds: the bare KV bookkeeping a step must do at least,
  // KVCacheManager::append() (allocate + append_token + commit) for each of the num_requests
  // sequences, no scheduler. Median over rounds, microseconds per step.
  double baseline_append_median_us = 0;
  std::string description;
};

SchedulerStepResult measure_scheduler_step(const SchedulerStepOptions& options);

}  // namespace tessera::bench
