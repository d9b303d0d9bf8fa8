// Tests as a user of Tessera writes them for tensor-parallel code: every rank holds a shard of a
// linear layer, and the result must equal what one process computes with the whole layer. Rank 0
// computes that reference alone (in fp64); the harness sends it to every rank and each rank checks
// its own result. Run with mpirun -np 2 or 4 (or srun -n 4 --mpi=pmix).
#include <gtest/gtest.h>
#include <torch/types.h>

#include "sharding/tensor_parallel.h"
#include "testing/testing.h"

namespace {

namespace tt = tessera::testing;
using tessera::sharding::column_parallel_linear;
using tessera::sharding::even_shard;
using tessera::sharding::row_parallel_linear;

constexpr int64_t kIn = 8, kOut = 12, kBatch = 5;

// Every rank builds the same full weights and inputs from one seed, then keeps its shard.
struct Layer {
  torch::Tensor x, weight, bias;
  Layer() {
    torch::manual_seed(1234);
    x = torch::randn({kBatch, kIn});
    weight = torch::randn({kOut, kIn});
    bias = torch::randn({kOut});
  }
  // The single-process result, on rank 0 only (the harness ignores the other ranks' argument).
  torch::Tensor reference() const {
    if (tt::rank() != 0) return {};
    return torch::addmm(bias.to(torch::kDouble), x.to(torch::kDouble),
                        weight.to(torch::kDouble).t());
  }
};

TEST(TensorParallel, ColumnParallelShardsAreSlicesOfTheFullOutput) {
  Layer l;
  const auto out = even_shard(kOut, tt::rank(), tt::size(), "out_features");
  const auto y = column_parallel_linear(l.x, l.weight.narrow(0, out.begin, out.size),
                                        l.bias.narrow(0, out.begin, out.size));
  EXPECT_TRUE(tt::matches_rank0_shard(y, l.reference(), /*dim=*/1, {.atol = 1e-5, .rtol = 1e-5}));
}

TEST(TensorParallel, RowParallelGivesTheFullOutputOnEveryRank) {
  Layer l;
  const auto in = even_shard(kIn, tt::rank(), tt::size(), "in_features");
  const auto y =
      row_parallel_linear(l.x.narrow(1, in.begin, in.size), l.weight.narrow(1, in.begin, in.size),
                          &tt::cpu_comm(), l.bias);
  EXPECT_TRUE(tt::matches_rank0(y, l.reference(), {.atol = 1e-5, .rtol = 1e-5}));
  // The all-reduce leaves bitwise the same values on every rank.
  EXPECT_TRUE(tt::same_on_all_ranks(y));
}

}  // namespace
