#include "sharding/mpi/mpi_env.h"

#include <mpi.h>

#include <cstdlib>
#include <vector>

#include "common/error.h"

namespace tessera::sharding::mpi {

namespace {
bool g_we_initialized = false;
bool g_finalized = false;

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  TESSERA_FAIL(what, " failed: ", std::string(msg, len));
}
}  // namespace

void init(int* argc, char*** argv) {
  int already = 0;
  MPI_Initialized(&already);
  if (already) return;
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  g_we_initialized = true;
  // Errors come back as codes and become tessera::Error, not a silent abort inside MPI.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

void finalize() {
  if (!g_we_initialized || g_finalized) return;
  int done = 0;
  MPI_Finalized(&done);
  if (!done) MPI_Finalize();
  g_finalized = true;
}

bool initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  int done = 0;
  MPI_Finalized(&done);
  return flag && !done;
}

int world_rank() {
  int r = 0;
  check(MPI_Comm_rank(MPI_COMM_WORLD, &r), "MPI_Comm_rank");
  return r;
}

int world_size() {
  int s = 1;
  check(MPI_Comm_size(MPI_COMM_WORLD, &s), "MPI_Comm_size");
  return s;
}

NodeView node_view() {
  MPI_Comm node_comm;
  check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node_comm),
        "MPI_Comm_split_type");
  NodeView v{};
  MPI_Comm_rank(node_comm, &v.local_rank);
  MPI_Comm_size(node_comm, &v.local_size);
  // Node leaders (local rank 0) number the nodes in world-rank order.
  MPI_Comm leaders;
  check(
      MPI_Comm_split(MPI_COMM_WORLD, v.local_rank == 0 ? 0 : MPI_UNDEFINED, world_rank(), &leaders),
      "MPI_Comm_split");
  int node_id = 0, num_nodes = 0;
  if (leaders != MPI_COMM_NULL) {
    MPI_Comm_rank(leaders, &node_id);
    MPI_Comm_size(leaders, &num_nodes);
    MPI_Comm_free(&leaders);
  }
  int both[2] = {node_id, num_nodes};
  MPI_Bcast(both, 2, MPI_INT, 0, node_comm);
  v.node_id = both[0];
  v.num_nodes = both[1];
  MPI_Comm_free(&node_comm);
  return v;
}

std::string library_version() {
  char buf[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(buf, &len);
  std::string s(buf, len);
  if (auto nl = s.find_first_of(",\n"); nl != std::string::npos) s.resize(nl);
  return s;
}

void abort_world(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

std::string agree_on_error(const std::string& local_error, MPI_Comm comm) {
  int size = 1, me = 0;
  check(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  check(MPI_Comm_rank(comm, &me), "MPI_Comm_rank");
  if (size == 1) return local_error;
  // The lowest failing rank (or size when none failed) is found with one MIN all-reduce; its
  // message then travels by broadcast.
  int mine = local_error.empty() ? size : me;
  int first = size;
  check(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (first == size) return {};
  int len = first == me ? static_cast<int>(local_error.size()) : 0;
  check(MPI_Bcast(&len, 1, MPI_INT, first, comm), "MPI_Bcast");
  std::string msg = first == me ? local_error : std::string(len, '\0');
  check(MPI_Bcast(msg.data(), len, MPI_CHAR, first, comm), "MPI_Bcast");
  return size > 1 && first != 0 ? "rank " + std::to_string(first) + ": " + msg : msg;
}

std::vector<std::string> gather_strings(const std::string& mine, int root) {
  const int size = world_size(), me = world_rank();
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(me == root ? size : 0);
  check(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, root, MPI_COMM_WORLD), "MPI_Gather");
  std::vector<int> displs(lens.size());
  int total = 0;
  for (size_t i = 0; i < lens.size(); ++i) {
    displs[i] = total;
    total += lens[i];
  }
  std::string all(total, '\0');
  check(MPI_Gatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR,
                    root, MPI_COMM_WORLD),
        "MPI_Gatherv");
  std::vector<std::string> out;
  for (size_t i = 0; i < lens.size(); ++i) out.push_back(all.substr(displs[i], lens[i]));
  return out;
}

}  // namespace tessera::sharding::mpi
