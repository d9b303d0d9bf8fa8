// MPI process set-up: init (singleton when not under a launcher), finalize, and the library's own
// view of the world. Torch-free so the CLI's error paths do not pull torch in.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

namespace tessera::sharding::mpi {

// MPI_Init_thread (MPI_THREAD_FUNNELED) once; later calls do nothing.
void init(int* argc, char*** argv);
// MPI_Finalize if init() ran and finalize() has not.
void finalize();
bool initialized();
int world_rank();
int world_size();
// Rank among the processes on this node, node count and this node's index (MPI_Comm_split_type).
struct NodeView {
  int local_rank;
  int local_size;
  int node_id;
  int num_nodes;
};
NodeView node_view();
std::string library_version();  // first line of MPI_Get_library_version
// Ends every rank of the job now (MPI_Abort); used only when ranks can no longer agree.
[[noreturn]] void abort_world(int exit_code);

// Collective agreement on success: every rank passes its own outcome; returns the lowest failing
// rank's message on every rank, or an empty string when all succeeded. Lets one rank's bad input
// end the whole job cleanly instead of leaving the others blocked in a later collective.
// MPI level: only for where no Communicator exists (bootstrap, before the world communicator is
// made) and inside the MPI backend; everything else calls Communicator::agree_on_error.
std::string agree_on_error(const std::string& local_error, MPI_Comm comm = MPI_COMM_WORLD);

// Gathers one string from every rank onto `root` (others get an empty vector).
std::vector<std::string> gather_strings(const std::string& mine, int root = 0);

}  // namespace tessera::sharding::mpi
