// Process groups: the communicators of one rank's data-, sequence- and tensor-parallel groups,
// split from the world along a DeviceMesh, each made by a factory for the backend in use (MPI
// for CPU tensors, NCCL for CUDA tensors). Collective: every rank of the world builds them
// together.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "sharding/communicator.h"
#include "sharding/device_mesh.h"
#include "sharding/mpi/mpi_communicator.h"

namespace tessera::sharding {

// Makes one group's communicator. Collective over the world: the ranks passing the same `color`
// form one group, ordered by `key`.
using GroupFactory =
    std::function<std::unique_ptr<Communicator>(int color, int key, std::string label)>;

// The factory for the backend in use: NCCL groups on CUDA device `device` when it is >= 0 (a build
// with NCCL; each group bootstraps over the matching split of `world`), MPI groups split from
// `world` otherwise. `world` must outlive the factory.
GroupFactory group_factory(const MpiCommunicator& world, int device = -1);

struct ProcessGroups {
  DeviceMesh mesh;
  MeshCoord coord;
  std::unique_ptr<Communicator> dp;  // labelled "dp"
  std::unique_ptr<Communicator> sp;  // labelled "sp"
  std::unique_ptr<Communicator> tp;  // labelled "tp"

  Communicator& group(MeshDim dim) const;
};

// Splits a world of `world_size` ranks (this one is `world_rank`) into tp- / sp- / dp-groups
// (tp * sp must divide world_size), each made by `make_group`.
ProcessGroups make_process_groups(int world_size, int world_rank, int tp, int sp,
                                  const GroupFactory& make_group);
// MPI groups split from `world`.
ProcessGroups make_process_groups(const MpiCommunicator& world, int tp, int sp = 1);

}  // namespace tessera::sharding
