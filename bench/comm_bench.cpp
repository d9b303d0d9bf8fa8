// `tessera bench comm`: an nccl-tests-style sweep (8 B to 64 MB) of every collective through
// Tessera's Communicator and through the raw MPI call on a duplicate of the same communicator,
// interleaved in one run so that both see the same machine. Reports time, algbw and busbw
// (all-reduce 2(n-1)/n; all-gather, reduce-scatter, all-to-all (n-1)/n; broadcast 1) and, for
// all-reduce, the ratio ours / MPI.
#include <mpi.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "bench/timing.h"
#include "common/error.h"
#include "sharding/communicator.h"

namespace tessera::bench {

namespace {

using Clock = std::chrono::steady_clock;

struct Collective {
  const char* name;
  double bus_factor;  // busbw = algbw * factor
  // Elements of the full buffer must be a multiple of the world size (per-rank chunks).
  bool chunked;
};

// Both sides write into preallocated outputs, so the sweep times communication, not allocation.
struct Buffers {
  torch::Tensor full;            // [elems] float32: the input of every collective but all_gather
  torch::Tensor chunk;           // [elems / world]: all_gather input
  torch::Tensor out;             // [elems]: raw MPI outputs
  torch::Tensor ours_gathered;   // [world, elems / world]
  torch::Tensor ours_scattered;  // [elems / world]
  torch::Tensor ours_exchanged;  // [elems]
};

// Runs `ops` iterations of one side; returns the slowest rank's time per iteration (the
// collective is done when the last rank is done), in microseconds.
double timed(MPI_Comm raw, int iters, const std::function<void()>& op) {
  MPI_Barrier(raw);
  const auto t0 = Clock::now();
  for (int i = 0; i < iters; ++i) op();
  double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / iters;
  MPI_Allreduce(MPI_IN_PLACE, &us, 1, MPI_DOUBLE, MPI_MAX, raw);
  return us;
}

}  // namespace

int run_comm_bench(const BenchOptions& opt) {
  TESSERA_CHECK(opt.comm != nullptr, "bench comm needs the world communicator");
  TESSERA_CHECK(opt.world_size >= 2,
                "bench comm measures collectives between ranks: run it "
                "under mpirun with at least 2 ranks (world size is ",
                opt.world_size, ")");
  sharding::Communicator& comm = *opt.comm;
  const int world = comm.size();
  MPI_Comm raw = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);

  const std::vector<Collective> collectives = {{"all_reduce", 2.0 * (world - 1) / world, false},
                                               {"all_gather", 1.0 * (world - 1) / world, true},
                                               {"reduce_scatter", 1.0 * (world - 1) / world, true},
                                               {"all_to_all", 1.0 * (world - 1) / world, true},
                                               {"broadcast", 1.0, false}};
  std::vector<int64_t> sizes;
  const int64_t max_bytes = opt.quick ? (1 << 20) : (64 << 20);
  for (int64_t b = 8; b <= max_bytes; b *= opt.quick ? 16 : 2) sizes.push_back(b);

