// The collectives Tessera calls, on torch tensors, behind one interface with a backend per
// transport (sharding/mpi for CPU tensors, sharding/nccl for CUDA tensors). Only what the runtime
// uses lives here; a backend that lacks an operation does not exist (no "not supported" stubs).
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>

namespace tessera::sharding {

enum class ReduceOp { kSum, kMax, kMin, kAvg };
const char* reduce_op_name(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend_name() const = 0;

  // In place on every rank. kAvg is for floating dtypes only.
  virtual void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum) = 0;
  // In place: every rank receives root's values (same shape and dtype everywhere).
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  // Returns [size, *tensor.shape]: rank r's tensor at index r.
  virtual torch::Tensor all_gather(const torch::Tensor& tensor) = 0;
  virtual void barrier() = 0;
};

}  // namespace tessera::sharding
