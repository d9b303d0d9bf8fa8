// `tessera bench train` (run under `mpirun -np 2`): training throughput of the digits cluster-
// attention classifier on 1 rank and on 2 data-parallel ranks (one thread each, the same
// micro-batch per rank: weak scaling), and how much of the gradient all-reduce time is hidden
// behind backward. Rounds interleave three phases so all see the same machine:
//   one:     rank 0 trains alone (DataParallel without a group) while rank 1 sleeps
//   overlap: both ranks, buckets all-reduced asynchronously from the backward hooks
//   sync:    both ranks, every bucket all-reduced after backward (the baseline without overlap)
// scaling_2_over_1 = (samples/s on 2 ranks, overlap) / (samples/s on 1 rank);
// comm_hidden_fraction = 1 - (exposed comm after backward, overlap) / (comm time, sync), both
// timed after a barrier that follows every rank's backward (so a slow rank's backward is not
// counted as communication); the step times are reported too, to show what the overlap buys.
#include <ATen/Parallel.h>
#include <mpi.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/bench.h"
#include "common/error.h"
#include "runtime/training/data_parallel.h"
#include "runtime/training/digits_model.h"
#include "sharding/communicator.h"

namespace tessera::bench {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct PhaseResult {
  double step_s = 0;     // per step
  double exposed_s = 0;  // per step: waiting for reductions after backward
  double backward_s = 0;
};

struct Trainer {
  training::DigitsClassifier model;
  training::DataParallel ddp;
  Trainer(const training::DigitsModelConfig& mc, training::OptimizerOptions oo,
          sharding::Communicator* dp)
      : model(mc, 1, nullptr), ddp(model.params().infos(), oo, dp, nullptr) {
    ddp.set_align_before_wait(true);
  }