  nlohmann::json out;
  out["world_size"] = world;
  out["backend"] = comm.backend_name();
  if (opt.rank == 0 && !opt.json) {
    std::printf(
        "# tessera bench comm: %d ranks, %s backend vs raw MPI (medians over interleaved "
        "rounds; ratio = median of per-round ours/MPI; results checked equal to MPI's first)\n",
        world, comm.backend_name().c_str());
  }
  std::vector<double> ratios_1k_16m;
  double max_diff = 0;  // largest |ours - MPI| over every collective and size
  for (const auto& c : collectives) {
    if (opt.rank == 0 && !opt.json) {
      std::printf("\n%-14s %10s %11s %11s %8s %9s %9s %9s\n", c.name, "bytes", "ours_us", "mpi_us",
                  "ratio", "algbw", "busbw", "mpi_busbw");
    }
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t bytes : sizes) {
      int64_t elems = std::max<int64_t>(1, bytes / 4);
      if (c.chunked) elems = std::max<int64_t>(1, elems / world) * world;
      const int64_t real_bytes = elems * 4;
      // Zeros: sums stay zero, so repeated in-place all-reduces never reach inf.
      Buffers buf{torch::zeros({elems}),         torch::zeros({elems / world}),
                  torch::zeros({elems}),         torch::zeros({world, elems / world}),
                  torch::zeros({elems / world}), torch::zeros({elems})};
      const int iters = static_cast<int>(std::clamp<int64_t>((4 << 20) / real_bytes, 1, 200));
      const int n_chunk = static_cast<int>(elems / world);
      const int n = static_cast<int>(elems);
      double row_diff = 0;
      std::function<void()> ours, mpi;
      const std::string name = c.name;
      if (name == "all_reduce") {
        ours = [&] { comm.all_reduce(buf.full, sharding::ReduceOp::kSum); };
        mpi = [&] { MPI_Allreduce(MPI_IN_PLACE, buf.full.data_ptr(), n, MPI_FLOAT, MPI_SUM, raw); };
      } else if (name == "all_gather") {
        ours = [&] { comm.all_gather(buf.chunk, buf.ours_gathered); };
        mpi = [&] {
          MPI_Allgather(buf.chunk.data_ptr(), n_chunk, MPI_FLOAT, buf.out.data_ptr(), n_chunk,
                        MPI_FLOAT, raw);
        };
      } else if (name == "reduce_scatter") {
        ours = [&] { comm.reduce_scatter(buf.full, sharding::ReduceOp::kSum, buf.ours_scattered); };
        mpi = [&] {
          MPI_Reduce_scatter_block(buf.full.data_ptr(), buf.out.data_ptr(), n_chunk, MPI_FLOAT,
                                   MPI_SUM, raw);
        };
      } else if (name == "all_to_all") {
        ours = [&] { comm.all_to_all(buf.full, buf.ours_exchanged); };
        mpi = [&] {
          MPI_Alltoall(buf.full.data_ptr(), n_chunk, MPI_FLOAT, buf.out.data_ptr(), n_chunk,
                       MPI_FLOAT, raw);
        };
      } else {
        ours = [&] { comm.broadcast(buf.full, 0); };
        mpi = [&] { MPI_Bcast(buf.full.data_ptr(), n, MPI_FLOAT, 0, raw); };
      }
      // Correctness first: rank-dependent small integers (exact in float sums) through ours and
      // through MPI into separate outputs; the results must be identical.
      {
        auto input = (torch::arange(elems, torch::kFloat) + 1000 * opt.rank).fmod(97);
        auto chunk_in = input.narrow(0, 0, elems / world).clone();
        torch::Tensor a, b;
        if (name == "all_reduce" || name == "broadcast") {
          a = input.clone();
          b = input.clone();
          if (name == "all_reduce") {
            comm.all_reduce(a, sharding::ReduceOp::kSum);
            MPI_Allreduce(MPI_IN_PLACE, b.data_ptr(), n, MPI_FLOAT, MPI_SUM, raw);
          } else {
            comm.broadcast(a, 0);
            MPI_Bcast(b.data_ptr(), n, MPI_FLOAT, 0, raw);
          }
        } else if (name == "all_gather") {
          a = comm.all_gather(chunk_in).flatten();
          b = torch::empty({elems});
          MPI_Allgather(chunk_in.data_ptr(), n_chunk, MPI_FLOAT, b.data_ptr(), n_chunk, MPI_FLOAT,
                        raw);
        } else if (name == "reduce_scatter") {
          a = comm.reduce_scatter(input, sharding::ReduceOp::kSum).flatten();
          b = torch::empty({elems / world});
          MPI_Reduce_scatter_block(input.data_ptr(), b.data_ptr(), n_chunk, MPI_FLOAT, MPI_SUM,
                                   raw);
        } else {
          a = comm.all_to_all(input).flatten();
          b = torch::empty({elems});
          MPI_Alltoall(input.data_ptr(), n_chunk, MPI_FLOAT, b.data_ptr(), n_chunk, MPI_FLOAT, raw);
        }
        double diff = a.numel() == b.numel() ? (a - b).abs().max().item<double>() : 1e30;
        MPI_Allreduce(MPI_IN_PLACE, &diff, 1, MPI_DOUBLE, MPI_MAX, raw);
        max_diff = std::max(max_diff, diff);
        row_diff = diff;
      }
      // Warm-up (first touch, MPI's connection set-up) also sizes the run: about 0.4 s per size
      // (0.1 s with --quick), at least 9 rounds.
      timed(raw, 1, ours);
      const double est_us = timed(raw, iters, mpi) * iters;
      const double budget_us = opt.quick ? 3e4 : 4e5;
      const int rounds = static_cast<int>(
          std::clamp(budget_us / (2.0 * est_us), opt.quick ? 5.0 : 9.0, opt.quick ? 9.0 : 61.0));
      // Interleaved rounds whose order alternates, so that the machine's load drifts over both
      // sides alike; the ratio is the median of each round's ours / MPI pair.
      std::vector<double> t_ours, t_mpi, pair_ratio;
      for (int r = 0; r < rounds; ++r) {
        if (r % 2 == 0) {
          t_ours.push_back(timed(raw, iters, ours));
          t_mpi.push_back(timed(raw, iters, mpi));
        } else {
          t_mpi.push_back(timed(raw, iters, mpi));
          t_ours.push_back(timed(raw, iters, ours));
        }
        pair_ratio.push_back(t_ours.back() / t_mpi.back());
      }
      const Spread ours_s = spread_of(t_ours), mpi_s = spread_of(t_mpi);
      const Spread ratio_s = spread_of(pair_ratio);
      const double ours_us = ours_s.median, mpi_us = mpi_s.median;
      const double ratio = ratio_s.median;
      const double algbw = real_bytes / ours_us / 1e3;  // GB/s
      const double mpi_algbw = real_bytes / mpi_us / 1e3;
      rows.push_back({{"bytes", real_bytes},
                      {"ours_us", ours_us},
                      {"mpi_us", mpi_us},
                      {"ratio", ratio},
                      {"ours_us_p10", ours_s.p10},
                      {"ours_us_p90", ours_s.p90},
                      {"mpi_us_p10", mpi_s.p10},
                      {"mpi_us_p90", mpi_s.p90},
                      {"ratio_p10", ratio_s.p10},
                      {"ratio_p90", ratio_s.p90},
                      {"max_abs_diff_vs_mpi", row_diff},
                      {"rounds", rounds},
                      {"algbw_gbps", algbw},
                      {"busbw_gbps", algbw * c.bus_factor},
                      {"mpi_busbw_gbps", mpi_algbw * c.bus_factor}});
      if (name == "all_reduce" && real_bytes >= 1024 && real_bytes <= (16 << 20)) {
        ratios_1k_16m.push_back(ratio);
      }
      if (opt.rank == 0 && !opt.json) {
        std::printf("%-14s %10lld %11.2f %11.2f %8.3f %9.3f %9.3f %9.3f\n", "",
                    static_cast<long long>(real_bytes), ours_us, mpi_us, ratio, algbw,
                    algbw * c.bus_factor, mpi_algbw * c.bus_factor);
      }
    }
    out[c.name] = rows;
  }
  out["max_abs_diff_vs_mpi"] = max_diff;
  out["benchmark"] = "comm";
  out["quick"] = opt.quick;
  if (!ratios_1k_16m.empty()) {
    out["all_reduce_ratio_median_1k_16m"] = median_of(ratios_1k_16m);
    out["all_reduce_ratio_max_1k_16m"] =
        *std::max_element(ratios_1k_16m.begin(), ratios_1k_16m.end());
  }
  if (opt.rank == 0) {
    if (opt.json) {
      std::printf("%s\n", out.dump().c_str());
    } else if (!ratios_1k_16m.empty()) {
      std::printf(
          "\nall_reduce ours/MPI, 1 KB - 16 MB: median %.3f, max %.3f; max |ours - MPI| over "
          "every collective: %g\n",
          out["all_reduce_ratio_median_1k_16m"].get<double>(),
          out["all_reduce_ratio_max_1k_16m"].get<double>(), max_diff);
    }
  }
  MPI_Comm_free(&raw);
  return 0;
}

Benchmark comm_benchmark() {
  return {"comm",
          "Collectives through the Communicator vs raw MPI: time, algbw, busbw (run under mpirun)",
          run_comm_bench};
}

}  // namespace tessera::bench
