// Communicator over NCCL for CUDA tensors. Bootstrapped over MPI: rank 0 creates the NCCL unique
// id and broadcasts it, then every rank joins with ncclCommInitRank on its own device. One NCCL
// rank per GPU: two ranks choosing the same device are refused before NCCL is touched.
#pragma once

#include <mpi.h>

#include <array>
#include <memory>
#include <string>

#include "sharding/communicator.h"

namespace tessera::sharding {

// The 128-byte ncclUniqueId, created on `root` and broadcast over `comm`.
std::array<char, 128> nccl_unique_id_over_mpi(MPI_Comm comm, int root = 0);

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`: every rank passes its own CUDA device index.
  NcclCommunicator(MPI_Comm bootstrap, int device);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "nccl"; }

  void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum) override;
  void broadcast(torch::Tensor& tensor, int root) override;
  torch::Tensor all_gather(const torch::Tensor& tensor) override;
  void barrier() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
};

}  // namespace tessera::sharding
