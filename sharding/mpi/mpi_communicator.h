// Communicator over MPI for CPU tensors. fp16 and bf16 reductions use MPI user ops that
// accumulate each pair in fp32 (MPI has no half types). Blocking forms call the blocking MPI
// collectives (the tuned ones); asynchronous forms the MPI_I* ones. Every blocking wait is watched
// by the Watchdog; with TESSERA_COMM_DEBUG=1 each collective's fingerprint is compared across
// ranks first (sharding/mpi/collective_check.h).
#pragma once

#include <mpi.h>

#include <memory>

#include "sharding/communicator.h"

namespace tessera::sharding {

class MpiCommunicator final : public Communicator {
 public:
  // Duplicates `comm`, so Tessera's traffic never matches another library's messages.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD, std::string label = "world");
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "mpi"; }
  torch::Device device() const override { return torch::kCPU; }

  WorkPtr all_reduce_async(torch::Tensor tensor, ReduceOp op) override;
  WorkPtr broadcast_async(torch::Tensor tensor, int root) override;
  WorkPtr all_gather_async(const torch::Tensor& tensor, torch::Tensor out) override;
  WorkPtr reduce_scatter_async(const torch::Tensor& tensor, ReduceOp op,
                               torch::Tensor out) override;
  WorkPtr all_to_all_async(const torch::Tensor& tensor, torch::Tensor out) override;
  WorkPtr send_async(const torch::Tensor& tensor, int dst, int tag = 0) override;
  WorkPtr recv_async(torch::Tensor tensor, int src, int tag = 0) override;
  WorkPtr barrier_async() override;

  void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum) override;
  void broadcast(torch::Tensor& tensor, int root) override;
  torch::Tensor all_gather(const torch::Tensor& tensor, torch::Tensor out) override;
  torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op,
                               torch::Tensor out) override;
  torch::Tensor all_to_all(const torch::Tensor& tensor, torch::Tensor out) override;
  // The allocating overloads of the base class stay visible.
  using Communicator::all_gather;
  using Communicator::all_gather_async;
  using Communicator::all_to_all;
  using Communicator::all_to_all_async;
  using Communicator::reduce_scatter;
  using Communicator::reduce_scatter_async;
  void barrier() override;

  // Collective: ranks passing the same `color` form one new communicator, ordered by `key`.
  std::unique_ptr<MpiCommunicator> split(int color, int key, std::string label) const;

  MPI_Comm comm() const { return comm_; }

 private:
  // One operation prepared for either form; run() starts it (async: returns its Work) or
  // completes it (blocking: returns null, the result is call.result).
  struct Call;
  Call prepare(const char* op, const torch::Tensor& tensor, bool in_place) const;
  Call prepare_all_reduce(const torch::Tensor& tensor, ReduceOp op) const;
  Call prepare_broadcast(const torch::Tensor& tensor, int root) const;
  Call prepare_all_gather(const torch::Tensor& tensor, const torch::Tensor& out) const;
  Call prepare_reduce_scatter(const torch::Tensor& tensor, ReduceOp op,
                              const torch::Tensor& out) const;
  Call prepare_all_to_all(const torch::Tensor& tensor, const torch::Tensor& out) const;
  Call prepare_barrier() const;
  WorkPtr run(Call& call, bool async);

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm check_comm_ = MPI_COMM_NULL;  // fingerprints only (debug mode)
  int rank_ = 0;
  int size_ = 1;
  int world_rank_ = 0;
};

}  // namespace tessera::sharding
