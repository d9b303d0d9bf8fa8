// The collectives Tessera calls, on torch tensors, behind one interface with a backend per
// transport (sharding/mpi for CPU tensors, sharding/nccl for CUDA tensors). Only what the runtime
// uses lives here; a backend that lacks an operation does not exist (no "not supported" stubs).
// Every operation has an asynchronous form returning a Work handle that can be waited on with a
// deadline; the blocking forms are watched by the process-wide Watchdog (sharding/watchdog.h).
#pragma once

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"

namespace tessera::sharding {

enum class ReduceOp { kSum, kMax, kMin, kAvg };
const char* reduce_op_name(ReduceOp op);
// Static dtype names for reports (OpDesc and fingerprints keep the pointer, never a copy).
const char* dtype_label(const torch::Tensor& t);

// A wait passed its deadline. The operation is still in flight, so the communicator is unusable
// afterwards (NCCL aborts it); the caller ends the job.
class CommTimeoutError : public Error {
 public:
  using Error::Error;
};

// Traffic a communicator handled since construction or reset_stats(): `bytes` counts the payload
// this rank handed in (all_reduce / broadcast / all_gather / reduce_scatter / all_to_all / send:
// the input tensor; recv: the received tensor), the figure sequence-sharded decode keeps flat.
struct CommStats {
  int64_t ops = 0;
  int64_t bytes = 0;
};

// One operation in flight. test() and wait() throw tessera::Error when the backend reports an
// error; result() is the operation's output once it completed (the in-place tensor for
// all_reduce / broadcast / recv). Destroying an unfinished Work waits for it (the buffers must
// outlive the transfer). A Work must not outlive its communicator; both are used from one thread.
class Work {
 public:
  virtual ~Work() = default;
  // Non-blocking: true once the operation completed (and its result is ready).
  virtual bool test() = 0;
  // Blocks until completion. Throws CommTimeoutError naming rank, operation and sequence number
  // after `timeout`. Waits without a deadline of their own are still watched by the Watchdog.
  virtual void wait(std::chrono::milliseconds timeout) = 0;
  void wait() { wait(std::chrono::milliseconds::max()); }
  const torch::Tensor& result() const { return result_; }

 protected:
  torch::Tensor result_;
};
using WorkPtr = std::unique_ptr<Work>;

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend_name() const = 0;
  // Where this communicator's tensors live (CPU for MPI, the rank's GPU for NCCL).
  virtual torch::Device device() const = 0;

  // --- asynchronous forms: every rank of the communicator calls them in the same order ---------
  // In place. kAvg is for floating dtypes only.
  virtual WorkPtr all_reduce_async(torch::Tensor tensor, ReduceOp op) = 0;
  // In place: every rank receives root's values (same shape and dtype everywhere).
  virtual WorkPtr broadcast_async(torch::Tensor tensor, int root) = 0;
  // The next three write into `out` when it is defined (contiguous, the result's shape, dtype and
  // device: no allocation on a hot path) and into a new tensor otherwise.
  // result [size, *tensor.shape]: rank r's tensor at index r (same shape on every rank).
  virtual WorkPtr all_gather_async(const torch::Tensor& tensor, torch::Tensor out) = 0;
  // tensor [n, *rest], the same n on every rank; result: the reduction's rows of this rank,
  // [n / size (+1 for the first n % size ranks), *rest] — uneven n is supported.
  virtual WorkPtr reduce_scatter_async(const torch::Tensor& tensor, ReduceOp op,
                                       torch::Tensor out) = 0;
  // tensor [size * k, *rest]; result [size * k, *rest] whose rows [r*k, (r+1)*k) come from rank r's
  // rows [rank*k, (rank+1)*k). Throws when tensor.size(0) is not a multiple of size().
  virtual WorkPtr all_to_all_async(const torch::Tensor& tensor, torch::Tensor out) = 0;
  // Point to point; `tag` >= 0 tells concurrent messages between the same pair apart.
  virtual WorkPtr send_async(const torch::Tensor& tensor, int dst, int tag = 0) = 0;
  // Receives into `tensor` (its shape and dtype must match the sender's).
  virtual WorkPtr recv_async(torch::Tensor tensor, int src, int tag = 0) = 0;
  virtual WorkPtr barrier_async() = 0;

  // --- blocking forms (a backend may override them with faster blocking calls) ------------------
  virtual void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  virtual void broadcast(torch::Tensor& tensor, int root);
  virtual torch::Tensor all_gather(const torch::Tensor& tensor, torch::Tensor out);
  virtual torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op, torch::Tensor out);
  virtual torch::Tensor all_to_all(const torch::Tensor& tensor, torch::Tensor out);
  void send(const torch::Tensor& tensor, int dst, int tag = 0);
  void recv(torch::Tensor& tensor, int src, int tag = 0);
  virtual void barrier();

  // Collective agreement on success, through the collectives above (any group, any backend):
  // every rank passes its own outcome ("" = success) and gets the lowest failing rank's message,
  // prefixed "rank N: " when N (its rank in this communicator) is not 0, or "" when every rank
  // succeeded. One rank's bad input then ends the group with one line on every rank, instead of
  // leaving the others blocked in a later collective.
  std::string agree_on_error(const std::string& local_error);

  // Allocating forms of the above.
  WorkPtr all_gather_async(const torch::Tensor& tensor) { return all_gather_async(tensor, {}); }
  WorkPtr reduce_scatter_async(const torch::Tensor& tensor, ReduceOp op) {
    return reduce_scatter_async(tensor, op, {});
  }
  WorkPtr all_to_all_async(const torch::Tensor& tensor) { return all_to_all_async(tensor, {}); }
  torch::Tensor all_gather(const torch::Tensor& tensor) { return all_gather(tensor, {}); }
  torch::Tensor reduce_scatter(const torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum) {
    return reduce_scatter(tensor, op, {});
  }
  torch::Tensor all_to_all(const torch::Tensor& tensor) { return all_to_all(tensor, {}); }

  // Number of operations started so far (the next one gets seq() + 1).
  uint64_t seq() const { return seq_; }
  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }
  // Label in watchdog and mismatch reports ("world", "tp", "dp", "sp").
  const std::string& label() const { return label_; }
  void set_label(std::string label) { label_ = std::move(label); }

 protected:
  // Called by backends at the start of every operation: counts it and returns its sequence number.
  uint64_t count_op(int64_t bytes) {
    ++stats_.ops;
    stats_.bytes += bytes;
    return ++seq_;
  }

 private:
  uint64_t seq_ = 0;
  CommStats stats_;
  std::string label_ = "world";
};

// Rows of `n` that rank `rank` of `size` receives from reduce_scatter: {first row, row count}.
std::pair<int64_t, int64_t> scatter_rows(int64_t n, int rank, int size);

// `out` when defined (checked against the result's shape and `like`'s dtype and device, naming
// `op`), else a new tensor of that shape.
torch::Tensor output_tensor(const char* op, const torch::Tensor& out, at::IntArrayRef shape,
                            const torch::Tensor& like);

}  // namespace tessera::sharding
