// `tessera bench lora`: the segmented LoRA matmul (shrink + expand, kernels/lora) against the
// libtorch formulations a user would write for a batch whose rows use different adapters, run in
// the same process on the same threads, interleaved round by round:
//   per_segment_mm  y[s] += scale * (x[s] A[:r]^T) B[:, :r]^T with two matmuls per segment (views)
//   grouped_mm      rows of each adapter gathered (index_select), two matmuls, index_add_ back
//   gathered_bmm    every row's A and B gathered from a zero-padded stack, two bmm (BGMV-style)
// The speedup is against the fastest baseline of each case; every baseline is reported.
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/timing.h"
#include "kernels/ops/lora_ops.h"

namespace tessera::bench {

namespace {

using torch::indexing::Slice;

struct LoraCase {
  std::string name;
  int64_t in, out;
  std::vector<int> seg_rows;
  std::vector<int> seg_adapter;
  std::vector<int> ranks;
  torch::ScalarType dtype = torch::kFloat;
};

struct Setup {
  torch::Tensor x, y;
  kernels::LoraStack stack;
  torch::Tensor indptr, adapter;
  std::vector<float> scales;
  int64_t r_max = 0;
};

Setup make_setup(const LoraCase& c) {
  torch::manual_seed(0);
  Setup s;
  int64_t rows = 0;
  std::vector<int32_t> indptr{0};
  for (int n : c.seg_rows) indptr.push_back(static_cast<int32_t>(rows += n));
  for (int r : c.ranks) s.r_max = std::max<int64_t>(s.r_max, r);
  const int64_t n = static_cast<int64_t>(c.ranks.size());
  auto a = torch::zeros({n, s.r_max, c.in}), b = torch::zeros({n, c.out, s.r_max});
  for (int64_t i = 0; i < n; ++i) {
    a.index_put_({i, Slice(0, c.ranks[i])}, torch::randn({c.ranks[i], c.in}) * 0.02);
    b.index_put_({i, Slice(), Slice(0, c.ranks[i])}, torch::randn({c.out, c.ranks[i]}) * 0.02);
    s.scales.push_back(16.0f / static_cast<float>(c.ranks[i]));
  }
  s.stack.a = a.to(c.dtype);
  s.stack.b = b.to(c.dtype);
  s.stack.ranks = torch::tensor(std::vector<int32_t>(c.ranks.begin(), c.ranks.end()), torch::kInt);
  s.stack.scales = torch::tensor(s.scales);
  s.indptr = torch::tensor(indptr, torch::kInt);
  s.adapter =
      torch::tensor(std::vector<int32_t>(c.seg_adapter.begin(), c.seg_adapter.end()), torch::kInt);
  s.x = torch::randn({rows, c.in}).to(c.dtype);
  s.y = torch::randn({rows, c.out}).to(c.dtype);
  return s;
}

struct Candidate {
  std::string name;
  std::function<void(torch::Tensor&)> run;  // adds the LoRA update into y
};

std::vector<Candidate> baselines(const LoraCase& c, const Setup& s) {
  std::vector<Candidate> out;
  // Views of each segment's operands, sliced to its adapter's rank, made once.
  struct Seg {
    int64_t r0, n;
    torch::Tensor at, bt;  // A[:r]^T [in, r], B[:, :r]^T [r, out]
    double scale;
  };
  std::vector<Seg> segs;
  int64_t r0 = 0;
  for (size_t i = 0; i < c.seg_rows.size(); ++i) {
    const int a = c.seg_adapter[i];
    if (a >= 0 && c.seg_rows[i] > 0) {
      segs.push_back({r0, c.seg_rows[i], s.stack.a.index({a, Slice(0, c.ranks[a])}).t(),
                      s.stack.b.index({a, Slice(), Slice(0, c.ranks[a])}).t(), s.scales[a]});
    }
    r0 += c.seg_rows[i];
  }
  out.push_back(
      {"per_segment_mm", [segs, x = s.x](torch::Tensor& y) {
         for (const auto& g : segs) {
           y.narrow(0, g.r0, g.n).addmm_(x.narrow(0, g.r0, g.n).mm(g.at), g.bt, 1.0, g.scale);
         }
       }});

  // Rows grouped by adapter.
  std::map<int, std::vector<int64_t>> rows_of;
  r0 = 0;
  for (size_t i = 0; i < c.seg_rows.size(); ++i) {
    for (int64_t r = 0; r < c.seg_rows[i]; ++r) {
      if (c.seg_adapter[i] >= 0) rows_of[c.seg_adapter[i]].push_back(r0 + r);
    }
    r0 += c.seg_rows[i];
  }
  struct Group {
    torch::Tensor idx, at, bt;
    double scale;
  };
  std::vector<Group> groups;
  for (auto& [a, rows] : rows_of) {
    groups.push_back({torch::tensor(rows, torch::kLong),
                      s.stack.a.index({a, Slice(0, c.ranks[a])}).t(),
                      s.stack.b.index({a, Slice(), Slice(0, c.ranks[a])}).t(), s.scales[a]});
  }
  out.push_back({"grouped_mm", [groups, x = s.x](torch::Tensor& y) {
                   for (const auto& g : groups) {
                     y.index_add_(0, g.idx, x.index_select(0, g.idx).mm(g.at).mm(g.bt), g.scale);
                   }
                 }});

  // Every row's adapter gathered from a zero-padded stack (one extra all-zero adapter for base
  // rows), then two batched matmuls. Skipped where the gathered copies would exceed 512 MB.
  const int64_t rows = s.x.size(0);
  const double gathered_mb =
      double(rows) * s.r_max * (c.in + c.out) * s.stack.a.element_size() / (1 << 20);
  if (gathered_mb <= 512) {
    std::vector<int64_t> row_adapter;
    const int64_t zero_adapter = static_cast<int64_t>(c.ranks.size());
    for (size_t i = 0; i < c.seg_rows.size(); ++i) {
      for (int64_t r = 0; r < c.seg_rows[i]; ++r) {
        row_adapter.push_back(c.seg_adapter[i] >= 0 ? c.seg_adapter[i] : zero_adapter);
      }
    }
    auto a_pad = torch::cat({s.stack.a, torch::zeros_like(s.stack.a.narrow(0, 0, 1))});
    auto b_pad = torch::cat({s.stack.b, torch::zeros_like(s.stack.b.narrow(0, 0, 1))});
    auto scales = torch::cat({s.stack.scales, torch::zeros({1})}).to(s.x.scalar_type());
    auto idx = torch::tensor(row_adapter, torch::kLong);
    auto row_scale = scales.index_select(0, idx).unsqueeze(1);
    out.push_back({"gathered_bmm", [=, x = s.x](torch::Tensor& y) {
                     auto t =
                         torch::bmm(x.unsqueeze(1), a_pad.index_select(0, idx).transpose(1, 2));
                     auto u = torch::bmm(t, b_pad.index_select(0, idx).transpose(1, 2)).squeeze(1);
                     y.add_(u * row_scale);
                   }});
  }
  return out;
}

nlohmann::json run_case(const LoraCase& c, bool quick) {
  const Setup s = make_setup(c);
  std::vector<Candidate> cands;
  cands.push_back({"tessera_sgmv", [&s](torch::Tensor& y) {
                     kernels::lora_sgmv_(y, s.x, s.stack, s.indptr, s.adapter);
                   }});
  for (auto& b : baselines(c, s)) cands.push_back(std::move(b));

  // Agreement: each formulation once on a fresh y, against the kernel's result.
  auto y_ref = s.y.clone();
  cands[0].run(y_ref);
  nlohmann::json errs = nlohmann::json::object();
  for (size_t i = 1; i < cands.size(); ++i) {
    auto y = s.y.clone();
    cands[i].run(y);
    errs[cands[i].name] =
        (y.to(torch::kFloat) - y_ref.to(torch::kFloat)).abs().max().item<double>();
  }

  std::vector<torch::Tensor> ys;
  for (size_t i = 0; i < cands.size(); ++i) ys.push_back(s.y.clone());
  std::vector<std::function<void()>> fns;
  for (size_t i = 0; i < cands.size(); ++i) {
    fns.push_back([&, i] { cands[i].run(ys[i]); });
  }
  const auto spreads = time_interleaved(fns, quick ? 5 : 15, quick ? 300 : 3000);

  int64_t rows = s.x.size(0);
  nlohmann::json j{{"case", c.name},
                   {"dtype", c10::toString(c.dtype)},
                   {"rows", rows},
                   {"segments", c.seg_rows.size()},
                   {"ranks", c.ranks},
                   {"in_features", c.in},
                   {"out_features", c.out},
                   {"tessera", spreads[0].to_json()},
                   {"max_abs_diff_vs_tessera", errs}};
  j["baselines"] = nlohmann::json::object();
  size_t best = 1;
  for (size_t i = 1; i < cands.size(); ++i) {
    j["baselines"][cands[i].name] = spreads[i].to_json();
    if (spreads[i].median_ms < spreads[best].median_ms) best = i;
  }
  j["best_baseline"] = cands[best].name;
  j["speedup_vs_best"] = spreads[best].median_ms / spreads[0].median_ms;
  // The same against the baseline with the least CPU time.
  size_t best_cpu = 1;
  for (size_t i = 1; i < cands.size(); ++i) {
    if (spreads[i].cpu_median_ms < spreads[best_cpu].cpu_median_ms) best_cpu = i;
  }
  j["best_baseline_cpu"] = cands[best_cpu].name;
  j["cpu_speedup_vs_best"] = spreads[best_cpu].cpu_median_ms / spreads[0].cpu_median_ms;
  return j;
}

std::vector<LoraCase> lora_cases(bool quick) {
  const int64_t h = quick ? 1024 : 4096;
  std::vector<LoraCase> cases;
  // Decode: 32 requests, one token each, over 8 adapters of rank 16, sorted into segments (SGMV).
  LoraCase sorted{"decode_sorted", h, h, {}, {}, {16, 16, 16, 16, 16, 16, 16, 16}};
  for (int a = 0; a < 8; ++a) {
    sorted.seg_rows.push_back(4);
    sorted.seg_adapter.push_back(a);
  }
  cases.push_back(sorted);
  // Decode, unsorted: every row its own segment (BGMV), mixed ranks 8..64, a few base rows.
  LoraCase bgmv{"decode_unsorted_mixed_ranks", h, h, {}, {}, {8, 16, 32, 64}};
  for (int r = 0; r < 32; ++r) {
    bgmv.seg_rows.push_back(1);
    bgmv.seg_adapter.push_back(r % 5 == 4 ? -1 : r % 4);
  }
  cases.push_back(bgmv);
  LoraCase bf16 = sorted;
  bf16.name = "decode_sorted_bf16";
  bf16.dtype = torch::kBFloat16;
  cases.push_back(bf16);
  // Prefill: four prompts of 256 tokens (quick: 64) on four adapters of rank 16.
  const int p = quick ? 64 : 256;
  cases.push_back({"prefill", h, h, {p, p, p, p}, {0, 1, 2, 3}, {16, 16, 16, 16}});
  // Prefill with mixed ranks and a base-only prompt.
  cases.push_back(
      {"prefill_mixed_ranks", h, h, {2 * p, p - 31, p / 2, p}, {1, 0, -1, 2}, {8, 64, 16}});
  return cases;
}

int run(const BenchOptions& opts) {
  if (opts.rank != 0) return 0;
  nlohmann::json all{
      {"benchmark", "lora"}, {"threads", at::get_num_threads()}, {"quick", opts.quick}};
  all["cases"] = nlohmann::json::array();
  for (const auto& c : lora_cases(opts.quick)) all["cases"].push_back(run_case(c, opts.quick));
  if (opts.json) {
    std::printf("%s\n", all.dump().c_str());
    return 0;
  }
  std::printf(
      "segmented LoRA matmul, CPU, %d thread(s); median wall ms [p10, p90] over interleaved "
      "rounds; speedup: of wall medians; cpu x: of process CPU time medians\n",
      at::get_num_threads());
  std::printf("%-28s %5s %9s %24s %-16s %24s %8s %8s\n", "case", "rows", "dtype", "tessera ms",
              "best baseline", "baseline ms", "speedup", "cpu x");
  for (const auto& j : all["cases"]) {
    const auto& t = j["tessera"];
    const auto& b = j["baselines"][j["best_baseline"].get<std::string>()];
    std::printf("%-28s %5lld %9s %9.4f [%6.4f, %6.4f] %-16s %9.4f [%6.4f, %6.4f] %7.2fx %7.2fx\n",
                j["case"].get<std::string>().c_str(),
                static_cast<long long>(j["rows"].get<int64_t>()),
                j["dtype"].get<std::string>().c_str(), t["median_ms"].get<double>(),
                t["p10_ms"].get<double>(), t["p90_ms"].get<double>(),
                j["best_baseline"].get<std::string>().c_str(), b["median_ms"].get<double>(),
                b["p10_ms"].get<double>(), b["p90_ms"].get<double>(),
                j["speedup_vs_best"].get<double>(), j["cpu_speedup_vs_best"].get<double>());
    std::printf("    %-16s %9.4f ms, cpu %9.4f ms\n", "tessera_sgmv", t["median_ms"].get<double>(),
                t["cpu_median_ms"].get<double>());
    for (const auto& [name, sp] : j["baselines"].items()) {
      std::printf("    %-16s %9.4f ms, cpu %9.4f ms (max |diff| vs tessera %.2e)\n", name.c_str(),
                  sp["median_ms"].get<double>(), sp["cpu_median_ms"].get<double>(),
                  j["max_abs_diff_vs_tessera"][name].get<double>());
    }
  }
  return 0;
}

}  // namespace

Benchmark lora_benchmark() {
  return {"lora", "Segmented LoRA matmul (shrink + expand) vs libtorch per-segment / grouped / bmm",
          run};
}

}  // namespace tessera::bench
