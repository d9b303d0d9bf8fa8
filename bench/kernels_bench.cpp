// `tessera bench kernels`: the fused CPU cluster attention (forward, forward + backward) against
// every libtorch formulation of the same exact result we know of, run in the same process on the
// seed's three configurations, in interleaved rounds (each round a seeded random permutation of
// all candidates, so that none always follows the same one: the gather baseline frees large
// tensors, which slows whichever call comes next); speedups are against the fastest of them
// (by median). The baselines (all exact, blank token included, autograd for the backward):
//  - gather:         gather the M neighbour keys and values ([B,H,N,M,D] each), matmul, softmax;
//  - dense_scatter:  dense scores Q K^T, gather the M scores, softmax, scatter-add the weights
//                    back into a dense [B,H,N,N] (duplicate neighbours add up), P V;
//  - dense_logcount: dense attention over all N keys plus the blank one, with log(count of j in
//                    the row's neighbours) added to the logits (-inf where absent): exp(s + log c)
//                    = c exp(s) counts duplicates exactly, no gather or scatter at all;
//  - *_chunked:      the two dense ones over batch chunks whose score matrix fits in ~1 MB.
// Tried and left out (each far slower than dense_logcount on every configuration, prototyped in
// Python on the same libtorch): sparse COO (unique pairs + log count, sparse.softmax,
// sparse.mm), embedding_bag with per-sample weights for P V. The paged-decode bandwidth figure
// belongs to the paged-attention kernels.
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/paged_decode_bench.h"
#include "bench/timing.h"
#include "kernels/ops/cluster_attention_autograd.h"
#include "kernels/ops/cluster_attention_ops.h"

#ifdef TESSERA_WITH_CUDA
#include <cuda_runtime.h>

#include <random>

#include "kernels/cluster_attention/cluster_attention.h"
#endif

