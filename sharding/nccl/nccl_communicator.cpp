#include "sharding/nccl/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "common/error.h"
#include "sharding/mpi/collective_check.h"
#include "sharding/watchdog.h"

#ifdef TESSERA_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace tessera::sharding {

namespace {

using Clock = std::chrono::steady_clock;

void check_cuda(cudaError_t e, const char* what) {
  TESSERA_CHECK(e == cudaSuccess, what, " failed: ", cudaGetErrorString(e));
}

ncclDataType_t nccl_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return ncclFloat32;
    case torch::kDouble:
      return ncclFloat64;
    case torch::kHalf:
      return ncclFloat16;
    case torch::kBFloat16:
      return ncclBfloat16;
    case torch::kLong:
      return ncclInt64;
    case torch::kInt:
      return ncclInt32;
    case torch::kChar:
      return ncclInt8;
    case torch::kByte:
      return ncclUint8;
    default:
      TESSERA_FAIL("NCCL communicator: unsupported dtype ", t.scalar_type());
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kAvg:
      return ncclAvg;
  }
  return ncclSum;
}

cudaStream_t current_stream(int device) {
#ifdef TESSERA_TORCH_CUDA
  return c10::cuda::getCurrentCUDAStream(device).stream();
#else
  (void)device;
  return nullptr;  // the legacy default stream; a CPU-only libtorch has no CUDA streams to follow
#endif
}

void check_cuda_tensor(const torch::Tensor& t, int device, const char* op) {
  TESSERA_CHECK(t.device().is_cuda() && t.device().index() == device, op,
                ": the NCCL communicator takes tensors on cuda:", device, ", got device ",
                t.device());
  TESSERA_CHECK(t.is_contiguous(), op, ": the NCCL communicator takes contiguous tensors");
}

int64_t nbytes(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.itemsize()); }

}  // namespace

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  float* barrier_buf = nullptr;  // [1] on the device: barriers allocate nothing through torch
  MPI_Comm check_comm = MPI_COMM_NULL;  // fingerprints (TESSERA_COMM_DEBUG=1) only

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  // Last owner (the communicator or a Work still referring to it) frees the buffer.
  ~Impl() {
    if (barrier_buf) cudaFree(barrier_buf);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (check_comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&check_comm);
  }
  std::atomic<bool> aborted{false};

  // Runs f(comm) unless the communicator was aborted or destroyed, and says whether it ran. The
  // lock keeps abort_comm() (from any thread: a timeout, the watchdog, an error in another Work)
  // from freeing the NCCL communicator between the check and the use.
  template <typename F>
  bool with_comm(F&& f) {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted || comm == nullptr) return false;
    f(comm);
    return true;
  }

  // Non-blocking communicators may answer ncclInProgress; the call has then not finished
  // enqueueing, and the state must be polled until it settles (or the deadline passes).
  void settle(ncclResult_t r, const char* what, Clock::time_point deadline) {
    while (r == ncclInProgress) {
      if (Clock::now() >= deadline) {
        abort_comm(std::string(what) + " did not settle before the deadline");
        TESSERA_FAIL(what, ": NCCL did not settle before the deadline; communicator aborted");
      }
      std::this_thread::yield();
      if (!with_comm([&](ncclComm_t c) { ncclCommGetAsyncError(c, &r); })) fail_aborted(what);
    }
    if (r != ncclSuccess) {
      std::string last;
      with_comm([&](ncclComm_t c) {
        const char* text = ncclGetLastError(c);
        last = text ? text : "";
      });
      const std::string msg =
          std::string(what) + " failed: " + ncclGetErrorString(r) + " (" + last + ")";
      abort_comm(msg);
      TESSERA_FAIL(msg, "; communicator aborted");
    }
  }

  [[noreturn]] void fail_aborted(const std::string& what) {
    TESSERA_FAIL(what, ": the NCCL communicator was aborted (", abort_reason(), ")");
  }

  void abort_comm(const std::string& why) {
    // The reason is set before `aborted` is seen, so no thread reports an empty reason; the NCCL
    // communicator is freed under the lock that every use of it takes.
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted) return;
    abort_reason_ = why;
    aborted = true;
    if (comm) ncclCommAbort(comm);
    comm = nullptr;
  }

  // The owner's destructor: finalize with a bounded wait (abort if it does not settle), then no
  // Work that outlives the communicator may use it.
  void destroy() {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted || comm == nullptr) return;  // ncclCommAbort already freed it
    ncclResult_t r = ncclCommFinalize(comm);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (r == ncclInProgress && Clock::now() < deadline) {
      std::this_thread::yield();
      ncclCommGetAsyncError(comm, &r);
    }
    if (r == ncclSuccess) {
      ncclCommDestroy(comm);
    } else {
      ncclCommAbort(comm);
    }
    comm = nullptr;
    abort_reason_ = "the communicator was destroyed";
    aborted = true;
  }

  std::string abort_reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return abort_reason_;
  }

  // Tests only: the next poll of the asynchronous error state reports this result instead of
  // asking NCCL (ncclSuccess = ask NCCL).
  std::atomic<int> injected_async_error{0};

 private:
  mutable std::mutex mu_;
  std::string abort_reason_;
};

