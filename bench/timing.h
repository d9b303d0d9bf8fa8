// Interleaved timing for benchmarks that compare formulations of one result: every round runs each
// candidate once, in turn, so drift on a shared machine (other jobs, clock changes) falls on all of
// them alike; each candidate reports the median and the 10th / 90th percentiles of its rounds'
// wall time, and the median of the process CPU time per call (all threads): on a machine shared
// with other jobs the CPU time of a one-thread run is the steadier measure of the work done.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <time.h>

namespace tessera::bench {

struct Spread {
  double median_ms = 0, p10_ms = 0, p90_ms = 0;
  double cpu_median_ms = 0;  // process CPU time per call, all threads
  int rounds = 0;
  nlohmann::json to_json() const {
    return {{"median_ms", median_ms},
            {"p10_ms", p10_ms},
            {"p90_ms", p90_ms},
            {"rounds", rounds},
            {"cpu_median_ms", cpu_median_ms}};
  }
};

inline double process_cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

inline Spread spread_of(std::vector<double> ms) {
  Spread s;
  if (ms.empty()) return s;
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) {
    return ms[static_cast<size_t>(q * static_cast<double>(ms.size() - 1) + 0.5)];
  };
  s.median_ms = at(0.5);
  s.p10_ms = at(0.1);
  s.p90_ms = at(0.9);
  s.rounds = static_cast<int>(ms.size());
  return s;
}

// Runs every candidate once as a warm-up, then rounds of all candidates in turn: at least
// min_rounds, and more until budget_ms of total time is spent (at most max_rounds). Each round may
// repeat a short candidate `inner` times and report the mean, so timer resolution stays small.
inline std::vector<Spread> time_interleaved(const std::vector<std::function<void()>>& candidates,
                                            int min_rounds, double budget_ms, int max_rounds = 200,
                                            int inner = 1) {
  using clock = std::chrono::steady_clock;
  for (const auto& fn : candidates) fn();
  std::vector<std::vector<double>> samples(candidates.size()), cpu(candidates.size());
  double spent = 0;
  for (int round = 0; round < max_rounds && (round < min_rounds || spent < budget_ms); ++round) {
    for (size_t c = 0; c < candidates.size(); ++c) {
      const double cpu0 = process_cpu_ms();
      const auto start = clock::now();
      for (int i = 0; i < inner; ++i) candidates[c]();
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - start).count();
      cpu[c].push_back((process_cpu_ms() - cpu0) / inner);
      samples[c].push_back(ms / inner);
      spent += ms;
    }
  }
  std::vector<Spread> out;
  for (size_t c = 0; c < samples.size(); ++c) {
    out.push_back(spread_of(std::move(samples[c])));
    out.back().cpu_median_ms = spread_of(std::move(cpu[c])).median_ms;
  }
  return out;
}

}  // namespace tessera::bench
