// main() for GoogleTest executables run under mpirun (or alone, as a world of one): MPI is
// initialised once through Tessera's own set-up, a stuck collective ends the test through the
// watchdog instead of hanging CI, only rank 0 prints, and the job fails if any rank fails (so a
// rank-local failure is never hidden).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>

#include "sharding/mpi/mpi_env.h"
#include "sharding/watchdog.h"

int main(int argc, char** argv) {
  namespace mpi = tessera::sharding::mpi;
  ::testing::InitGoogleTest(&argc, argv);
  mpi::init(&argc, &argv);
  tessera::sharding::Watchdog::global().set_timeout(std::chrono::seconds(60));
  const int rank = mpi::world_rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed) std::fprintf(stderr, "rank %d: some tests FAILED\n", rank);
  mpi::finalize();
  return any_failed;
}
