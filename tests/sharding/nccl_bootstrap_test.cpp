// The NCCL backend's bootstrap, which needs no GPU and runs wherever Tessera is built with NCCL:
// the NCCL unique id is created on the root and broadcast over MPI (the real ncclGetUniqueId, not
// a stand-in), and two ranks choosing one device are refused before NCCL is touched. Under mpirun
// with 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "sharding/mpi/mpi_env.h"
#include "sharding/nccl/nccl_communicator.h"

namespace tessera::sharding {
namespace {

// Every rank's 128 bytes, gathered to every rank.
std::vector<std::array<char, 128>> gather_ids(const std::array<char, 128>& mine) {
  std::vector<std::array<char, 128>> all(mpi::world_size());
  EXPECT_EQ(MPI_Allgather(mine.data(), 128, MPI_BYTE, all.data(), 128, MPI_BYTE, MPI_COMM_WORLD),
            MPI_SUCCESS);
  return all;
}

TEST(NcclBootstrap, UniqueIdCreatedOnTheRootReachesEveryRank) {
  const int size = mpi::world_size();
  for (int root : {0, size - 1}) {
    const auto id = nccl_unique_id_over_mpi(MPI_COMM_WORLD, root);
    const auto all = gather_ids(id);
    for (int r = 0; r < size; ++r) EXPECT_EQ(all[r], all[root]) << "rank " << r << " root " << root;
    EXPECT_TRUE(std::any_of(id.begin(), id.end(), [](char c) { return c != 0; }))
        << "an id of zeros was never created";
    // A second call makes a new id (NCCL ids carry a fresh random magic): the broadcast does not
    // hand out a stale buffer.
    const auto again = nccl_unique_id_over_mpi(MPI_COMM_WORLD, root);
    EXPECT_NE(again, id);
    EXPECT_EQ(gather_ids(again)[0], again);
  }
}

TEST(NcclBootstrap, TwoRanksOnOneGpuAreRefusedClearly) {
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

}  // namespace
}  // namespace tessera::sharding
