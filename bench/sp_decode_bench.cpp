// `tessera bench sp_decode`: one decode step (append the new token's K/V, attend) over a long
// context whose KV is sharded by sequence across the ranks (SequencePlacement: blocks of 16
// tokens dealt round-robin; each rank attends over its tokens with the fast paged decode kernel,
// one all-gather of the partial outputs and log-sum-exps, the LSE merge) against the same step on
// ONE rank that holds the whole context and runs the same fast paged kernel with as many threads
// as all the sharded ranks together (2 ranks x 1 thread vs 1 rank x 2 threads on this machine).
// Both sides use the same cores: the sharded form buys KV memory per rank (a context that does
// not fit one device fits several), not speed; the speedup field says what it costs or gains.
// Steps alternate (one-rank step, sharded step, ...) so machine drift hits both alike; medians
// and p10/p90 of the steps. While rank 0 runs the one-rank step the other ranks sleep (a polled
// non-blocking barrier), so its threads have the cores. Per context: the time of both, the
// sharded side's split into local attention and communication (what is left to gain), bytes
// moved per step (constant in the context) and the largest difference of the two outputs.
#include <ATen/Parallel.h>
#include <mpi.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/bench.h"
#include "bench/timing.h"
#include "common/error.h"
#include "kernels/ops/merge_ops.h"
#include "kernels/ops/paged_attention_ops.h"
#include "kernels/ops/paged_kv_append_ops.h"
#include "runtime/models/layers/sequence_sharded_kv.h"
#include "sharding/communicator.h"

namespace tessera::bench {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kHeadsQ = 8, kHeadsKv = 2, kHeadDim = 64, kChunk = 8192, kBlock = 16;

// Positions [0, len) that `rank` holds under `placement`.
int64_t tokens_held(const models::SequencePlacement& pl, int rank, int64_t len) {
  const int64_t round = pl.block_tokens * pl.world;
  const int64_t tail = len % round - static_cast<int64_t>(rank) * pl.block_tokens;
  return len / round * pl.block_tokens + std::clamp<int64_t>(tail, 0, pl.block_tokens);
}

// One sequence in a paged fp32 cache: logical block i lives in physical block i + 1 (block 0 is
// the null block), so the block table is 1, 2, 3, ...
struct PagedSequence {
  torch::Tensor k, v;   // [blocks + 1, kBlock, kHeadsKv, kHeadDim]
  torch::Tensor table;  // [1, blocks] int32
  int64_t len = 0;      // tokens stored
  explicit PagedSequence(int64_t capacity_tokens) {
    const int64_t blocks = (capacity_tokens + kBlock - 1) / kBlock;
    k = torch::zeros({blocks + 1, kBlock, kHeadsKv, kHeadDim});
    v = torch::zeros_like(k);
    table = torch::arange(1, blocks + 1, torch::kInt).unsqueeze(0);
  }
  int64_t bytes() const { return 2 * k.numel() * 4; }
  // Appends rows [n, kHeadsKv, kHeadDim] at local indices [len, len + n).
  void append(const torch::Tensor& key, const torch::Tensor& value) {
    const int64_t n = key.size(0);
    auto slots = torch::arange(len, len + n, torch::kLong) + kBlock;  // + block 0
    kernels::paged_kv_append(key, value, slots, k, v);
    len += n;
  }
  // (out [1, Hq, D], lse [1, Hq]) of q [1, Hq, D] over every stored token.
  std::tuple<torch::Tensor, torch::Tensor> decode(const torch::Tensor& q, double scale) const {
    kernels::PagedAttentionOptions o;
    o.scale = scale;
    auto lens = torch::full({1}, static_cast<int32_t>(len), torch::kInt);
    return kernels::paged_decode(q, k, v, table, lens, o);
  }
};

// Rows of `k` (positions [p0, p0 + n)) that `rank` holds, in position order.
torch::Tensor rows_held(const torch::Tensor& k, const models::SequencePlacement& pl, int rank,
                        int64_t p0) {
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < k.size(0); ++i) {
    if (pl.owner(p0 + i) == rank) keep.push_back(i);
  }
  return k.index_select(0, torch::tensor(keep, torch::kLong));
}