  PhaseResult run(int steps, const torch::Tensor& x, const torch::Tensor& y, bool overlap) {
    ddp.set_overlap(overlap);
    ddp.times() = {};
    double backward = 0;
    const auto t0 = Clock::now();
    for (int s = 0; s < steps; ++s) {
      ddp.prepare_backward(true);
      auto loss = at::cross_entropy_loss(model.forward(x), y);
      const auto b0 = Clock::now();
      loss.backward();
      backward += std::chrono::duration<double>(Clock::now() - b0).count();
      ddp.finish_backward();
      ddp.step(1e-3);
    }
    PhaseResult r;
    r.step_s = std::chrono::duration<double>(Clock::now() - t0).count() / steps;
    r.exposed_s = ddp.times().exposed_comm_s / steps;
    r.backward_s = backward / steps;
    return r;
  }
};

// Waits for the other ranks without spinning a core (rank 1 while rank 0 trains alone).
void idle_barrier(sharding::Communicator& comm) {
  auto w = comm.barrier_async();
  while (!w->test()) std::this_thread::sleep_for(std::chrono::microseconds(500));
}

int run_train_bench(const BenchOptions& opt) {
  TESSERA_CHECK(opt.comm != nullptr && opt.world_size == 2,
                "tessera bench train runs under mpirun with 2 ranks (mpirun -np 2 tessera bench "
                "train), world size is ",
                opt.world_size);
  auto& comm = *opt.comm;
  at::set_num_threads(1);
  training::DigitsModelConfig mc;
  mc.dim = opt.quick ? 32 : 96;
  mc.depth = opt.quick ? 2 : 4;
  mc.heads = 4;
  mc.mlp_ratio = 2;
  const int64_t batch = opt.quick ? 16 : 32;  // per rank
  const int steps = opt.quick ? 3 : 8;
  const int rounds = opt.quick ? 2 : 5;
  training::OptimizerOptions oo;
  oo.bucket_mb = opt.quick ? 0.05 : 0.25;
  torch::manual_seed(17 + opt.rank);
  auto x = torch::rand({batch, 64}) * 16;
  auto y = torch::randint(0, 10, {batch}, torch::kLong);

  Trainer two(mc, oo, &comm);
  std::unique_ptr<Trainer> one;
  if (opt.rank == 0) one = std::make_unique<Trainer>(mc, oo, nullptr);
  // Warm-up of every phase.
  if (opt.rank == 0) one->run(1, x, y, true);
  idle_barrier(comm);
  two.run(1, x, y, true);
  two.run(1, x, y, false);

  std::vector<double> one_sps, two_sps, hidden, step_overlap, step_sync, exposed_o, comm_sync,
      backward_o;
  for (int r = 0; r < rounds; ++r) {
    double t1 = 0;
    if (opt.rank == 0) t1 = one->run(steps, x, y, true).step_s;
    idle_barrier(comm);
    comm.barrier();
    auto o = two.run(steps, x, y, true);
    comm.barrier();
    auto s = two.run(steps, x, y, false);
    // The slowest rank's figures (a step ends when the last rank ends it).
    auto t =
        torch::tensor({o.step_s, o.exposed_s, s.step_s, s.exposed_s, o.backward_s}, torch::kDouble);
    comm.all_reduce(t, sharding::ReduceOp::kMax);
    if (opt.rank == 0) {
      one_sps.push_back(static_cast<double>(batch) / t1);
      two_sps.push_back(2.0 * static_cast<double>(batch) / t[0].item<double>());
      step_overlap.push_back(t[0].item<double>());
      exposed_o.push_back(t[1].item<double>());
      step_sync.push_back(t[2].item<double>());
      comm_sync.push_back(t[3].item<double>());
      backward_o.push_back(t[4].item<double>());
      hidden.push_back(1.0 - t[1].item<double>() / std::max(t[3].item<double>(), 1e-12));
    }
  }
  if (opt.rank != 0) return 0;
  const double s1 = median(one_sps), s2 = median(two_sps);
  int64_t nparams = 0;
  for (const auto& p : two.ddp.params()) nparams += p.param.numel();
  nlohmann::json out = {{"scaling_2_over_1", s2 / s1},
                        {"comm_hidden_fraction", median(hidden)},
                        {"samples_per_s_1_rank", s1},
                        {"samples_per_s_2_ranks", s2},
                        {"samples_per_s_1_rank_min_max",
                         {*std::min_element(one_sps.begin(), one_sps.end()),
                          *std::max_element(one_sps.begin(), one_sps.end())}},
                        {"samples_per_s_2_ranks_min_max",
                         {*std::min_element(two_sps.begin(), two_sps.end()),
                          *std::max_element(two_sps.begin(), two_sps.end())}},
                        {"comm_hidden_fraction_min_max",
                         {*std::min_element(hidden.begin(), hidden.end()),
                          *std::max_element(hidden.begin(), hidden.end())}},
                        {"step_ms_2_ranks_overlap", 1e3 * median(step_overlap)},
                        {"step_ms_2_ranks_sync", 1e3 * median(step_sync)},
                        {"backward_ms_2_ranks_overlap", 1e3 * median(backward_o)},
                        {"exposed_comm_ms_overlap", 1e3 * median(exposed_o)},
                        {"comm_ms_sync", 1e3 * median(comm_sync)},
                        {"params", nparams},
                        {"buckets", two.ddp.num_buckets()},
                        {"batch_per_rank", batch},
                        {"rounds", rounds},
                        {"steps_per_round", steps}};
  if (opt.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("train bench: digits classifier, %lld params, %d buckets, batch %lld per rank\n",
                static_cast<long long>(nparams), two.ddp.num_buckets(),
                static_cast<long long>(batch));
    std::printf("  1 rank:  %8.1f samples/s\n  2 ranks: %8.1f samples/s  (scaling %.2f)\n", s1, s2,
                s2 / s1);
    std::printf(
        "  step 2 ranks: overlap %.2f ms, sync %.2f ms; all-reduce %.2f ms, exposed "
        "%.2f ms -> hidden %.2f\n",
        1e3 * median(step_overlap), 1e3 * median(step_sync), 1e3 * median(comm_sync),
        1e3 * median(exposed_o), median(hidden));
  }
  return 0;
}

}  // namespace

Benchmark train_benchmark() {
  return {"train",
          "Training samples/s on 1 vs 2 ranks and the all-reduce time hidden behind backward "
          "(run under mpirun -np 2)",
          run_train_bench};
}

}  // namespace tessera::bench
