// Process groups: the communicators of one rank's data-, sequence- and tensor-parallel groups,
// split from the world along a DeviceMesh. Collective: every rank of the world builds them
// together.
#pragma once

#include <memory>

#include "sharding/device_mesh.h"
#include "sharding/mpi/mpi_communicator.h"

namespace tessera::sharding {

struct ProcessGroups {
  DeviceMesh mesh;
  MeshCoord coord;
  std::unique_ptr<MpiCommunicator> dp;  // labelled "dp"
  std::unique_ptr<MpiCommunicator> sp;  // labelled "sp"
  std::unique_ptr<MpiCommunicator> tp;  // labelled "tp"

  MpiCommunicator& group(MeshDim dim) const;
};

// Splits `world` into tp- / sp- / dp-groups (tp * sp must divide world.size()).
ProcessGroups make_process_groups(const MpiCommunicator& world, int tp, int sp = 1);

}  // namespace tessera::sharding
