// main() for GoogleTest executables run under mpirun (or alone, as a world of one): MPI is
// initialised once through Tessera's own set-up, a stuck collective ends the test through the
// watchdog instead of hanging CI, rank 0 prints the usual report, the other ranks print only their
// failed assertions (prefixed with the rank), and the job fails if any rank fails (so a rank-local
// failure is never hidden). A run with skips and no failure on any rank exits with the skip code
// of tests/support/skip_exit.h on every rank, so ctest reports it as skipped.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "sharding/mpi/mpi_env.h"
#include "sharding/watchdog.h"
#include "tests/support/skip_exit.h"

namespace {

// The other ranks' report: each failed assertion, with the rank and the test it failed in.
class FailuresOnly : public ::testing::EmptyTestEventListener {
 public:
  explicit FailuresOnly(int rank) : rank_(rank) {}
  // Remembered here: UnitTest::current_test_info() takes the lock that gtest holds while it
  // reports a result.
  void OnTestStart(const ::testing::TestInfo& info) override {
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace

int main(int argc, char** argv) {
  namespace mpi = tessera::sharding::mpi;
  ::testing::InitGoogleTest(&argc, argv);
  mpi::init(&argc, &argv);
  tessera::sharding::Watchdog::global().set_timeout(std::chrono::seconds(60));
  const int rank = mpi::world_rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailuresOnly(rank));
  }
  int local[2] = {RUN_ALL_TESTS() != 0 ? 1 : 0, tessera::testing::any_test_skipped() ? 1 : 0};
  int any[2] = {0, 0};
  MPI_Allreduce(local, any, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (local[0]) std::fprintf(stderr, "rank %d: some tests FAILED\n", rank);
  mpi::finalize();
  return tessera::testing::exit_code_after_run(any[0], any[1] != 0);
}
