// `tessera bench sp_decode`: decode over a KV cache sharded by sequence across every rank of the
// job versus the same decode on one rank holding the whole context, in one run. Reports, per
// context length (4 K to 256 K tokens), the time of one decode step (append one token + attention)
// both ways, the speed-up, the bytes the communicator moved per step (which must not grow with
// the context) and the largest difference between the two outputs.
#include <ATen/Parallel.h>
#include <mpi.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/error.h"
#include "runtime/models/layers/sequence_sharded_kv.h"

namespace tessera::bench {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

constexpr int64_t kHeadsQ = 8, kHeadsKv = 2, kHeadDim = 64, kChunk = 8192, kBlock = 16;

models::SequenceShardedKVConfig config(int64_t max_len) {
  models::SequenceShardedKVConfig c;
  c.cache.num_layers = 1;
  c.cache.batch_size = 1;
  c.cache.max_len = max_len;
  c.cache.num_kv_heads = kHeadsKv;
  c.cache.head_dim = kHeadDim;
  c.cache.max_chunk_tokens = kChunk;
  c.cache.windows = {0};
  c.block_tokens = kBlock;
  return c;
}

// The context's keys and values, the same on every rank (one seed); each cache keeps its share.
void fill(std::vector<models::SequenceShardedKVCache*> caches, int64_t tokens) {
  torch::manual_seed(7);
  for (int64_t p = 0; p < tokens; p += kChunk) {
    const int64_t n = std::min(kChunk, tokens - p);
    auto k = torch::randn({1, n, kHeadsKv, kHeadDim});
    auto v = torch::randn({1, n, kHeadsKv, kHeadDim});
    auto pos = torch::arange(p, p + n, torch::kLong).unsqueeze(0);
    for (auto* c : caches) c->append(0, k, v, pos);
  }
}

}  // namespace

int run_sp_decode_bench(const BenchOptions& opt) {
  TESSERA_CHECK(opt.comm != nullptr, "bench sp_decode needs the world communicator");
  sharding::Communicator& comm = *opt.comm;
  const std::vector<int64_t> contexts = opt.quick
                                            ? std::vector<int64_t>{1024, 4096}
                                            : std::vector<int64_t>{4096, 16384, 65536, 262144};
  // Decode steps per context: short contexts are cheap, so they get more steps (their few
  // milliseconds are the most exposed to scheduling noise on a shared machine).
  auto steps_for = [&](int64_t ctx) {
    return static_cast<int>(
        std::clamp<int64_t>((opt.quick ? (1 << 18) : (1 << 22)) / ctx, opt.quick ? 3 : 11, 101));
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHeadDim));
  nlohmann::json rows = nlohmann::json::array();
  if (opt.rank == 0 && !opt.json) {
    std::printf(
        "# tessera bench sp_decode: %d ranks, Hq=%lld Hkv=%lld D=%lld, %d-%d steps, %d torch "
        "threads (median of steps; best = fastest step of each)\n%10s %14s %12s %12s %9s %12s "
        "%12s\n",
        comm.size(), static_cast<long long>(kHeadsQ), static_cast<long long>(kHeadsKv),
        static_cast<long long>(kHeadDim), steps_for(contexts.back()), steps_for(contexts.front()),
        at::get_num_threads(), "tokens", "bytes/step", "1rank_ms", "sharded_ms", "speedup",
        "speedup_best", "max_diff");
  }
  std::vector<double> bytes_per_step;
  for (int64_t ctx : contexts) {
    const int steps = steps_for(ctx);
    const auto cfg = config(ctx + steps);
    models::SequenceShardedKVCache sharded(cfg, &comm);
    // The baseline: the whole context on rank 0 (the other ranks wait at the barrier).
    std::unique_ptr<models::SequenceShardedKVCache> single;
    if (opt.rank == 0) single = std::make_unique<models::SequenceShardedKVCache>(cfg, nullptr);
    std::vector<models::SequenceShardedKVCache*> caches{&sharded};
    if (single) caches.push_back(single.get());
    fill(caches, ctx);

    std::vector<double> t_single, t_sharded;
    int64_t bytes = -1;
    double max_diff = 0.0;
    torch::manual_seed(11);
    for (int s = 0; s < steps; ++s) {
      auto q = torch::randn({1, 1, kHeadsQ, kHeadDim});
      auto k = torch::randn({1, 1, kHeadsKv, kHeadDim});
      auto v = torch::randn({1, 1, kHeadsKv, kHeadDim});
      auto pos = torch::full({1, 1}, ctx + s, torch::kLong);
      torch::Tensor want;
      comm.barrier();
      if (single) {
        const auto t0 = Clock::now();
        single->append(0, k, v, pos);
        want = single->attention(0, q, pos, scale);
        t_single.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      comm.barrier();
      const int64_t before = comm.stats().bytes;
      const auto t0 = Clock::now();
      sharded.append(0, k, v, pos);
      auto got = sharded.attention(0, q, pos, scale);
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      const int64_t moved = comm.stats().bytes - before;
      TESSERA_CHECK(bytes < 0 || bytes == moved,
                    "bytes per decode step changed within one "
                    "context: ",
                    bytes, " then ", moved);
      bytes = moved;
      auto slowest = torch::full({1}, ms, torch::kDouble);
      comm.all_reduce(slowest, sharding::ReduceOp::kMax);
      t_sharded.push_back(slowest.item<double>());
      if (single) max_diff = std::max(max_diff, (got - want).abs().max().item<double>());
    }
    bytes_per_step.push_back(static_cast<double>(bytes));
    if (opt.rank == 0) {
      const double one = median(t_single), many = median(t_sharded);
      // Best-of-steps as well: on a shared machine the fastest step is the least disturbed one.
      const double best_one = *std::min_element(t_single.begin(), t_single.end());
      const double best_many = *std::min_element(t_sharded.begin(), t_sharded.end());
      rows.push_back({{"tokens", ctx},
                      {"steps", steps},
                      {"bytes_per_step", bytes},
                      {"one_rank_ms", one},
                      {"sharded_ms", many},
                      {"speedup", one / many},
                      {"speedup_best", best_one / best_many},
                      {"max_abs_diff", max_diff}});
      if (!opt.json) {
        std::printf("%10lld %14lld %12.2f %12.2f %9.3f %12.3f %12.3g\n",
                    static_cast<long long>(ctx), static_cast<long long>(bytes), one, many,
                    one / many, best_one / best_many, max_diff);
      }
    }
  }
  const double lo = *std::min_element(bytes_per_step.begin(), bytes_per_step.end());
  const double hi = *std::max_element(bytes_per_step.begin(), bytes_per_step.end());
  if (opt.rank == 0) {
    nlohmann::json out;
    out["world_size"] = comm.size();
    out["torch_threads"] = at::get_num_threads();
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
          "Decode over a sequence-sharded KV cache on every rank vs one rank (run under mpirun)",
          run_sp_decode_bench};
}

}  // namespace tessera::bench
