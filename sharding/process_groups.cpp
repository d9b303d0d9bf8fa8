#include "sharding/process_groups.h"

#include "common/error.h"
#ifdef TESSERA_WITH_NCCL
#include "sharding/nccl/nccl_communicator.h"
#endif

namespace tessera::sharding {

GroupFactory group_factory(const MpiCommunicator& world, int device) {
#ifdef TESSERA_WITH_NCCL
  if (device >= 0) {
    return [&world, device](int color, int key, std::string label) {
      // The matching MPI group carries NCCL's bootstrap (the unique id) and is freed afterwards.
      const auto bootstrap = world.split(color, key, label);
      return std::unique_ptr<Communicator>(
          std::make_unique<NcclCommunicator>(bootstrap->comm(), device, std::move(label)));
    };
  }
#endif
  TESSERA_CHECK(device < 0, "process groups on device=", device,
                " need NCCL, and this build has none");
  return [&world](int color, int key, std::string label) {
    return std::unique_ptr<Communicator>(world.split(color, key, std::move(label)));
  };
}

Communicator& ProcessGroups::group(MeshDim dim) const {
  return dim == MeshDim::kData ? *dp : (dim == MeshDim::kSequence ? *sp : *tp);
}

ProcessGroups make_process_groups(int world_size, int world_rank, int tp, int sp,
                                  const GroupFactory& make_group) {
  DeviceMesh mesh(world_size, tp, sp);
  ProcessGroups g{mesh, mesh.coord(world_rank), nullptr, nullptr, nullptr};
  // The key orders each group by the coordinate along its own dimension.
  g.dp = make_group(mesh.group_id(MeshDim::kData, world_rank), g.coord.dp, "dp");
  g.sp = make_group(mesh.group_id(MeshDim::kSequence, world_rank), g.coord.sp, "sp");
  g.tp = make_group(mesh.group_id(MeshDim::kTensor, world_rank), g.coord.tp, "tp");
  return g;
}

ProcessGroups make_process_groups(const MpiCommunicator& world, int tp, int sp) {
  return make_process_groups(world.size(), world.rank(), tp, sp, group_factory(world));
}

}  // namespace tessera::sharding
