// World bootstrap: MPI init, rank discovery cross-checked against MPI, node layout, device choice
// by local rank, libtorch threads, and the world communicator (MPI; NCCL over CUDA devices when
// built with it and a GPU is present).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "launch/rank_env.h"

namespace tessera::sharding {
class Communicator;
}

namespace tessera::launch {

struct World {
  RankInfo launcher;  // what the launcher's variables said
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  int node_id = 0;
  int num_nodes = 1;
  int device = -1;  // CUDA device index, -1 = CPU
  int torch_threads = 1;
  std::string hostname;
  std::shared_ptr<sharding::Communicator> comm;  // CPU collectives (MPI) over the whole world
  std::shared_ptr<sharding::Communicator> device_comm;  // NCCL when a GPU is used, else null
};

struct BootstrapOptions {
  bool want_nccl = false;  // create the NCCL communicator when a GPU is present
};

// Collective over every process of the job. Throws tessera::CollectiveError (every rank together)
// when the launcher's variables and MPI disagree.
// A task that srun started without a PMI server this MPI library can use is refused before MPI
// starts (srun_pmi_error), with the same CollectiveError on every task.
World bootstrap_world(int* argc, char*** argv, const BootstrapOptions& options = {});
void shutdown_world(World& world);

// This process's rank in the job for error reports, also when bootstrap_world failed: MPI's
// rank once MPI runs, else the launcher's (0 when its variables are unreadable).
int job_rank();

// The PMI clients of the MPI library Tessera is built with ("pmix", "pmi1", "pmi2"), as Open
// MPI's ompi_info listed them at configure time; empty when unknown.
std::vector<std::string> mpi_pmi_clients();

}  // namespace tessera::launch
