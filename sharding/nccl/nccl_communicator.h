// Communicator over NCCL for CUDA tensors. Bootstrapped over MPI: rank 0 creates the NCCL unique
// id and broadcasts it, then every rank joins on its own device. One NCCL rank per GPU: two ranks
// choosing the same device are refused before NCCL is touched. The NCCL communicator is
// non-blocking (ncclConfig_t::blocking = 0): every wait polls the CUDA event of the operation and
// ncclCommGetAsyncError, and a deadline passed or an asynchronous error aborts the communicator
// (ncclCommAbort) instead of hanging the process. With TESSERA_COMM_DEBUG=1 collectives compare
// fingerprints over (a duplicate of) the bootstrap MPI communicator first.
#pragma once

#include <mpi.h>

#include <array>
#include <memory>
#include <string>

#include "sharding/communicator.h"
#include "sharding/watchdog.h"

namespace tessera::sharding {

// The 128-byte ncclUniqueId, created on `root` and broadcast over `comm`.
std::array<char, 128> nccl_unique_id_over_mpi(MPI_Comm comm, int root = 0);

// Throws when two ranks of `comm` on the same host chose the same CUDA device. Collective over
// `comm`; needs no GPU (it compares host names and device indices only).
void check_one_rank_per_device(MPI_Comm comm, int device);

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`: every rank passes its own CUDA device index.
  NcclCommunicator(MPI_Comm bootstrap, int device, std::string label = "world");
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "nccl"; }
  torch::Device device() const override {
    return {torch::kCUDA, static_cast<c10::DeviceIndex>(device_)};
  }

  WorkPtr all_reduce_async(torch::Tensor tensor, ReduceOp op) override;
  WorkPtr broadcast_async(torch::Tensor tensor, int root) override;
  WorkPtr all_gather_async(const torch::Tensor& tensor, torch::Tensor out) override;
  WorkPtr reduce_scatter_async(const torch::Tensor& tensor, ReduceOp op,
                               torch::Tensor out) override;
  WorkPtr all_to_all_async(const torch::Tensor& tensor, torch::Tensor out) override;
  using Communicator::all_gather_async;
  using Communicator::all_to_all_async;
  using Communicator::reduce_scatter_async;
  WorkPtr send_async(const torch::Tensor& tensor, int dst, int tag = 0) override;
  WorkPtr recv_async(torch::Tensor tensor, int src, int tag = 0) override;
  WorkPtr barrier_async() override;

  // ncclCommAbort: every pending and later operation fails. Called on timeout and on errors.
  void abort(const std::string& why);
  bool aborted() const;
  // Tests only: the next poll of a Work's asynchronous NCCL error state reports `nccl_result` (an
  // ncclResult_t value) instead of NCCL's answer, to exercise the error path without a real fault.
  void inject_async_error_for_testing(int nccl_result);

  struct Impl;  // NCCL handles, kept out of this header so callers need no nccl.h

 private:
  // Counts the operation and describes it for the watchdog and error messages.
  OpDesc begin_op(const char* op, const torch::Tensor& tensor, int peer);

  std::shared_ptr<Impl> impl_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  int world_rank_ = 0;
};

}  // namespace tessera::sharding