namespace tessera::bench {

namespace {

using kernels::ClusterAttentionInputs;

struct ClusterConfig {
  const char* name;
  int64_t B, N, C, H, M;
};

using Formulation = std::function<torch::Tensor(const ClusterAttentionInputs&)>;

torch::Tensor gather_baseline(const ClusterAttentionInputs& in) {
  const int64_t B = in.q.size(0), H = in.q.size(1), N = in.q.size(2), D = in.q.size(3);
  const int64_t M = in.idx.size(2);
  auto gidx = in.idx.reshape({B, 1, N * M, 1}).expand({B, H, N * M, D});
  auto kg = in.k.gather(2, gidx).view({B, H, N, M, D});
  auto vg = in.v.gather(2, gidx).view({B, H, N, M, D});
  auto s = torch::matmul(in.q.unsqueeze(3), kg.transpose(-1, -2)).squeeze(3) * in.scale;
  auto sb = (in.q * in.blank_k.view({1, H, 1, D})).sum(-1, true) * in.scale;
  auto p = torch::softmax(torch::cat({s, sb}, -1), -1);
  auto out = torch::matmul(p.narrow(-1, 0, M).unsqueeze(3), vg).squeeze(3);
  return out + p.narrow(-1, M, 1) * in.blank_v.view({1, H, 1, D});
}

torch::Tensor dense_scatter_baseline(const ClusterAttentionInputs& in) {
  const int64_t B = in.q.size(0), H = in.q.size(1), N = in.q.size(2), D = in.q.size(3);
  const int64_t M = in.idx.size(2);
  auto ii = in.idx.unsqueeze(1).expand({B, H, N, M});
  auto s = torch::matmul(in.q * in.scale, in.k.transpose(-1, -2)).gather(-1, ii);
  auto sb = (in.q * in.blank_k.view({1, H, 1, D})).sum(-1, true) * in.scale;
  auto p = torch::softmax(torch::cat({s, sb}, -1), -1);
  auto dense = torch::zeros({B, H, N, N}, in.q.options()).scatter_add(-1, ii, p.narrow(-1, 0, M));
  return torch::matmul(dense, in.v) + p.narrow(-1, M, 1) * in.blank_v.view({1, H, 1, D});
}

torch::Tensor dense_logcount_baseline(const ClusterAttentionInputs& in) {
  const int64_t B = in.q.size(0), H = in.q.size(1), N = in.q.size(2), D = in.q.size(3);
  const int64_t M = in.idx.size(2);
  // log(multiplicity) of every key in every row's neighbour list; column N is the blank key.
  torch::Tensor log_count;
  {
    torch::NoGradGuard no_grad;
    auto opts = in.q.options().requires_grad(false);
    log_count = torch::zeros({B, N, N + 1}, opts);
    log_count.scatter_add_(-1, in.idx, torch::ones({1, 1, 1}, opts).expand({B, N, M}));
    log_count.select(-1, N).fill_(1.0);
    log_count = log_count.log_().unsqueeze(1);  // [B, 1, N, N + 1]
  }
  auto kk = torch::cat({in.k, in.blank_k.view({1, H, 1, D}).expand({B, H, 1, D})}, 2);
  auto vv = torch::cat({in.v, in.blank_v.view({1, H, 1, D}).expand({B, H, 1, D})}, 2);
  auto s = torch::matmul(in.q * in.scale, kk.transpose(-1, -2)).add_(log_count);
  return torch::matmul(torch::softmax(s, -1), vv);
}

// fn over batch chunks of `chunk` items, outputs concatenated.
Formulation batch_chunked(Formulation fn, int64_t chunk) {
  return [fn = std::move(fn), chunk](const ClusterAttentionInputs& in) {
    const int64_t B = in.q.size(0);
    if (chunk >= B) return fn(in);
    std::vector<torch::Tensor> outs;
    for (int64_t b = 0; b < B; b += chunk) {
      ClusterAttentionInputs part = in;
      const int64_t n = std::min(chunk, B - b);
      part.q = in.q.narrow(0, b, n);
      part.k = in.k.narrow(0, b, n);
      part.v = in.v.narrow(0, b, n);
      part.idx = in.idx.narrow(0, b, n);
      outs.push_back(fn(part));
    }
    return torch::cat(outs, 0);
  };
}

struct Baseline {
  std::string name;
  Formulation fn;
};

std::vector<Baseline> baselines(const ClusterConfig& c) {
  // Batch items whose [H, N, N + 1] float scores fit in ~1 MB (at least one).
  const int64_t per_item = c.H * c.N * (c.N + 1) * 4;
  const int64_t chunk = std::max<int64_t>(1, (1 << 20) / per_item);
  return {{"gather", gather_baseline},
          {"dense_scatter", dense_scatter_baseline},
          {"dense_logcount", dense_logcount_baseline},
          {"dense_scatter_chunked", batch_chunked(dense_scatter_baseline, chunk)},
          {"dense_logcount_chunked", batch_chunked(dense_logcount_baseline, chunk)}};
}

// The differentiable leaves of a copy of `in` (fresh each call, as a training step has).
ClusterAttentionInputs with_grad_leaves(const ClusterAttentionInputs& in) {
  ClusterAttentionInputs g = in;
  for (auto* t : {&g.q, &g.k, &g.v, &g.blank_k, &g.blank_v}) {
    *t = t->detach().requires_grad_(true);
  }
  return g;
}

std::vector<torch::Tensor> grads_of(const ClusterAttentionInputs& g) {
  return {g.q.grad(), g.k.grad(), g.v.grad(), g.blank_k.grad(), g.blank_v.grad()};
}

// Largest |a - b| over a list of tensors, each relative to max(1, max |b|).
double max_rel_err(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double scale = std::max(1.0, b[i].abs().max().item<double>());
    e = std::max(e, (a[i] - b[i]).abs().max().item<double>() / scale);
  }
  return e;
}

struct Timed {
  Spread ms;
  Spread cpu_ms;   // process CPU time per call (all threads): steadier on a shared machine
  double err = 0;  // baselines: largest difference from ours (forward: out; fwd+bwd: gradients)
  Spread speedup;  // per-round baseline / ours
};

struct ClusterResult {
  std::string config;
  int64_t batch = 0;
  Timed fwd, fwd_bwd;                                                 // ours
  std::vector<std::pair<std::string, Timed>> fwd_base, fwd_bwd_base;  // per baseline
  std::string fastest_fwd, fastest_fwd_bwd;                           // by median
};

// Seed of the per-round random order of the candidates (RoundsOptions::order_seed), in the JSON.
constexpr uint64_t kOrderSeed = 20261130;

ClusterResult run_cluster(const ClusterConfig& c, bool quick) {
  // --quick keeps every shape but the batch: the large configuration runs 2 batches.
  const int64_t B = quick ? std::min<int64_t>(c.B, 2) : c.B;
  const int64_t D = c.C / c.H;
  torch::manual_seed(0);
  ClusterAttentionInputs in;
  in.q = torch::randn({B, c.H, c.N, D});
  in.k = torch::randn({B, c.H, c.N, D});
  in.v = torch::randn({B, c.H, c.N, D});
  in.idx = torch::randint(0, c.N, {B, c.N, c.M}, torch::kLong);
  in.blank_k = torch::randn({c.H, D});
  in.blank_v = torch::randn({c.H, D});
  in.scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto dout = torch::randn({B, c.H, c.N, D});
  const auto base = baselines(c);
  RoundsOptions rounds;
  rounds.min_rounds = quick ? 3 : 7;
  rounds.budget_ms = quick ? 300 : 4000;  // per pass, all candidates together
  rounds.order_seed = kOrderSeed;         // forward and forward + backward alike

  ClusterResult r;
  r.config = c.name;
  r.batch = B;
  // Correctness first (outside the timing): every baseline against ours, output and gradients.
  torch::Tensor ours_out;
  std::vector<torch::Tensor> ours_grads;
  {
    auto g = with_grad_leaves(in);
    auto out = std::get<0>(kernels::cluster_attention(g));
    out.backward(dout);
    ours_out = out.detach();
    ours_grads = grads_of(g);
  }
  std::vector<double> fwd_err, grad_err;
  for (const auto& b : base) {
    auto g = with_grad_leaves(in);
    auto out = b.fn(g);
    out.backward(dout);
    fwd_err.push_back((out.detach() - ours_out).abs().max().item<double>());
    grad_err.push_back(max_rel_err(grads_of(g), ours_grads));
  }

  // Forward: ours and every baseline, interleaved, no autograd graph.
  {
    torch::NoGradGuard no_grad;
    std::vector<std::function<void()>> fns{[&] { kernels::cluster_attention_forward(in); }};
    for (const auto& b : base) fns.push_back([&] { b.fn(in); });
    const auto s = interleaved_rounds(fns, rounds);
    const auto& t = s.wall_ms;
    r.fwd.ms = spread_of(t[0]);
    r.fwd.cpu_ms = spread_of(s.cpu_ms[0]);
    for (size_t i = 0; i < base.size(); ++i) {
      r.fwd_base.push_back({base[i].name,
                            {spread_of(t[i + 1]), spread_of(s.cpu_ms[i + 1]), fwd_err[i],
                             spread_of(per_round_ratios(t[i + 1], t[0]))}});
    }
  }
  // Forward + backward through autograd on both sides (fresh leaves, loss.backward(dout)).
  {
    std::vector<std::function<void()>> fns{[&] {
      auto g = with_grad_leaves(in);
      std::get<0>(kernels::cluster_attention(g)).backward(dout);
    }};
    for (const auto& b : base) {
      fns.push_back([&] {
        auto g = with_grad_leaves(in);
        b.fn(g).backward(dout);
      });
    }
    const auto s = interleaved_rounds(fns, rounds);
    const auto& t = s.wall_ms;
    r.fwd_bwd.ms = spread_of(t[0]);
    r.fwd_bwd.cpu_ms = spread_of(s.cpu_ms[0]);
    for (size_t i = 0; i < base.size(); ++i) {
      r.fwd_bwd_base.push_back({base[i].name,
                                {spread_of(t[i + 1]), spread_of(s.cpu_ms[i + 1]), grad_err[i],
                                 spread_of(per_round_ratios(t[i + 1], t[0]))}});
    }
  }
  auto fastest = [](const std::vector<std::pair<std::string, Timed>>& v) {
    return std::min_element(
               v.begin(), v.end(),
               [](const auto& a, const auto& b) { return a.second.ms.median < b.second.ms.median; })
        ->first;
  };
  r.fastest_fwd = fastest(r.fwd_base);
  r.fastest_fwd_bwd = fastest(r.fwd_bwd_base);
  return r;
}

const Timed& find(const std::vector<std::pair<std::string, Timed>>& v, const std::string& name) {
  return std::find_if(v.begin(), v.end(), [&](const auto& p) { return p.first == name; })->second;
}

#ifdef TESSERA_WITH_CUDA
// GPU: the CUDA kernels on raw device buffers (libtorch may be CPU-only), timed with CUDA events,
// and the forward compared with its memory roofline: the compulsory bytes (q, k, v, idx, blank
// read once; out, lse written once) over the device-to-device copy bandwidth measured here.
struct GpuResult {
  std::string config;
  int64_t batch = 0;
  double fwd_ms = 0, fwd_bwd_ms = 0, fwd_bytes = 0, roofline_fraction = 0;
};

class DeviceMem {
 public:
  explicit DeviceMem(size_t bytes) {
    if (bytes > 0 && cudaMalloc(&p_, bytes) != cudaSuccess) p_ = nullptr;
    if (p_) cudaMemset(p_, 0, bytes);
  }
  ~DeviceMem() { cudaFree(p_); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

// Median of `reps` CUDA-event timings of fn, after one warm-up.
double time_gpu_ms(const std::function<void()>& fn, int reps) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  fn();
  std::vector<double> ms_all;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start);
    fn();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    ms_all.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return median_of(ms_all);
}

// Device-to-device copy bandwidth (bytes read + written per second).
double measure_copy_bandwidth(bool quick) {
  const size_t bytes = (quick ? 64ull : 512ull) << 20;
  DeviceMem a(bytes), b(bytes);
  if (!a.as<char>() || !b.as<char>()) return 0;
  const double ms =
      time_gpu_ms([&] { cudaMemcpyAsync(b.as<char>(), a.as<char>(), bytes, cudaMemcpyDefault); },
                  quick ? 3 : 10);
  return 2.0 * bytes / (ms * 1e-3);
}

std::optional<std::vector<GpuResult>> run_gpu(const ClusterConfig* configs, int count, bool quick,
                                              double* bandwidth) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) return std::nullopt;
  *bandwidth = measure_copy_bandwidth(quick);
  std::vector<GpuResult> out;
  for (int c = 0; c < count; ++c) {
    const auto& cfg = configs[c];
    const int64_t B = quick ? std::min<int64_t>(cfg.B, 2) : cfg.B;
    const int64_t H = cfg.H, N = cfg.N, M = cfg.M, D = cfg.C / cfg.H;
    const size_t plane = static_cast<size_t>(B * H * N * D);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<float> host(3 * plane + 2 * H * D);
    for (auto& x : host) x = normal(rng);
    std::vector<int64_t> idx(static_cast<size_t>(B * N * M));
    std::uniform_int_distribution<int64_t> pick(0, N - 1);
    for (auto& j : idx) j = pick(rng);
    DeviceMem qkv(host.size() * 4), idx_d(idx.size() * 8), out_d(plane * 4), lse_d(plane / D * 4),
        dout_d(plane * 4), dq(plane * 4), dk(plane * 4), dv(plane * 4), dbk(H * D * 4),
        dbv(H * D * 4);
    cudaMemcpy(qkv.as<float>(), host.data(), host.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(idx_d.as<int64_t>(), idx.data(), idx.size() * 8, cudaMemcpyHostToDevice);
    cudaMemcpy(dout_d.as<float>(), host.data(), plane * 4, cudaMemcpyHostToDevice);
    kernels::ClusterAttentionView a;
    a.q = qkv.as<float>();
    a.k = a.q + plane;
    a.v = a.k + plane;
    a.blank_k = a.v + plane;
    a.blank_v = a.blank_k + H * D;
    const int64_t st[3] = {H * N * D, N * D, D};
    for (int i = 0; i < 3; ++i) a.q_stride[i] = a.k_stride[i] = a.v_stride[i] = st[i];
    a.idx = idx_d.as<int64_t>();
    a.out = out_d.as<float>();
    a.lse = lse_d.as<float>();
    a.batch = static_cast<int>(B);
    a.heads = static_cast<int>(H);
    a.tokens = static_cast<int>(N);
    a.neighbours = static_cast<int>(M);
    a.head_dim = static_cast<int>(D);
    a.scale = 1.f / std::sqrt(static_cast<float>(D));
    kernels::ClusterAttentionGrads g;
    g.dout = dout_d.as<float>();
    g.dq = dq.as<float>();
    g.dk = dk.as<float>();
    g.dv = dv.as<float>();
    g.dblank_k = dbk.as<float>();
    g.dblank_v = dbv.as<float>();
    const int reps = quick ? 3 : 20;
    GpuResult r;
    r.config = cfg.name;
    r.batch = B;
    r.fwd_ms = time_gpu_ms([&] { kernels::cluster_attention_fwd_cuda(a, nullptr); }, reps);
    r.fwd_bwd_ms = time_gpu_ms(
        [&] {
          kernels::cluster_attention_fwd_cuda(a, nullptr);
          kernels::cluster_attention_bwd_cuda(a, g, false, nullptr, nullptr);
        },
        reps);
    r.fwd_bytes = 4.0 * (4 * plane + 2 * H * D + plane / D) + 8.0 * idx.size();
    r.roofline_fraction = *bandwidth > 0 ? (r.fwd_bytes / (r.fwd_ms * 1e-3)) / *bandwidth : 0.0;
    if (cudaGetLastError() != cudaSuccess) return std::nullopt;
    out.push_back(r);
  }
  return out;
}
#endif

