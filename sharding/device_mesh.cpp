#include "sharding/device_mesh.h"

#include "common/error.h"

namespace tessera::sharding {

const char* mesh_dim_name(MeshDim dim) {
  switch (dim) {
    case MeshDim::kData:
      return "dp";
    case MeshDim::kSequence:
      return "sp";
    case MeshDim::kTensor:
      return "tp";
  }
  return "?";
}

DeviceMesh::DeviceMesh(int world_size, int tp, int sp) : sp_(sp), tp_(tp) {
  TESSERA_CHECK(world_size >= 1, "world_size must be positive, got ", world_size);
  TESSERA_CHECK(tp >= 1, "tp (tensor-parallel size) must be positive, got ", tp);
  TESSERA_CHECK(sp >= 1, "sp (sequence-parallel size) must be positive, got ", sp);
  TESSERA_CHECK(world_size % (tp * sp) == 0, "tp=", tp, " x sp=", sp,
                " does not divide world_size=", world_size);
  dp_ = world_size / (tp * sp);
}

int DeviceMesh::size(MeshDim dim) const {
  return dim == MeshDim::kData ? dp_ : (dim == MeshDim::kSequence ? sp_ : tp_);
}

MeshCoord DeviceMesh::coord(int rank) const {
  TESSERA_CHECK(rank >= 0 && rank < world_size(), "rank=", rank, " is outside [0, ", world_size(),
                ")");
  return {rank / (sp_ * tp_), (rank / tp_) % sp_, rank % tp_};
}

int DeviceMesh::rank_of(const MeshCoord& c) const {
  TESSERA_CHECK(c.dp >= 0 && c.dp < dp_ && c.sp >= 0 && c.sp < sp_ && c.tp >= 0 && c.tp < tp_,
                "mesh coordinate (dp=", c.dp, ", sp=", c.sp, ", tp=", c.tp, ") is outside ", str());
  return (c.dp * sp_ + c.sp) * tp_ + c.tp;
}

std::vector<int> DeviceMesh::group(MeshDim dim, int rank) const {
  const MeshCoord me = coord(rank);
  std::vector<int> out;
  for (int i = 0; i < size(dim); ++i) {
    MeshCoord c = me;
    (dim == MeshDim::kData ? c.dp : (dim == MeshDim::kSequence ? c.sp : c.tp)) = i;
    out.push_back(rank_of(c));
  }
  return out;
}

int DeviceMesh::group_id(MeshDim dim, int rank) const {
  // The rank of the group's first member identifies the group.
  return group(dim, rank).front();
}

std::string DeviceMesh::str() const {
  return "dp=" + std::to_string(dp_) + " x sp=" + std::to_string(sp_) +
         " x tp=" + std::to_string(tp_);
}

int device_for_local_rank(int local_rank, int local_size, int num_devices) {
  TESSERA_CHECK(local_size >= 1, "local_size must be positive, got ", local_size);
  TESSERA_CHECK(local_rank >= 0 && local_rank < local_size, "local_rank=", local_rank,
                " is outside [0, ", local_size, ")");
  TESSERA_CHECK(num_devices >= 0, "num_devices must be >= 0, got ", num_devices);
  if (num_devices == 0) return -1;
  TESSERA_CHECK(local_size <= num_devices, local_size, " ranks on this node but only ", num_devices,
                " CUDA devices: start at most one rank per GPU");
  return local_rank;
}

}  // namespace tessera::sharding
