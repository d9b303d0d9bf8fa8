// `tessera bench int8`: the int8 weight-only linear (kernels/int8_linear) against the float32
// linear a user runs today (torch::linear on the float32 weights, libtorch's BLAS; torch::mv too
// for one row, the faster of the two is the baseline) and against the
// int8 formulation a user would write without our kernel (dequantise to float32, then linear),
// interleaved round by round in the same process on the same threads, for decode-shaped (1..16
// rows) and prefill-shaped inputs. Also reports the weight memory (int8 + scales vs float32).
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/timing.h"
#include "kernels/ops/int8_linear_ops.h"

namespace tessera::bench {

namespace {

nlohmann::json run_shape(const torch::Tensor& w, const torch::Tensor& q, const torch::Tensor& s,
                         int64_t m, bool quick) {
  torch::manual_seed(static_cast<uint64_t>(m));
  const auto x = torch::randn({m, w.size(1)});
  std::vector<std::string> names = {"tessera_int8", "torch_fp32_linear",
                                    "torch_dequant_then_linear"};
  torch::Tensor out[4];
  std::vector<std::function<void()>> fns = {
      [&] { out[0] = kernels::int8_linear(x, q, s); },
      [&] { out[1] = torch::linear(x, w); },
      [&] { out[2] = torch::linear(x, q.to(torch::kFloat) * s.unsqueeze(1)); },
  };
  if (m == 1) {  // one row: a matrix-vector product is the other formulation a user would try
    names.push_back("torch_fp32_mv");
    fns.push_back([&] { out[3] = torch::mv(w, x[0]).unsqueeze(0); });
  }
  const int64_t flops = 2 * m * w.size(0) * w.size(1);
  // Enough repetitions per round to time short calls well above the clock's resolution.
  const int inner = flops < 50'000'000 ? 5 : 1;
  const auto spreads = time_interleaved(fns, quick ? 5 : 15, quick ? 400 : 4000, 200, inner);
  nlohmann::json j{{"rows", m},
                   {"shape", m < 32 ? "decode" : "prefill"},
                   {"tessera", spreads[0].to_json()},
                   {"max_abs_diff_vs_dequantised", (out[0] - out[2]).abs().max().item<double>()},
                   {"max_abs_diff_vs_fp32_weights", (out[0] - out[1]).abs().max().item<double>()},
                   {"max_abs_fp32_output", out[1].abs().max().item<double>()}};
  j["baselines"] = nlohmann::json::object();
  for (size_t i = 1; i < names.size(); ++i) j["baselines"][names[i]] = spreads[i].to_json();
  double best_fp32 = spreads[1].median_ms;
  std::string best_name = names[1];
  if (m == 1 && spreads[3].median_ms < best_fp32) {
    best_fp32 = spreads[3].median_ms;
    best_name = names[3];
  }
  j["best_fp32_baseline"] = best_name;
  j["speedup_vs_fp32"] = best_fp32 / spreads[0].median_ms;
  const size_t bi = best_name == names[1] ? 1 : 3;
  j["cpu_speedup_vs_fp32"] = spreads[bi].cpu_median_ms / spreads[0].cpu_median_ms;
  j["speedup_vs_dequant"] = spreads[2].median_ms / spreads[0].median_ms;
  j["tessera_gflops"] = static_cast<double>(flops) / (spreads[0].median_ms * 1e6);
  return j;
}

int run(const BenchOptions& opts) {
  if (opts.rank != 0) return 0;
  const int64_t n = opts.quick ? 2048 : 4096, k = opts.quick ? 2048 : 4096;
  torch::manual_seed(0);
  const auto w = torch::randn({n, k}) * 0.02;
  const auto [q, s] = kernels::quantize_int8_per_channel(w);
  const double fp32_bytes = static_cast<double>(w.numel() * w.element_size());
  const double int8_bytes = static_cast<double>(kernels::int8_weight_bytes(q, s));
  nlohmann::json all{{"benchmark", "int8"},
                     {"threads", at::get_num_threads()},
                     {"quick", opts.quick},
                     {"out_features", n},
                     {"in_features", k},
                     {"weight_bytes_fp32", fp32_bytes},
                     {"weight_bytes_int8_with_scales", int8_bytes},
                     {"weight_memory_ratio", int8_bytes / fp32_bytes}};
  all["cases"] = nlohmann::json::array();
  const std::vector<int64_t> rows =
      opts.quick ? std::vector<int64_t>{1, 16, 128} : std::vector<int64_t>{1, 4, 16, 128, 512};
  for (int64_t m : rows) all["cases"].push_back(run_shape(w, q, s, m, opts.quick));
  if (opts.json) {
    std::printf("%s\n", all.dump().c_str());
    return 0;
  }
  std::printf(
      "int8 weight-only linear, CPU, %d thread(s), W %lld x %lld: weights %.1f MiB int8+scales vs "
      "%.1f MiB float32 (ratio %.4f)\nmedian wall ms [p10, p90] over interleaved rounds; vs: wall "
      "medians; cpu fp32: process CPU time medians\n",
      at::get_num_threads(), static_cast<long long>(n), static_cast<long long>(k),
      int8_bytes / (1 << 20), fp32_bytes / (1 << 20), int8_bytes / fp32_bytes);
  std::printf("%5s %8s %26s %26s %26s %9s %9s %9s\n", "rows", "shape", "tessera int8",
              "best torch fp32", "dequant+linear", "vs fp32", "vs deq", "cpu fp32");
  auto cell = [](const nlohmann::json& sp) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%8.4f [%7.4f, %7.4f]", sp["median_ms"].get<double>(),
                  sp["p10_ms"].get<double>(), sp["p90_ms"].get<double>());
    return std::string(buf);
  };
  for (const auto& c : all["cases"]) {
    std::printf("%5lld %8s %26s %26s %26s %8.2fx %8.2fx %8.2fx\n",
                static_cast<long long>(c["rows"].get<int64_t>()),
                c["shape"].get<std::string>().c_str(), cell(c["tessera"]).c_str(),
                cell(c["baselines"][c["best_fp32_baseline"].get<std::string>()]).c_str(),
                cell(c["baselines"]["torch_dequant_then_linear"]).c_str(),
                c["speedup_vs_fp32"].get<double>(), c["speedup_vs_dequant"].get<double>(),
                c["cpu_speedup_vs_fp32"].get<double>());
  }
  return 0;
}

}  // namespace

Benchmark int8_benchmark() {
  return {"int8", "int8 weight-only linear vs float32 linear and dequantise-then-linear", run};
}

}  // namespace tessera::bench