namespace {

Clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  if (timeout == std::chrono::milliseconds::max()) return Clock::time_point::max();
  return Clock::now() + timeout;
}

// One NCCL operation: its completion event on the stream it was enqueued on.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<NcclCommunicator::Impl> impl, OpDesc desc, torch::Tensor result,
           std::vector<torch::Tensor> keep, cudaEvent_t event)
      : impl_(std::move(impl)),
        comm_label_(desc.comm),
        desc_(desc),
        keep_(std::move(keep)),
        event_(event) {
    // The Work may outlive the communicator (it keeps Impl alive): its reports name the
    // communicator from a copy of the label.
    desc_.comm = comm_label_.c_str();
    result_ = std::move(result);
  }
  NcclWork(const NcclWork&) = delete;
  NcclWork& operator=(const NcclWork&) = delete;
  ~NcclWork() override {
    if (event_) cudaEventDestroy(event_);
  }

  bool test() override {
    if (done_) return true;
    TESSERA_CHECK(!impl_->aborted, describe(desc_), ": the NCCL communicator was aborted (",
                  impl_->abort_reason(), ")");
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaSuccess) {
      done_ = true;
      keep_.clear();
      return true;
    }
    if (e != cudaErrorNotReady) check_cuda(e, "cudaEventQuery");
    ncclResult_t async = ncclSuccess;
    if (!impl_->with_comm([&](ncclComm_t c) { ncclCommGetAsyncError(c, &async); })) {
      impl_->fail_aborted(describe(desc_));
    }
    if (const int injected = impl_->injected_async_error.exchange(0); injected != 0) {
      async = static_cast<ncclResult_t>(injected);
    }
    if (async != ncclSuccess && async != ncclInProgress) {
      const std::string msg = describe(desc_) + ": NCCL reported " + ncclGetErrorString(async);
      impl_->abort_comm(msg);
      TESSERA_FAIL(msg, "; communicator aborted");
    }
    return false;
  }

  void wait(std::chrono::milliseconds timeout) override {
    if (done_) return;
    auto scope = Watchdog::global().watch(desc_);
    const auto deadline = deadline_after(timeout);
    while (!test()) {
      if (Clock::now() >= deadline) {
        const std::string msg =
            describe(desc_) + " did not complete within " + std::to_string(timeout.count()) + " ms";
        impl_->abort_comm(msg);
        throw CommTimeoutError(msg + "; NCCL communicator aborted", __FILE__, __LINE__);
      }
      std::this_thread::yield();
    }
  }

 private:
  std::shared_ptr<NcclCommunicator::Impl> impl_;
  std::string comm_label_;
  OpDesc desc_;
  std::vector<torch::Tensor> keep_;
  cudaEvent_t event_ = nullptr;
  bool done_ = false;
};

}  // namespace

std::array<char, 128> nccl_unique_id_over_mpi(MPI_Comm comm, int root) {
  static_assert(sizeof(ncclUniqueId) == 128, "ncclUniqueId is 128 bytes");
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  ncclUniqueId id{};
  if (rank == root) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    TESSERA_CHECK(r == ncclSuccess, "ncclGetUniqueId failed: ", ncclGetErrorString(r));
  }
  TESSERA_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, root, comm) == MPI_SUCCESS,
                "MPI_Bcast of the NCCL unique id failed");
  std::array<char, 128> out{};
  std::memcpy(out.data(), &id, sizeof id);
  return out;
}

