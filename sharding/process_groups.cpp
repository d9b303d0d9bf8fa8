#include "sharding/process_groups.h"

namespace tessera::sharding {

MpiCommunicator& ProcessGroups::group(MeshDim dim) const {
  return dim == MeshDim::kData ? *dp : (dim == MeshDim::kSequence ? *sp : *tp);
}

ProcessGroups make_process_groups(const MpiCommunicator& world, int tp, int sp) {
  DeviceMesh mesh(world.size(), tp, sp);
  const int me = world.rank();
  ProcessGroups g{mesh, mesh.coord(me), nullptr, nullptr, nullptr};
  // The key orders each group by the coordinate along its own dimension.
  g.dp = world.split(mesh.group_id(MeshDim::kData, me), g.coord.dp, "dp");
  g.sp = world.split(mesh.group_id(MeshDim::kSequence, me), g.coord.sp, "sp");
  g.tp = world.split(mesh.group_id(MeshDim::kTensor, me), g.coord.tp, "tp");
  return g;
}

}  // namespace tessera::sharding
