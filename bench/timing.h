// Timing shared by the benchmarks: candidates (ours and each baseline) are timed in interleaved
// rounds (A B C, C B A, A B C, ...) so that a machine whose speed drifts (a shared one) slows every
// candidate alike, and each is reported as the median and the spread (p10, p90, min, max) of its
// rounds, never the best run alone. Header-only and torch-free (the paged bench links no torch).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

namespace tessera::bench {

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

struct RoundsOptions {
  int min_rounds = 5;        // every candidate gets at least this many samples
  int max_rounds = 200;      // and at most this many
  double budget_ms = 500.0;  // more rounds while the timed total stays under this
};

// Times every candidate once per round, after one untimed warm-up of each; even rounds run them
// in order, odd rounds in reverse, so none always runs first after the others. Returns each
// candidate's per-round times in milliseconds (samples[c][round]).
inline std::vector<std::vector<double>> interleaved_ms(
    const std::vector<std::function<void()>>& candidates, const RoundsOptions& opt) {
  const size_t n = candidates.size();
  std::vector<std::vector<double>> samples(n);
  for (const auto& fn : candidates) fn();
  double spent = 0;
  for (int round = 0; round < opt.max_rounds && (round < opt.min_rounds || spent < opt.budget_ms);
       ++round) {
    for (size_t i = 0; i < n; ++i) {
      const size_t c = round % 2 == 0 ? i : n - 1 - i;
      const auto t0 = std::chrono::steady_clock::now();
      candidates[c]();
      const double ms = elapsed_ms(t0);
      samples[c].push_back(ms);
      spent += ms;
    }
  }
  return samples;
}

}  // namespace tessera::bench
