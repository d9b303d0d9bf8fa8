// The NCCL backend. The one-rank-per-GPU refusal needs no GPU and runs everywhere (under mpirun
// -np 2 both ranks claim cuda:0). The collectives run at world size 1 on a GPU machine whose
// libtorch has CUDA, and skip otherwise.
#include <gtest/gtest.h>
#include <torch/types.h>

#include "common/device.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/nccl/nccl_communicator.h"
#include "sharding/watchdog.h"

namespace tessera::sharding {
namespace {

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    mpi::init(nullptr, nullptr);
    Watchdog::global().set_timeout(std::chrono::seconds(60));
  }
  void TearDown() override { mpi::finalize(); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

TEST(Nccl, TwoRanksOnOneGpuAreRefusedClearly) {
  if (mpi::world_size() == 1) {
    EXPECT_NO_THROW(check_one_rank_per_device(MPI_COMM_WORLD, 0));
    return;
  }
  try {
    check_one_rank_per_device(MPI_COMM_WORLD, 0);
    FAIL() << "every rank on cuda:0 must be refused";
  } catch (const CollectiveError& e) {
    EXPECT_NE(e.message().find("NCCL needs one rank per GPU: ranks 0 and 1 both chose cuda:0"),
              std::string::npos)
        << e.what();
  }
  // Distinct devices per rank are accepted.
  EXPECT_NO_THROW(check_one_rank_per_device(MPI_COMM_WORLD, mpi::world_rank()));
}

bool cuda_usable(std::string* why) {
  if (query_devices().count == 0) {
    *why = "no CUDA device";
    return false;
  }
  if (!torch::hasCUDA()) {
    *why = "libtorch was built without CUDA (NCCL tensors cannot be allocated)";
    return false;
  }
  return true;
}

TEST(Nccl, WorldSizeOneCollectives) {
  std::string why;
  if (!cuda_usable(&why)) GTEST_SKIP() << why;
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  auto cuda = torch::TensorOptions().device(torch::kCUDA, 0);
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16, torch::kLong}) {
    for (int64_t n : {0, 1, 7, 1001}) {
      auto x = (torch::arange(n * 2, torch::kLong) % 17 - 8).view({n, 2}).to(dtype);
      for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
        if (op == ReduceOp::kAvg && dtype == torch::kLong) continue;
        auto t = x.to(cuda);
        comm.all_reduce(t, op);
        EXPECT_TRUE(torch::equal(t.cpu(), x));
      }
      auto b = x.to(cuda);
      comm.broadcast(b, 0);
      EXPECT_TRUE(torch::equal(b.cpu(), x));
      EXPECT_TRUE(torch::equal(comm.all_gather(x.to(cuda)).cpu(), x.unsqueeze(0)));
      EXPECT_TRUE(torch::equal(comm.reduce_scatter(x.to(cuda)).cpu(), x));
      EXPECT_TRUE(torch::equal(comm.all_to_all(x.to(cuda)).cpu(), x));
    }
  }
  auto w = comm.all_reduce_async(torch::ones({1024}, cuda), ReduceOp::kSum);
  w->wait(std::chrono::seconds(30));
  EXPECT_TRUE(w->test());
  comm.barrier();
  EXPECT_GT(comm.seq(), 0u);
  EXPECT_FALSE(comm.aborted());
  comm.abort("test");
  EXPECT_TRUE(comm.aborted());
  auto t = torch::ones({4}, cuda);
  EXPECT_THROW(comm.all_reduce(t, ReduceOp::kSum), Error);
}

TEST(Nccl, CpuTensorsAreRefused) {
  std::string why;
  if (!cuda_usable(&why)) GTEST_SKIP() << why;
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  auto t = torch::ones({4});
  EXPECT_THROW(comm.all_reduce(t, ReduceOp::kSum), Error);
}

}  // namespace
}  // namespace tessera::sharding
