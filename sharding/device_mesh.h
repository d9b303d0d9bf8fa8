// Device mesh: how the ranks of a job split into data-parallel x sequence-parallel x
// tensor-parallel groups, and which device each rank drives. Pure layout arithmetic (torch- and
// MPI-free); sharding/process_groups.h turns it into communicators.
#pragma once

#include <string>
#include <vector>

namespace tessera::sharding {

enum class MeshDim { kData, kSequence, kTensor };
const char* mesh_dim_name(MeshDim dim);  // "dp", "sp", "tp"

struct MeshCoord {
  int dp = 0;
  int sp = 0;
  int tp = 0;
  bool operator==(const MeshCoord&) const = default;
};

// world = dp * sp * tp ranks. Tensor-parallel ranks are adjacent (rank = (dp * sp + sp) * tp + tp)
// so a tensor-parallel group, the chattiest, stays inside a node whenever tp divides the node's
// rank count.
class DeviceMesh {
 public:
  // Throws naming the value when tp * sp does not divide world_size.
  DeviceMesh(int world_size, int tp, int sp = 1);

  int world_size() const { return dp_ * sp_ * tp_; }
  int size(MeshDim dim) const;
  MeshCoord coord(int rank) const;
  int rank_of(const MeshCoord& c) const;
  // The ranks in `rank`'s group along `dim` (ordered by their coordinate along `dim`).
  std::vector<int> group(MeshDim dim, int rank) const;
  // Equal for exactly the ranks of one group along `dim`: the colour for MPI_Comm_split.
  int group_id(MeshDim dim, int rank) const;
  std::string str() const;  // "dp=2 x sp=1 x tp=2"

 private:
  int dp_ = 1;
  int sp_ = 1;
  int tp_ = 1;
};

// CUDA device for a rank: local_rank when the node has enough devices, -1 (CPU) when it has none.
// Throws when ranks per node exceed the node's devices (NCCL needs one rank per GPU).
int device_for_local_rank(int local_rank, int local_size, int num_devices);

}  // namespace tessera::sharding
