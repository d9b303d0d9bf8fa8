// tessera::testing, the harness for multi-rank GoogleTest tests run under mpirun or srun (also
// alone, as a world of one): one bootstrap of the job's world, rank-tagged failures, a failure on
// any rank fails the test on every rank, and a per-test deadline that ends a hung job naming the
// test. Link Tessera::testing (it brings main()) or call run_all_tests() from your own main.
// Torch-free; the tensor helpers are in testing/compare.h.
#pragma once

#include <chrono>

#include "launch/bootstrap.h"

namespace tessera::sharding {
class Communicator;
}

namespace tessera::testing {

// Exit status of a job that a test's deadline ended (the collective watchdog's status).
inline constexpr int kDeadlineExitCode = 75;

// Runs every test: the job's world (launch::bootstrap_world: MPI, launcher variables checked
// against MPI, a device by local rank; NCCL when every rank has a GPU of its own), InitGoogleTest,
// then RUN_ALL_TESTS with the harness's listeners. Returns 0 when every test passed on every rank.
// Options (flags win):
//   --tessera_test_deadline=S / TESSERA_TEST_DEADLINE=S   seconds per test (default 60; 0 = none)
// With several ranks, --gtest_output=xml:out.xml writes out.rank<r>.xml on each rank, and a
// shuffled order (--gtest_shuffle) uses rank 0's seed everywhere.
int run_all_tests(int* argc, char** argv);

// The job's world as bootstrapped by run_all_tests (rank, size, local rank, device, hostname...).
const launch::World& world();
int rank();
int size();
// The MPI communicator over every rank (CPU tensors).
sharding::Communicator& cpu_comm();
// The communicator for tensors on device() (testing/compare.h): NCCL when every rank has a GPU of
// its own, else MPI.
sharding::Communicator& comm();

// The deadline of the running test, measured from its start; a test may set its own (a long
// test raises it, a test of a hang lowers it). Zero disables it for that test. When it passes,
// the rank prints the test's name, the deadline and the collectives it is blocked in, and ends
// the job with kDeadlineExitCode (mpirun / srun then stop the other ranks).
void set_test_deadline(std::chrono::milliseconds deadline);
std::chrono::milliseconds test_deadline();

}  // namespace tessera::testing
