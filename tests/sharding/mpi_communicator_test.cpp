// MPI communicator collectives against a single-process computation: every rank builds every
// rank's input deterministically, so each can compute the expected result locally.
#include <gtest/gtest.h>
#include <torch/types.h>

#include "common/error.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/mpi/mpi_env.h"

namespace tessera::sharding {
namespace {

torch::Tensor input_of(int rank, int64_t n, torch::ScalarType dtype) {
  auto gen = torch::arange(n, torch::kDouble) * (rank + 1) * 0.37 - 3.0 * rank + 0.5;
  if (dtype == torch::kLong) return (gen * 10).round().to(dtype);
  return gen.to(dtype);
}

class Collectives : public ::testing::TestWithParam<torch::ScalarType> {};

TEST_P(Collectives, AllReduceEqualsLocalComputation) {
  MpiCommunicator comm;
  const auto dtype = GetParam();
  for (int64_t n : {0, 1, 7, 1000}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
      if (op == ReduceOp::kAvg && dtype == torch::kLong) continue;
      auto t = input_of(comm.rank(), n, dtype);
      comm.all_reduce(t, op);
      // Expected: reduce in double (fp16/bf16 ranks add pairwise in fp32 then round; compare
      // with the dtype's precision).
      std::vector<torch::Tensor> all;
      for (int r = 0; r < comm.size(); ++r) all.push_back(input_of(r, n, dtype).to(torch::kDouble));
      auto stacked = torch::stack(all);
      torch::Tensor expect = op == ReduceOp::kSum   ? stacked.sum(0)
                             : op == ReduceOp::kMax ? std::get<0>(stacked.max(0))
                             : op == ReduceOp::kMin ? std::get<0>(stacked.min(0))
                                                    : stacked.mean(0);
      const double tol = dtype == torch::kHalf ? 2e-2 : dtype == torch::kBFloat16 ? 1e-1 : 1e-6;
      EXPECT_TRUE(torch::allclose(t.to(torch::kDouble), expect, tol, tol))
          << "n=" << n << " op=" << reduce_op_name(op) << " dtype=" << dtype;
    }
  }
}

TEST_P(Collectives, BroadcastAndAllGather) {
  MpiCommunicator comm;
  const auto dtype = GetParam();
  for (int root = 0; root < comm.size(); ++root) {
    auto t = input_of(comm.rank(), 13, dtype);
    comm.broadcast(t, root);
    EXPECT_TRUE(torch::equal(t, input_of(root, 13, dtype)));
  }
  auto g = comm.all_gather(input_of(comm.rank(), 5, dtype));
  ASSERT_EQ(g.sizes(), (torch::IntArrayRef{comm.size(), 5}));
  for (int r = 0; r < comm.size(); ++r) EXPECT_TRUE(torch::equal(g[r], input_of(r, 5, dtype)));
}

INSTANTIATE_TEST_SUITE_P(DTypes, Collectives,
                         ::testing::Values(torch::kFloat, torch::kHalf, torch::kBFloat16,
                                           torch::kLong));

TEST(MpiCommunicator, NonContiguousInPlace) {
  MpiCommunicator comm;
  auto base = torch::ones({4, 6});
  auto view = base.t();  // non-contiguous
  comm.all_reduce(view);
  EXPECT_TRUE(torch::equal(base, torch::full({4, 6}, static_cast<float>(comm.size()))));
}

TEST(MpiCommunicator, BadArgumentsAreNamed) {
  MpiCommunicator comm;
  auto t = torch::ones({2}, torch::kLong);
  EXPECT_THROW(comm.all_reduce(t, ReduceOp::kAvg), Error);
  EXPECT_THROW(comm.broadcast(t, comm.size()), Error);
}

TEST(MpiEnv, AgreeOnErrorReportsLowestFailingRank) {
  const int size = mpi::world_size(), rank = mpi::world_rank();
  EXPECT_EQ(mpi::agree_on_error(""), "");
  const std::string mine = rank == size - 1 ? "bad input on the last rank" : "";
  const std::string agreed = mpi::agree_on_error(mine);
  EXPECT_NE(agreed.find("bad input on the last rank"), std::string::npos) << agreed;
  auto names = mpi::gather_strings("r" + std::to_string(rank));
  if (rank == 0) {
    ASSERT_EQ(static_cast<int>(names.size()), size);
    for (int r = 0; r < size; ++r) EXPECT_EQ(names[r], "r" + std::to_string(r));
  }
}

}  // namespace
}  // namespace tessera::sharding