void check_one_rank_per_device(MPI_Comm comm, int device) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  struct Slot {
    char host[256];
    int device;
  } mine{};
  gethostname(mine.host, sizeof mine.host - 1);
  mine.device = device;
  std::vector<Slot> slots(static_cast<size_t>(size));
  TESSERA_CHECK(MPI_Allgather(&mine, sizeof(Slot), MPI_BYTE, slots.data(), sizeof(Slot), MPI_BYTE,
                              comm) == MPI_SUCCESS,
                "MPI_Allgather of (host, device) failed");
  // Every rank scans the same table, so every rank raises the same error for the first clash.
  for (int a = 0; a < size; ++a) {
    for (int b = a + 1; b < size; ++b) {
      if (slots[a].device == slots[b].device && std::strcmp(slots[a].host, slots[b].host) == 0) {
        throw CollectiveError("NCCL needs one rank per GPU: ranks " + std::to_string(a) + " and " +
                                  std::to_string(b) + " both chose cuda:" +
                                  std::to_string(slots[a].device) + " on host " + slots[a].host +
                                  " (start at most one rank per GPU on each host, or set "
                                  "CUDA_VISIBLE_DEVICES= for every rank to run on the CPU)",
                              __FILE__, __LINE__);
      }
    }
  }
}

NcclCommunicator::NcclCommunicator(MPI_Comm bootstrap, int device, std::string label)
    : impl_(std::make_shared<Impl>()), device_(device) {
  set_label(std::move(label));
  MPI_Comm_rank(bootstrap, &rank_);
  MPI_Comm_size(bootstrap, &size_);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  TESSERA_CHECK(device >= 0, "device must be a CUDA device index >= 0, got ", device);
  // Refused before NCCL is touched: NCCL would fail later with a less helpful message, or hang.
  check_one_rank_per_device(bootstrap, device);
  if (mpi::collective_debug_enabled()) {
    TESSERA_CHECK(MPI_Comm_dup(bootstrap, &impl_->check_comm) == MPI_SUCCESS,
                  "MPI_Comm_dup of the bootstrap communicator failed");
  }
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_cuda(cudaMalloc(&impl_->barrier_buf, sizeof(float)), "cudaMalloc");
  auto raw = nccl_unique_id_over_mpi(bootstrap, 0);
  ncclUniqueId id;
  std::memcpy(&id, raw.data(), sizeof id);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const auto timeout = Watchdog::global().timeout();
  OpDesc desc;
  desc.comm = this->label().c_str();
  desc.op = "ncclCommInitRankConfig";
  desc.dtype = "none";
  desc.rank = rank_;
  desc.world_rank = world_rank_;
  auto scope = Watchdog::global().watch(desc);
  const ncclResult_t r = ncclCommInitRankConfig(&impl_->comm, size_, id, rank_, &config);
  impl_->settle(r, "ncclCommInitRankConfig",
                timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point::max());
}

NcclCommunicator::~NcclCommunicator() {
  if (impl_) impl_->destroy();
}

void NcclCommunicator::abort(const std::string& why) { impl_->abort_comm(why); }
void NcclCommunicator::inject_async_error_for_testing(int nccl_result) {
  impl_->injected_async_error = nccl_result;
}
bool NcclCommunicator::aborted() const { return impl_->aborted; }

namespace {

// Shared by every operation: check it, enqueue it, record its completion event.
template <typename Enqueue>
WorkPtr launch(const std::shared_ptr<NcclCommunicator::Impl>& impl, int device, OpDesc desc,
               torch::Tensor result, std::vector<torch::Tensor> keep, Enqueue&& enqueue) {
  TESSERA_CHECK(!impl->aborted, describe(desc), ": the NCCL communicator was aborted (",
                impl->abort_reason(), ")");
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t stream = current_stream(device);
  const auto timeout = Watchdog::global().timeout();
  const auto deadline = timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point::max();
  ncclResult_t r = ncclSuccess;
  if (!impl->with_comm([&](ncclComm_t c) { r = enqueue(c, stream); })) {
    impl->fail_aborted(describe(desc));
  }
  impl->settle(r, desc.op, deadline);
  cudaEvent_t event = nullptr;
  check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  const cudaError_t e = cudaEventRecord(event, stream);
  if (e != cudaSuccess) cudaEventDestroy(event);
  check_cuda(e, "cudaEventRecord");
  return std::make_unique<NcclWork>(impl, desc, std::move(result), std::move(keep), event);
}

}  // namespace

