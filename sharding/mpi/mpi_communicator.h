// Communicator over MPI for CPU tensors. fp16 and bf16 reductions use MPI user ops that
// accumulate each pair in fp32 (MPI has no half types).
#pragma once

#include <mpi.h>

#include "sharding/communicator.h"

namespace tessera::sharding {

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `comm`, so Tessera's traffic never matches another library's messages.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "mpi"; }

  void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum) override;
  void broadcast(torch::Tensor& tensor, int root) override;
  torch::Tensor all_gather(const torch::Tensor& tensor) override;
  void barrier() override;

  MPI_Comm comm() const { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace tessera::sharding
