// Timing shared by the benchmarks: candidates (ours and each baseline) are timed in interleaved
// rounds (A B C, C B A, A B C, ...; or a seeded random permutation per round, see
// RoundsOptions::order_seed) so that a machine whose speed drifts (a shared one: other jobs, clock
// changes) slows every candidate alike, and each is reported as the median and the spread
// (p10, p90, min, max) of its rounds, never the best run alone. time_interleaved() also keeps the
// median process CPU time per call (all threads): on a machine shared with other jobs the CPU time
// of a one-thread run is the steadier measure of the work done. Header-only and torch-free (the
// paged bench links no torch).
#pragma once

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

namespace tessera::bench {

// Median and spread of a set of samples (times, rates or ratios: the unit is the caller's).
struct Spread {
  double median = 0, p10 = 0, p90 = 0, min = 0, max = 0;
  int samples = 0;
};

// Quantile q in [0, 1] of sorted values, linear between neighbours.
inline double quantile_sorted(const std::vector<double>& v, double q) {
  if (v.empty()) return 0.0;
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

inline Spread spread_of(std::vector<double> v) {
  Spread s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.median = quantile_sorted(v, 0.5);
  s.p10 = quantile_sorted(v, 0.1);
  s.p90 = quantile_sorted(v, 0.9);
  s.min = v.front();
  s.max = v.back();
  s.samples = static_cast<int>(v.size());
  return s;
}

inline double median_of(std::vector<double> v) { return spread_of(std::move(v)).median; }

inline nlohmann::json to_json(const Spread& s) {
  return {{"median", s.median}, {"p10", s.p10}, {"p90", s.p90},
          {"min", s.min},       {"max", s.max}, {"samples", s.samples}};
}

// Element-wise num[i] / den[i]: the per-round ratios of two candidates timed side by side.
inline std::vector<double> per_round_ratios(const std::vector<double>& num,
                                            const std::vector<double>& den) {
  std::vector<double> r;
  for (size_t i = 0; i < std::min(num.size(), den.size()); ++i) {
    if (den[i] > 0) r.push_back(num[i] / den[i]);
  }
  return r;
}

inline double elapsed_ms(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

inline double process_cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

struct RoundsOptions {
  int min_rounds = 5;        // every candidate gets at least this many samples
  int max_rounds = 200;      // and at most this many
  double budget_ms = 500.0;  // more rounds while the timed total stays under this
  int inner = 1;  // calls per sample (the sample is their mean), for calls near timer resolution
  // Without a seed, even rounds run the candidates in order and odd rounds in reverse: each always
  // has the same neighbours, so one whose call leaves the allocator or the caches in a costly state
  // (large tensors freed) slows the same candidate in every round. With a seed, each round runs a
  // fresh random permutation of all candidates (std::mt19937_64 with this seed, Fisher-Yates with
  // the generator's raw output, so the orders are the same on every standard library): every
  // candidate follows every other about equally often.
  std::optional<uint64_t> order_seed;
};

// Order of the candidates in each round of interleaved_rounds(): see RoundsOptions::order_seed.
class RoundOrder {
 public:
  RoundOrder(size_t n, std::optional<uint64_t> seed)
      : order_(n), rng_(seed.value_or(0)), random_(seed.has_value()) {}
  const std::vector<size_t>& next(int round) {
    const size_t n = order_.size();
    std::iota(order_.begin(), order_.end(), size_t{0});
    if (random_) {
      for (size_t i = n; i > 1; --i) std::swap(order_[i - 1], order_[rng_() % i]);
    } else if (round % 2 == 1) {
      std::reverse(order_.begin(), order_.end());
    }
    return order_;
  }

 private:
  std::vector<size_t> order_;
  std::mt19937_64 rng_;
  bool random_;
};

// Per-round samples of every candidate: wall_ms[c][round] and cpu_ms[c][round] (per call).
struct RoundSamples {
  std::vector<std::vector<double>> wall_ms, cpu_ms;
};

// Times every candidate once per round, after one untimed warm-up of each, in the order
// RoundOrder gives (alternating, or a seeded random permutation per round).
inline RoundSamples interleaved_rounds(const std::vector<std::function<void()>>& candidates,
                                       const RoundsOptions& opt) {
  const size_t n = candidates.size();
  const int inner = std::max(1, opt.inner);
  RoundSamples s;
  s.wall_ms.resize(n);
  s.cpu_ms.resize(n);
  for (const auto& fn : candidates) fn();
  RoundOrder order(n, opt.order_seed);
  double spent = 0;
  for (int round = 0; round < opt.max_rounds && (round < opt.min_rounds || spent < opt.budget_ms);
       ++round) {
    for (const size_t c : order.next(round)) {
      const double cpu0 = process_cpu_ms();
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; k < inner; ++k) candidates[c]();
      const double ms = elapsed_ms(t0);
      s.cpu_ms[c].push_back((process_cpu_ms() - cpu0) / inner);
      s.wall_ms[c].push_back(ms / inner);
      spent += ms;
    }
  }
  return s;
}

// Each candidate's per-round wall times in milliseconds (samples[c][round]).
inline std::vector<std::vector<double>> interleaved_ms(
    const std::vector<std::function<void()>>& candidates, const RoundsOptions& opt) {
  return interleaved_rounds(candidates, opt).wall_ms;
}

// One candidate's wall-time spread and median CPU time per call, in the JSON form the benches
// print ({"median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "rounds", "cpu_median_ms"}).
struct TimedSpread {
  double median_ms = 0, p10_ms = 0, p90_ms = 0, min_ms = 0, max_ms = 0;
  double cpu_median_ms = 0;  // process CPU time per call, all threads
  int rounds = 0;
  nlohmann::json to_json() const {
    return {{"median_ms", median_ms},
            {"p10_ms", p10_ms},
            {"p90_ms", p90_ms},
            {"min_ms", min_ms},
            {"max_ms", max_ms},
            {"rounds", rounds},
            {"cpu_median_ms", cpu_median_ms}};
  }
};

// interleaved_rounds() summarised per candidate: at least min_rounds, more until budget_ms of total
// time is spent (at most max_rounds); each sample is the mean of `inner` calls.
inline std::vector<TimedSpread> time_interleaved(
    const std::vector<std::function<void()>>& candidates, int min_rounds, double budget_ms,
    int max_rounds = 200, int inner = 1) {
  const RoundSamples s = interleaved_rounds(candidates, {min_rounds, max_rounds, budget_ms, inner});
  std::vector<TimedSpread> out;
  for (size_t c = 0; c < candidates.size(); ++c) {
    const Spread w = spread_of(s.wall_ms[c]);
    TimedSpread t;
    t.median_ms = w.median;
    t.p10_ms = w.p10;
    t.p90_ms = w.p90;
    t.min_ms = w.min;
    t.max_ms = w.max;
    t.rounds = w.samples;
    t.cpu_median_ms = median_of(s.cpu_ms[c]);
    out.push_back(t);
  }
  return out;
}

}  // namespace tessera::bench