nlohmann::json timed_json(const Timed& t) {
  return {{"ms", to_json(t.ms)},
          {"cpu_ms", to_json(t.cpu_ms)},
          {"max_err_vs_ours", t.err},
          {"speedup", to_json(t.speedup)}};
}

double fastest_cpu(const std::vector<std::pair<std::string, Timed>>& v) {
  double best = 0;
  for (const auto& [name, t] : v) {
    if (best == 0 || t.cpu_ms.median < best) best = t.cpu_ms.median;
  }
  return best;
}

nlohmann::json result_json(const ClusterResult& r) {
  const Timed& bf = find(r.fwd_base, r.fastest_fwd);
  const Timed& bfb = find(r.fwd_bwd_base, r.fastest_fwd_bwd);
  nlohmann::json base = nlohmann::json::object(), detail = nlohmann::json::object();
  for (size_t i = 0; i < r.fwd_base.size(); ++i) {
    const auto& [name, f] = r.fwd_base[i];
    const Timed& fb = r.fwd_bwd_base[i].second;
    base[name] = {{"fwd_ms", f.ms.median},
                  {"fwd_bwd_ms", fb.ms.median},
                  {"fwd_cpu_ms", f.cpu_ms.median},
                  {"fwd_bwd_cpu_ms", fb.cpu_ms.median}};
    detail[name] = {{"fwd", timed_json(f)}, {"fwd_bwd", timed_json(fb)}};
  }
  return {
      {"config", r.config},
      {"batch", r.batch},
      {"fwd_ms", r.fwd.ms.median},
      {"fwd_ms_spread", to_json(r.fwd.ms)},
      {"fwd_baseline", r.fastest_fwd},
      {"fwd_baseline_ms", bf.ms.median},
      {"fwd_speedup", bf.ms.median / r.fwd.ms.median},
      {"fwd_speedup_per_round", to_json(bf.speedup)},
      {"fwd_bwd_ms", r.fwd_bwd.ms.median},
      {"fwd_bwd_ms_spread", to_json(r.fwd_bwd.ms)},
      {"fwd_bwd_baseline", r.fastest_fwd_bwd},
      {"fwd_bwd_baseline_ms", bfb.ms.median},
      {"fwd_bwd_speedup", bfb.ms.median / r.fwd_bwd.ms.median},
      {"fwd_bwd_speedup_per_round", to_json(bfb.speedup)},
      {"baselines", base},
      {"baseline_detail", detail},
      // The same comparison in process CPU time per call (all threads), against the baseline
      // fastest in CPU time: with one thread on a machine shared with other jobs, the measure of
      // the work done that other processes disturb least.
      {"fwd_cpu_ms", r.fwd.cpu_ms.median},
      {"fwd_bwd_cpu_ms", r.fwd_bwd.cpu_ms.median},
      {"fwd_cpu_speedup", fastest_cpu(r.fwd_base) / r.fwd.cpu_ms.median},
      {"fwd_bwd_cpu_speedup", fastest_cpu(r.fwd_bwd_base) / r.fwd_bwd.cpu_ms.median},
      // Largest difference of any baseline from ours: forward output (absolute) and the five
      // gradients (relative to max(1, |gradient|)).
      {"max_abs_err_vs_baseline",
       std::max_element(r.fwd_base.begin(), r.fwd_base.end(),
                        [](const auto& a, const auto& b) { return a.second.err < b.second.err; })
           ->second.err},
      {"max_grad_err_vs_baseline",
       std::max_element(r.fwd_bwd_base.begin(), r.fwd_bwd_base.end(),
                        [](const auto& a, const auto& b) { return a.second.err < b.second.err; })
           ->second.err}};
}

