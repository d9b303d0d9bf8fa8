// Torch-free MPI set-up helpers: agreeing on one rank's error, gathering strings.
#include <gtest/gtest.h>

#include <string>

#include "sharding/mpi/mpi_env.h"

namespace tessera::sharding {
namespace {

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
