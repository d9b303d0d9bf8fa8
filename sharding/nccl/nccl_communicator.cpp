#include "sharding/nccl/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/error.h"

#ifdef TESSERA_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace tessera::sharding {

namespace {

void check_nccl(ncclResult_t r, const char* what) {
  TESSERA_CHECK(r == ncclSuccess, what, " failed: ", ncclGetErrorString(r));
}
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

}  // namespace

std::array<char, 128> nccl_unique_id_over_mpi(MPI_Comm comm, int root) {
  static_assert(sizeof(ncclUniqueId) == 128, "ncclUniqueId is 128 bytes");
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  ncclUniqueId id{};
  if (rank == root) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  TESSERA_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, root, comm) == MPI_SUCCESS,
                "MPI_Bcast of the NCCL unique id failed");
  std::array<char, 128> out{};
  std::memcpy(out.data(), &id, sizeof id);
  return out;
}

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
};

NcclCommunicator::NcclCommunicator(MPI_Comm bootstrap, int device)
    : impl_(std::make_unique<Impl>()), device_(device) {
  MPI_Comm_rank(bootstrap, &rank_);
  MPI_Comm_size(bootstrap, &size_);
  // Refuse two ranks on one GPU (NCCL would fail later with a less helpful message or hang).
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  struct Slot {
    char host[256];
    int device;
  } mine{}, *all = nullptr;
  std::memcpy(mine.host, host, sizeof host);
  mine.device = device;
  std::vector<Slot> slots(size_);
  all = slots.data();
  MPI_Allgather(&mine, sizeof(Slot), MPI_BYTE, all, sizeof(Slot), MPI_BYTE, bootstrap);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    TESSERA_CHECK(!(slots[r].device == device && std::strcmp(slots[r].host, host) == 0),
                  "NCCL needs one rank per GPU: ranks ", std::min(r, rank_), " and ",
                  std::max(r, rank_), " both chose cuda:", device, " on host ", host);
  }
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  auto raw = nccl_unique_id_over_mpi(bootstrap, 0);
  ncclUniqueId id;
  std::memcpy(&id, raw.data(), sizeof id);
  check_nccl(ncclCommInitRank(&impl_->comm, size_, id, rank_), "ncclCommInitRank");
}

NcclCommunicator::~NcclCommunicator() {
  if (impl_ && impl_->comm) ncclCommDestroy(impl_->comm);
}

void NcclCommunicator::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  check_cuda_tensor(tensor, device_, "all_reduce");
  cudaStream_t s = current_stream(device_);
  check_nccl(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor),
                           nccl_op(op), impl_->comm, s),
             "ncclAllReduce");
  check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

void NcclCommunicator::broadcast(torch::Tensor& tensor, int root) {
  check_cuda_tensor(tensor, device_, "broadcast");
  TESSERA_CHECK(root >= 0 && root < size_, "broadcast: root=", root, " is outside [0, ", size_,
                ")");
  cudaStream_t s = current_stream(device_);
  check_nccl(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor),
                           root, impl_->comm, s),
             "ncclBroadcast");
  check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

torch::Tensor NcclCommunicator::all_gather(const torch::Tensor& tensor) {
  check_cuda_tensor(tensor, device_, "all_gather");
  std::vector<int64_t> shape{size_};
  for (auto d : tensor.sizes()) shape.push_back(d);
  torch::Tensor out = torch::empty(shape, tensor.options());
  cudaStream_t s = current_stream(device_);
  check_nccl(ncclAllGather(tensor.data_ptr(), out.data_ptr(), tensor.numel(), nccl_type(tensor),
                           impl_->comm, s),
             "ncclAllGather");
  check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  return out;
}

void NcclCommunicator::barrier() {
  // A one-element all-reduce on the device: NCCL has no barrier of its own.
  torch::Tensor t = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA, device_));
  all_reduce(t, ReduceOp::kSum);
}

}  // namespace tessera::sharding
