#include "launch/bootstrap.h"

#include <unistd.h>

#include <algorithm>

#include "common/device.h"
#include "common/error.h"
#include "common/logging.h"
#include "runtime/engine/torch_env.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/watchdog.h"
#ifdef TESSERA_WITH_NCCL
#include "sharding/nccl/nccl_communicator.h"
#endif

namespace tessera::launch {

std::vector<std::string> mpi_pmi_clients() {
  std::vector<std::string> out;
  std::string list = TESSERA_MPI_PMI_CLIENTS;
  for (size_t pos = 0; pos < list.size();) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    if (comma > pos) out.push_back(list.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

int job_rank() {
  if (sharding::mpi::initialized()) return sharding::mpi::world_rank();
  try {
    return discover_rank(process_env()).rank;
  } catch (const Error&) {
    return 0;
  }
}

World bootstrap_world(int* argc, char*** argv, const BootstrapOptions& options) {
  namespace mpi = sharding::mpi;
  // Open MPI would abort every task inside MPI_Init, each with a page of text.
  if (auto err = srun_pmi_error(process_env(), mpi_pmi_clients()); !err.empty()) {
    throw CollectiveError(err, __FILE__, __LINE__);
  }
  mpi::init(argc, argv);
  World w;
  w.rank = mpi::world_rank();
  w.size = mpi::world_size();
  log::set_rank(w.rank, w.size);
  // When the launcher ends the job because a peer died, say which collective this rank was in.
  sharding::Watchdog::install_signal_report();
  std::string err;
  try {
    w.launcher = discover_rank(process_env());
    check_against_mpi(w.launcher, w.rank, w.size);
  } catch (const Error& e) {
    err = e.message();
  }
  // MPI-level agreement: the world communicator is not made yet (it is made below, once the
  // launcher's view is known to be sound).
  err = mpi::agree_on_error(err);
  if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);

  const auto node = mpi::node_view();
  w.local_rank = node.local_rank;
  w.local_size = node.local_size;
  w.node_id = node.node_id;
  w.num_nodes = node.num_nodes;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  w.hostname = host;
  const auto devices = query_devices();
  RankInfo by_node = w.launcher;
  by_node.local_rank = w.local_rank;
  w.device = choose_device(by_node, devices.count);
  w.torch_threads = engine::configure_torch_threads(w.local_size);
  w.comm = std::make_shared<sharding::MpiCommunicator>(MPI_COMM_WORLD);
#ifdef TESSERA_WITH_NCCL
  if (options.want_nccl && w.device >= 0) {
    w.device_comm = std::make_shared<sharding::NcclCommunicator>(MPI_COMM_WORLD, w.device);
  }
#else
  (void)options;
#endif
  log::debug("rank {} of {}: local {}/{}, node {}/{}, device {}, {} torch threads, launcher {}",
             w.rank, w.size, w.local_rank, w.local_size, w.node_id, w.num_nodes, w.device,
             w.torch_threads, launcher_name(w.launcher.launcher));
  return w;
}

void shutdown_world(World& world) {
  world.device_comm.reset();
  world.comm.reset();
  sharding::mpi::finalize();
}

}  // namespace tessera::launch