int run(const BenchOptions& opts) {
  const ClusterConfig configs[] = {
      {"small", 1, 64, 8, 1, 32}, {"medium", 16, 128, 16, 2, 48}, {"large", 32, 256, 256, 8, 64}};
  std::vector<ClusterResult> results;
  for (const auto& c : configs) results.push_back(run_cluster(c, opts.quick));
#ifdef TESSERA_WITH_CUDA
  double bandwidth = 0;
  const auto gpu = run_gpu(configs, 3, opts.quick, &bandwidth);
#endif
  std::optional<nlohmann::json> paged;
  // CPU paged decode vs streaming-read bandwidth (bench/paged_decode_bench.cpp).
  if (opts.rank == 0) paged = run_paged_decode_bench(opts.quick);
  if (opts.rank != 0) return 0;

  if (opts.json) {
    nlohmann::json j;
    j["benchmark"] = "kernels";
    j["quick"] = opts.quick;
    j["threads"] = at::get_num_threads();
    j["round_order"] = "seeded random permutation of all candidates per round";
    j["order_seed"] = kOrderSeed;
    j["cluster_attention"] = nlohmann::json::array();
    for (const auto& r : results) j["cluster_attention"].push_back(result_json(r));
    // Paged decode (batch 16 x 4096 tokens, GQA) as a fraction of the memory bandwidth measured
    // in the same run, from the paged-attention benchmark; null where that is not built in.
    j["paged_decode_bw_fraction"] = nullptr;
    if (paged) j["paged_decode_bw_fraction"] = (*paged)["paged_decode_bw_fraction"];
    // CUDA cluster attention (null without a GPU): times and the forward's roofline fraction.
    j["cluster_attention_gpu"] = nullptr;
#ifdef TESSERA_WITH_CUDA
    if (gpu) {
      j["gpu_copy_bandwidth_gbs"] = bandwidth / 1e9;
      j["cluster_attention_gpu"] = nlohmann::json::array();
      for (const auto& r : *gpu) {
        j["cluster_attention_gpu"].push_back({{"config", r.config},
                                              {"batch", r.batch},
                                              {"fwd_ms", r.fwd_ms},
                                              {"fwd_bwd_ms", r.fwd_bwd_ms},
                                              {"fwd_roofline_fraction", r.roofline_fraction}});
      }
    }
#endif
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf(
      "cluster attention, fused CPU vs every libtorch formulation, %d threads; median ms of "
      "interleaved rounds (random order per round, seed %llu) [p10-p90]\n",
      at::get_num_threads(), static_cast<unsigned long long>(kOrderSeed));
  for (const auto& r : results) {
    std::printf("\n%s (batch %lld)%28s %24s %9s\n", r.config.c_str(),
                static_cast<long long>(r.batch), "fwd ms", "fwd+bwd ms", "max err");
    auto line = [](const std::string& name, const Spread& f, const Spread& fb, double err) {
      std::printf("  %-24s %9.3f [%7.3f-%7.3f] %9.3f [%7.3f-%7.3f] %9.2e\n", name.c_str(), f.median,
                  f.p10, f.p90, fb.median, fb.p10, fb.p90, err);
    };
    line("tessera (fused)", r.fwd.ms, r.fwd_bwd.ms, 0.0);
    for (size_t i = 0; i < r.fwd_base.size(); ++i) {
      line(r.fwd_base[i].first, r.fwd_base[i].second.ms, r.fwd_bwd_base[i].second.ms,
           std::max(r.fwd_base[i].second.err, r.fwd_bwd_base[i].second.err));
    }
    const Timed& bf = find(r.fwd_base, r.fastest_fwd);
    const Timed& bfb = find(r.fwd_bwd_base, r.fastest_fwd_bwd);
    std::printf(
        "  speedup vs fastest: fwd %.2fx (%s; per round p10-p90 %.2f-%.2f), fwd+bwd %.2fx (%s; "
        "%.2f-%.2f)\n",
        bf.ms.median / r.fwd.ms.median, r.fastest_fwd.c_str(), bf.speedup.p10, bf.speedup.p90,
        bfb.ms.median / r.fwd_bwd.ms.median, r.fastest_fwd_bwd.c_str(), bfb.speedup.p10,
        bfb.speedup.p90);
  }
  if (paged) {
    std::printf("\npaged decode (CPU, batch 16 x %d tokens, GQA): %.2f of memory bandwidth\n",
                (*paged)["seq_len"].get<int>(), (*paged)["paged_decode_bw_fraction"].get<double>());
  } else {
    std::printf("\npaged decode bandwidth fraction: not built in\n");
  }
#ifdef TESSERA_WITH_CUDA
  if (gpu) {
    std::printf("\ncluster attention on the GPU (copy bandwidth %.0f GB/s; median of events)\n",
                bandwidth / 1e9);
    std::printf("%-8s %6s %11s %13s %16s\n", "config", "batch", "fwd ms", "fwd+bwd ms",
                "fwd roofline");
    for (const auto& r : *gpu) {
      std::printf("%-8s %6lld %11.4f %13.4f %15.1f%%\n", r.config.c_str(),
                  static_cast<long long>(r.batch), r.fwd_ms, r.fwd_bwd_ms,
                  100 * r.roofline_fraction);
    }
  } else {
    std::printf("\ncluster attention on the GPU: no CUDA device\n");
  }
#endif
  return 0;
}

}  // namespace

Benchmark kernels_benchmark() {
  return {"kernels",
          "Cluster attention (fused CPU vs the fastest libtorch formulation) and paged decode "
          "bandwidth",
          run};
}

}  // namespace tessera::bench