OpDesc NcclCommunicator::begin_op(const char* op, const torch::Tensor& tensor, int peer) {
  OpDesc desc;
  desc.comm = label().c_str();
  desc.op = op;
  desc.dtype = dtype_label(tensor);
  desc.rank = rank_;
  desc.world_rank = world_rank_;
  desc.count = tensor.numel();
  desc.peer = peer;
  desc.seq = count_op(nbytes(tensor));
  const bool point_to_point = std::strcmp(op, "send") == 0 || std::strcmp(op, "recv") == 0;
  if (impl_->check_comm != MPI_COMM_NULL && !point_to_point) {
    // Debug mode: the ranks compare fingerprints over MPI before NCCL sees the operation.
    std::string err;
    {
      auto scope = Watchdog::global().watch(desc);
      err = mpi::compare_fingerprints(
          impl_->check_comm, mpi::Fingerprint(op, desc.dtype, desc.count, peer, desc.seq), label());
    }
    if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
  }
  return desc;
}

WorkPtr NcclCommunicator::all_reduce_async(torch::Tensor tensor, ReduceOp op) {
  check_cuda_tensor(tensor, device_, "all_reduce");
  TESSERA_CHECK(op != ReduceOp::kAvg || tensor.is_floating_point(),
                "all_reduce: op=avg needs a floating dtype, got ", tensor.scalar_type());
  nccl_type(tensor);
  const OpDesc desc = begin_op("all_reduce", tensor, -1);
  return launch(impl_, device_, desc, tensor, {}, [&](ncclComm_t c, cudaStream_t s) {
    return ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor),
                         nccl_op(op), c, s);
  });
}

WorkPtr NcclCommunicator::broadcast_async(torch::Tensor tensor, int root) {
  check_cuda_tensor(tensor, device_, "broadcast");
  TESSERA_CHECK(root >= 0 && root < size_, "broadcast: root=", root, " is outside [0, ", size_,
                ")");
  nccl_type(tensor);
  const OpDesc desc = begin_op("broadcast", tensor, root);
  return launch(impl_, device_, desc, tensor, {}, [&](ncclComm_t c, cudaStream_t s) {
    return ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor),
                         root, c, s);
  });
}

WorkPtr NcclCommunicator::all_gather_async(const torch::Tensor& tensor, torch::Tensor out_arg) {
  check_cuda_tensor(tensor, device_, "all_gather");
  nccl_type(tensor);
  std::vector<int64_t> shape{size_};
  for (auto d : tensor.sizes()) shape.push_back(d);
  torch::Tensor out = output_tensor("all_gather", out_arg, shape, tensor);
  const OpDesc desc = begin_op("all_gather", tensor, -1);
  return launch(impl_, device_, desc, out, {tensor}, [&](ncclComm_t c, cudaStream_t s) {
    return ncclAllGather(tensor.data_ptr(), out.data_ptr(), tensor.numel(), nccl_type(tensor), c,
                         s);
  });
}

WorkPtr NcclCommunicator::reduce_scatter_async(const torch::Tensor& tensor, ReduceOp op,
                                               torch::Tensor out_arg) {
  check_cuda_tensor(tensor, device_, "reduce_scatter");
  TESSERA_CHECK(op != ReduceOp::kAvg || tensor.is_floating_point(),
                "reduce_scatter: op=avg needs a floating dtype, got ", tensor.scalar_type());
  TESSERA_CHECK(tensor.dim() >= 1, "reduce_scatter: tensor must have at least one dimension, got ",
                tensor.sizes());
  nccl_type(tensor);
  const int64_t rows = tensor.size(0);
  const int64_t row_elems = rows == 0 ? 0 : tensor.numel() / rows;
  auto shape = tensor.sizes().vec();
  shape[0] = scatter_rows(rows, rank_, size_).second;
  torch::Tensor out = output_tensor("reduce_scatter", out_arg, shape, tensor);
  const OpDesc desc = begin_op("reduce_scatter", tensor, -1);
  const int size = size_;
  return launch(impl_, device_, desc, out, {tensor},
                [&](ncclComm_t c, cudaStream_t s) -> ncclResult_t {
                  const auto type = nccl_type(tensor);
                  if (rows % size == 0) {
                    return ncclReduceScatter(tensor.data_ptr(), out.data_ptr(), out.numel(), type,
                                             nccl_op(op), c, s);
                  }
                  // Uneven rows: one reduce per destination rank, fused into one group.
                  const size_t elem = tensor.itemsize();
                  auto* base = static_cast<char*>(tensor.data_ptr());
                  ncclResult_t r = ncclGroupStart();
                  for (int dst = 0; dst < size && r == ncclSuccess; ++dst) {
                    const auto [begin, n] = scatter_rows(rows, dst, size);
                    r = ncclReduce(base + begin * row_elems * elem, out.data_ptr(), n * row_elems,
                                   type, nccl_op(op), dst, c, s);
                  }
                  const ncclResult_t end = ncclGroupEnd();
                  return r != ncclSuccess ? r : end;
                });
}

