// Tessera::testing's tensor checks under mpirun -np 2 and 4: results of real collectives against
// references that rank 0 computes alone with plain libtorch, and rank-local differences that only
// the differing rank reports, with the place and the values. The DISABLED_ demos are what
// harness_failure_test runs to show a failure on one rank and a hang on one rank.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <chrono>
#include <cstdlib>
#include <string>

#include "sharding/communicator.h"
#include "testing/testing.h"

namespace tessera::testing {
namespace {

// Rank r's input: integers, so sums over 4 ranks are exact in fp32 and comparisons are exact.
torch::Tensor input_of(int r, int64_t rows, int64_t cols) {
  auto i = torch::arange(rows * cols, torch::kLong);
  return ((i * 5 + r * 11) % 13 - 6).view({rows, cols}).to(torch::kFloat);
}

bool contains(const ::testing::AssertionResult& r, const std::string& needle) {
  return std::string(r.message()).find(needle) != std::string::npos;
}

TEST(Harness, WorldIsTheJob) {
  EXPECT_EQ(size(), world().size);
  EXPECT_GE(rank(), 0);
  EXPECT_LT(rank(), size());
  EXPECT_EQ(cpu_comm().size(), size());
  EXPECT_EQ(comm().rank(), rank());
  // NCCL on the GPUs when every rank has one of its own, MPI on the CPU otherwise.
  const bool nccl = world().device_comm != nullptr;
  EXPECT_EQ(device().is_cuda(), nccl);
  EXPECT_EQ(comm().backend_name(), nccl ? "nccl" : "mpi");
  EXPECT_EQ(cpu_comm().backend_name(), "mpi");
}

TEST(Harness, AllReduceMatchesRankZerosReference) {
  auto x = input_of(rank(), 7, 3).to(device());  // comm() is NCCL where every rank has a GPU
  comm().all_reduce(x);
  torch::Tensor reference;
  if (rank() == 0) {
    reference = torch::zeros({7, 3}, torch::kDouble);
    for (int r = 0; r < size(); ++r) reference += input_of(r, 7, 3).to(torch::kDouble);
  }
  EXPECT_TRUE(matches_rank0(x, reference));
  EXPECT_TRUE(same_on_all_ranks(x));
}

TEST(Harness, ReduceScatterMatchesItsShardOfTheReference) {
  // 7 rows over 2 or 4 ranks: uneven parts, as reduce_scatter and tensor_split both cut them.
  const auto part = comm().reduce_scatter(input_of(rank(), 7, 3).to(device()));
  torch::Tensor reference;
  if (rank() == 0) {
    reference = torch::zeros({7, 3}, torch::kDouble);
    for (int r = 0; r < size(); ++r) reference += input_of(r, 7, 3).to(torch::kDouble);
  }
  EXPECT_TRUE(matches_rank0_shard(part, reference, 0));
}

TEST(Harness, BroadcastCarriesShapeAndDtype) {
  torch::Tensor t;
  if (rank() == 0) t = torch::arange(24, torch::kInt).view({2, 3, 4});
  const auto got = broadcast_from_rank0(t);
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(got.scalar_type(), torch::kInt);
  EXPECT_EQ(got.view(-1)[23].item<int>(), 23);
  // Zero elements travel too (shape only).
  torch::Tensor empty;
  if (rank() == 0) empty = torch::zeros({0, 5});
  EXPECT_EQ(broadcast_from_rank0(empty).sizes(), (std::vector<int64_t>{0, 5}));
}

TEST(Harness, OnlyTheDifferingRankFailsAndSaysWhere) {
  if (size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto t = torch::arange(12, torch::kFloat).view({3, 4});
  if (rank() == 1) t[1][2] = 100.0;
  const auto r = same_on_all_ranks(t);
  if (rank() == 1) {
    ASSERT_FALSE(r);
    EXPECT_TRUE(contains(r, "rank 1: 1 of 12 values differ from rank 0's")) << r.message();
    EXPECT_TRUE(contains(r, "first at [1, 2]: 100 vs 6")) << r.message();
  } else {
    EXPECT_TRUE(r) << r.message();
  }
}

TEST(Harness, ShapeDifferencesAreReportedNotCrashed) {
  if (size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const auto t = torch::zeros({rank() == 1 ? 5 : 4});
  const auto r = same_on_all_ranks(t);
  EXPECT_EQ(static_cast<bool>(r), rank() != 1);
  if (rank() == 1) EXPECT_TRUE(contains(r, "shape [5] but rank 0's has [4]")) << r.message();
}

TEST(Harness, TolerancesAreAbsoluteAndRelative) {
  const auto reference =
      rank() == 0 ? torch::tensor({1.0, 100.0}, torch::kDouble) : torch::Tensor();
  const auto close = torch::tensor({1.0f + 1e-4f, 100.0f * (1 + 1e-4f)});
  EXPECT_TRUE(matches_rank0(close, reference, {.atol = 2e-4, .rtol = 2e-4}));
  const auto r = matches_rank0(close, reference, {.atol = 1e-6, .rtol = 1e-6});
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r, "2 of 2 values differ")) << r.message();
  // NaN matches NaN, an infinity itself; NaN against a number does not.
  const auto special = rank() == 0 ? torch::tensor({NAN, INFINITY, 1.0f}) : torch::Tensor();
  EXPECT_TRUE(matches_rank0(torch::tensor({NAN, INFINITY, 1.0f}), special));
  EXPECT_FALSE(matches_rank0(torch::tensor({1.0f, INFINITY, 1.0f}), special));
}

TEST(Harness, IntegersCompareExactly) {
  // 2^53 + 1 is not a double: compared as integers, it still differs from 2^53.
  const int64_t big = (int64_t{1} << 53);
  const auto reference = rank() == 0 ? torch::tensor({big}, torch::kLong) : torch::Tensor();
  EXPECT_TRUE(matches_rank0(torch::tensor({big}, torch::kLong), reference));
  EXPECT_FALSE(matches_rank0(torch::tensor({big + 1}, torch::kLong), reference));
}

TEST(Harness, DeadlineCanBeSetPerTest) {
  const auto before = test_deadline();
  set_test_deadline(std::chrono::seconds(5));
  EXPECT_EQ(test_deadline(), std::chrono::seconds(5));
  set_test_deadline(before);
}

// --- demos, run by harness_failure_test with --gtest_also_run_disabled_tests ---------------------

TEST(HarnessDemo, DISABLED_FailsOnRankOne) {
  EXPECT_NE(rank(), 1) << "deliberate failure on rank 1 only";
}

TEST(HarnessDemo, DISABLED_PassesEverywhere) { EXPECT_TRUE(same_on_all_ranks(torch::ones({2}))); }

TEST(HarnessDemo, DISABLED_HangsOnRankOne) {
  if (const char* s = std::getenv("HARNESS_DEMO_DEADLINE_MS")) {
    set_test_deadline(std::chrono::milliseconds(std::atoll(s)));
  }
  // Rank 1 enters an all-reduce that no other rank joins; the others go on to the end of the test.
  if (rank() == 1) {
    auto t = torch::ones({4});
    cpu_comm().all_reduce(t);
  }
}

}  // namespace
}  // namespace tessera::testing
