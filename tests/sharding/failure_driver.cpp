// A small multi-rank program that fails on purpose, run under mpirun by failure_test.cpp:
//   --mode=ok        a few collectives, exit 0
//   --mode=stall     rank --victim never enters the third collective (the others must be ended by
//                    the watchdog within TESSERA_COMM_TIMEOUT)
//   --mode=kill      rank --victim SIGKILLs itself before the third collective
//   --mode=mismatch  rank --victim calls all_gather where the others call all_reduce (with
//                    TESSERA_COMM_DEBUG=1 the fingerprint check reports it)
// Rank 0 prints "enter-ms <unix ms>" right before the collective that cannot complete.
#include <signal.h>
#include <torch/types.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "sharding/mpi/mpi_communicator.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/watchdog.h"

namespace {

std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return fallback;
}

void print_enter(int rank) {
  if (rank != 0) return;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
  std::fprintf(stderr, "enter-ms %lld\n", static_cast<long long>(ms));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tessera;
  using namespace tessera::sharding;
  const std::string mode = arg(argc, argv, "mode", "ok");
  const int victim = std::stoi(arg(argc, argv, "victim", "1"));
  mpi::init(&argc, &argv);
  Watchdog::install_signal_report();
  int rc = 0;
  {
    MpiCommunicator comm(MPI_COMM_WORLD);
    auto t = torch::ones({1024});
    comm.all_reduce(t);  // #1: every rank is up
    comm.all_reduce(t);  // #2
    const bool me = comm.rank() == victim;
    if (mode == "stall") {
      if (me) {
        std::this_thread::sleep_for(std::chrono::seconds(60));
      } else {
        print_enter(comm.rank());
        comm.all_reduce(t);  // #3 never completes
      }
    } else if (mode == "kill") {
      if (me) {
        ::raise(SIGKILL);
      } else {
        print_enter(comm.rank());
        comm.all_reduce(t);
      }
    } else if (mode == "mismatch") {
      try {
        print_enter(comm.rank());
        if (me) {
          comm.all_gather(t);
        } else {
          comm.all_reduce(t);
        }
      } catch (const CollectiveError& e) {
        std::fprintf(stderr, "tessera: error (rank %d): %s\n", comm.rank(), e.message().c_str());
        rc = 3;
      }
    } else {
      comm.barrier();
    }
  }
  mpi::finalize();
  return rc;
}