// A barrier whose waiting ranks sleep instead of spinning, so that the one rank working has the
// machine's cores.
void sleeping_barrier(MPI_Comm comm) {
  MPI_Request req;
  MPI_Ibarrier(comm, &req);
  int done = 0;
  while (!done) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

int run_sp_decode_bench(const BenchOptions& opt) {
  TESSERA_CHECK(opt.comm != nullptr, "bench sp_decode needs the world communicator");
  sharding::Communicator& comm = *opt.comm;
  const int world = comm.size(), rank = comm.rank();
  MPI_Comm raw = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);
  const std::vector<int64_t> contexts = opt.quick
                                            ? std::vector<int64_t>{1024, 4096}
                                            : std::vector<int64_t>{4096, 16384, 65536, 262144};
  // Steps per context: short contexts are cheap, so they get more (their few milliseconds are the
  // most exposed to scheduling noise on a shared machine).
  auto steps_for = [&](int64_t ctx) {
    return static_cast<int>(std::clamp<int64_t>((opt.quick ? (1 << 18) : (1 << 23)) / ctx,
                                                opt.quick ? 5 : 21, opt.quick ? 31 : 201));
  };
  const int sharded_threads = at::get_num_threads();
  const int single_threads = sharded_threads * world;  // the same cores as all ranks together
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  const models::SequencePlacement placement{kBlock, world};
  if (rank == 0 && !opt.json) {
    std::printf(
        "# tessera bench sp_decode: Hq=%lld Hkv=%lld D=%lld, fast paged decode on both sides: %d "
        "ranks x %d thread(s) (sequence-sharded) vs 1 rank x %d threads (whole context); medians "
        "[p10-p90] of %d-%d alternating steps\n%9s %11s %22s %22s %9s %10s %10s %10s\n",
        static_cast<long long>(kHeadsQ), static_cast<long long>(kHeadsKv),
        static_cast<long long>(kHeadDim), world, sharded_threads, single_threads,
        steps_for(contexts.back()), steps_for(contexts.front()), "tokens", "bytes/step",
        "1 rank ms", "sharded ms", "speedup", "local ms", "comm ms", "max diff");
  }
  nlohmann::json rows = nlohmann::json::array();
  std::vector<double> bytes_per_step;
  for (int64_t ctx : contexts) {
    const int steps = steps_for(ctx);
    PagedSequence mine(placement.max_local_tokens(ctx + steps));
    std::unique_ptr<PagedSequence> whole;
    if (rank == 0) whole = std::make_unique<PagedSequence>(ctx + steps);
    // The context: the same K/V on every rank (one seed); each keeps its share.
    torch::manual_seed(7);
    for (int64_t p = 0; p < ctx; p += kChunk) {
      const int64_t n = std::min(kChunk, ctx - p);
      auto k = torch::randn({n, kHeadsKv, kHeadDim});
      auto v = torch::randn({n, kHeadsKv, kHeadDim});
      mine.append(rows_held(k, placement, rank, p), rows_held(v, placement, rank, p));
      if (whole) whole->append(k, v);
    }
    TESSERA_CHECK(mine.len == tokens_held(placement, rank, ctx), "rank ", rank, " holds ", mine.len,
                  " tokens, placement says ", tokens_held(placement, rank, ctx));

    std::vector<double> t_single, t_sharded, t_local, t_comm;
    int64_t bytes = -1;
    double max_diff = 0.0;
    torch::manual_seed(11);
    auto gathered = torch::empty({world, 1, kHeadsQ, kHeadDim + 1});
    for (int s = 0; s < steps; ++s) {
      const int64_t pos = ctx + s;
      auto q = torch::randn({1, kHeadsQ, kHeadDim});
      auto k = torch::randn({1, kHeadsKv, kHeadDim});
      auto v = torch::randn({1, kHeadsKv, kHeadDim});
      // One rank, the whole context, every core.
      torch::Tensor want;
      if (rank == 0) {
        at::set_num_threads(single_threads);
        const auto t0 = Clock::now();
        whole->append(k, v);
        want = std::get<0>(whole->decode(q, scale));
        t_single.push_back(ms_since(t0));
        at::set_num_threads(sharded_threads);
      }
      sleeping_barrier(raw);
      // Sequence-sharded: the owner appends, every rank attends over its share, one all-gather of
      // [out | lse], the LSE merge.
      const int64_t before = comm.stats().bytes;
      const auto t0 = Clock::now();
      if (placement.owner(pos) == rank) mine.append(k, v);
      auto [out, lse] = mine.decode(q, scale);
      const auto t1 = Clock::now();
      comm.all_gather(torch::cat({out, lse.unsqueeze(-1)}, -1), gathered);
      auto got =
          std::get<0>(kernels::merge_attention_states(gathered.narrow(-1, 0, kHeadDim).contiguous(),
                                                      gathered.select(-1, kHeadDim).contiguous()));
      const double local_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
      double step[2] = {ms_since(t0), ms_since(t1)};
      // The step ends when the slowest rank is done; its comm share is that rank's.
      MPI_Allreduce(MPI_IN_PLACE, step, 2, MPI_DOUBLE, MPI_MAX, raw);
      const int64_t moved = comm.stats().bytes - before;
      TESSERA_CHECK(bytes < 0 || bytes == moved,
                    "bytes per decode step changed within one context: ", bytes, " then ", moved);
      bytes = moved;
      t_sharded.push_back(step[0]);
      t_comm.push_back(step[1]);
      t_local.push_back(local_ms);
      if (rank == 0) max_diff = std::max(max_diff, (got - want).abs().max().item<double>());
    }
    bytes_per_step.push_back(static_cast<double>(bytes));
    if (rank == 0) {
      const Spread one = spread_of(t_single), many = spread_of(t_sharded);
      const Spread ratio = spread_of(per_round_ratios(t_single, t_sharded));
      rows.push_back({{"tokens", ctx},
                      {"steps", steps},
                      {"bytes_per_step", bytes},
                      {"one_rank_ms", one.median},
                      {"one_rank_ms_spread", to_json(one)},
                      {"sharded_ms", many.median},
                      {"sharded_ms_spread", to_json(many)},
                      {"speedup", one.median / many.median},
                      {"speedup_per_step", to_json(ratio)},
                      {"sharded_local_ms", median_of(t_local)},
                      {"sharded_comm_ms", median_of(t_comm)},
                      {"kv_bytes_one_rank", whole->bytes()},
                      {"kv_bytes_per_sharded_rank", mine.bytes()},
                      {"max_abs_diff", max_diff}});
      if (!opt.json) {
        std::printf(
            "%9lld %11lld %8.3f [%5.3f-%5.3f] %8.3f [%5.3f-%5.3f] %8.3fx %10.3f %10.3f %10.2e\n",
            static_cast<long long>(ctx), static_cast<long long>(bytes), one.median, one.p10,
            one.p90, many.median, many.p10, many.p90, one.median / many.median, median_of(t_local),
            median_of(t_comm), max_diff);
      }
    }
  }
  MPI_Comm_free(&raw);
  const double lo = *std::min_element(bytes_per_step.begin(), bytes_per_step.end());
  const double hi = *std::max_element(bytes_per_step.begin(), bytes_per_step.end());
  if (rank == 0) {
    nlohmann::json out;
    out["benchmark"] = "sp_decode";
    out["quick"] = opt.quick;
    out["world_size"] = world;
    out["sharded_threads_per_rank"] = sharded_threads;
    out["one_rank_threads"] = single_threads;
    out["kernel"] = "paged_decode (fast CPU) on both sides";
    out["contexts"] = rows;
    // Relative spread of the bytes per decode step over all context lengths (0 = constant).
    out["bytes_per_step_spread"] = lo > 0 ? (hi - lo) / lo : 0.0;
    if (opt.json) {
      std::printf("%s\n", out.dump().c_str());
    } else {
      std::printf("bytes per step spread over contexts: %.3f%%\n",
                  100.0 * out["bytes_per_step_spread"].get<double>());
    }
  }
  return 0;
}

Benchmark sp_decode_benchmark() {
  return {"sp_decode",
          "Decode over a sequence-sharded paged KV cache on every rank vs one rank with all the "
          "threads (run under mpirun)",
          run_sp_decode_bench};
}

}  // namespace tessera::bench