WorkPtr NcclCommunicator::all_to_all_async(const torch::Tensor& tensor, torch::Tensor out_arg) {
  check_cuda_tensor(tensor, device_, "all_to_all");
  TESSERA_CHECK(tensor.dim() >= 1 && tensor.size(0) % size_ == 0,
                "all_to_all: tensor.size(0)=", tensor.dim() >= 1 ? tensor.size(0) : -1,
                " must be a multiple of the communicator size ", size_);
  nccl_type(tensor);
  torch::Tensor out = output_tensor("all_to_all", out_arg, tensor.sizes(), tensor);
  const OpDesc desc = begin_op("all_to_all", tensor, -1);
  const int size = size_;
  return launch(impl_, device_, desc, out, {tensor},
                [&](ncclComm_t c, cudaStream_t s) -> ncclResult_t {
                  const auto type = nccl_type(tensor);
                  const size_t chunk = tensor.numel() / size;
                  const size_t bytes = chunk * tensor.itemsize();
                  auto* in = static_cast<const char*>(tensor.data_ptr());
                  auto* dst = static_cast<char*>(out.data_ptr());
                  ncclResult_t r = ncclGroupStart();
                  for (int p = 0; p < size && r == ncclSuccess; ++p) {
                    r = ncclSend(in + p * bytes, chunk, type, p, c, s);
                    if (r == ncclSuccess) r = ncclRecv(dst + p * bytes, chunk, type, p, c, s);
                  }
                  const ncclResult_t end = ncclGroupEnd();
                  return r != ncclSuccess ? r : end;
                });
}

WorkPtr NcclCommunicator::send_async(const torch::Tensor& tensor, int dst, int tag) {
  check_cuda_tensor(tensor, device_, "send");
  TESSERA_CHECK(dst >= 0 && dst < size_ && dst != rank_, "send: dst=", dst,
                " must be another rank in [0, ", size_, ")");
  // NCCL matches point-to-point messages by order, not by tag.
  TESSERA_CHECK(tag == 0, "send: the NCCL backend matches messages in order; tag must be 0, got ",
                tag);
  nccl_type(tensor);
  const OpDesc desc = begin_op("send", tensor, dst);
  return launch(impl_, device_, desc, tensor, {}, [&](ncclComm_t c, cudaStream_t s) {
    return ncclSend(tensor.data_ptr(), tensor.numel(), nccl_type(tensor), dst, c, s);
  });
}

WorkPtr NcclCommunicator::recv_async(torch::Tensor tensor, int src, int tag) {
  check_cuda_tensor(tensor, device_, "recv");
  TESSERA_CHECK(src >= 0 && src < size_ && src != rank_, "recv: src=", src,
                " must be another rank in [0, ", size_, ")");
  TESSERA_CHECK(tag == 0, "recv: the NCCL backend matches messages in order; tag must be 0, got ",
                tag);
  nccl_type(tensor);
  const OpDesc desc = begin_op("recv", tensor, src);
  return launch(impl_, device_, desc, tensor, {}, [&](ncclComm_t c, cudaStream_t s) {
    return ncclRecv(tensor.data_ptr(), tensor.numel(), nccl_type(tensor), src, c, s);
  });
}

WorkPtr NcclCommunicator::barrier_async() {
  // NCCL has no barrier: a one-element all-reduce on the device, in a buffer of our own so that
  // a CPU-only libtorch (no CUDA allocator) still works.
  const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(device_));
  // target_device: from_blob would otherwise ask the (possibly absent) CUDA hooks for the device.
  torch::Tensor t = at::for_blob(impl_->barrier_buf, {1})
                        .target_device(dev)
                        .deleter([](void*) {})
                        .options(torch::TensorOptions().device(dev))
                        .make_tensor();
  return all_reduce_async(t, ReduceOp::kSum);
}

}  // namespace tessera::sharding
