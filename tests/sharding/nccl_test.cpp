// The NCCL backend. The one-rank-per-GPU refusal needs no GPU and runs everywhere (under mpirun
// -np 2 both ranks claim cuda:0). The collectives run at world size 1 on any machine with a GPU,
// even with a CPU-only libtorch (device buffers come from cudaMalloc), and skip without one.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <torch/types.h>

#include "common/device.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/nccl/nccl_communicator.h"
#include "sharding/watchdog.h"

namespace tessera::sharding {
namespace {

TEST(Nccl, TwoRanksOnOneGpuAreRefusedClearly) {
  if (mpi::world_size() == 1) {
    EXPECT_NO_THROW(check_one_rank_per_device(MPI_COMM_WORLD, 0));
    return;
  }
  try {
    check_one_rank_per_device(MPI_COMM_WORLD, 0);
    FAIL() << "every rank on cuda:0 must be refused";
  } catch (const CollectiveError& e) {
    EXPECT_NE(e.message().find("NCCL needs one rank per GPU: ranks 0 and 1 both chose cuda:0"),
              std::string::npos)
        << e.what();
  }
  // Distinct devices per rank are accepted.
  EXPECT_NO_THROW(check_one_rank_per_device(MPI_COMM_WORLD, mpi::world_rank()));
}

bool cuda_usable(std::string* why) {
  if (query_devices().count == 0) {
    *why = "no CUDA device";
    return false;
  }
  return true;
}

// Device tensors without torch's CUDA backend (this libtorch may be CPU-only): cudaMalloc'd
// memory wrapped by at::for_blob (no torch CUDA op is ever called on them), copied with
// cudaMemcpy.
torch::Tensor to_device(const torch::Tensor& host) {
  auto h = host.contiguous();
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(1, h.numel() * h.itemsize());
  EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, h.data_ptr(), h.numel() * h.itemsize(), cudaMemcpyHostToDevice),
            cudaSuccess);
  // target_device: plain from_blob would ask the (possibly absent) CUDA hooks for the device.
  const torch::Device dev(torch::kCUDA, 0);
  return at::for_blob(p, h.sizes())
      .target_device(dev)
      .deleter([](void* q) { cudaFree(q); })
      .options(torch::TensorOptions().dtype(h.scalar_type()).device(dev))
      .make_tensor();
}
torch::Tensor empty_device(at::IntArrayRef shape, torch::ScalarType dtype) {
  return to_device(torch::zeros(shape, dtype));
}
torch::Tensor to_host(const torch::Tensor& dev) {
  cudaDeviceSynchronize();
  auto h = torch::empty(dev.sizes(), torch::TensorOptions().dtype(dev.scalar_type()));
  EXPECT_EQ(
      cudaMemcpy(h.data_ptr(), dev.data_ptr(), h.numel() * h.itemsize(), cudaMemcpyDeviceToHost),
      cudaSuccess);
  return h;
}

TEST(Nccl, WorldSizeOneCollectives) {
  std::string why;
  if (!cuda_usable(&why)) GTEST_SKIP() << why;
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16, torch::kLong}) {
    for (int64_t n : {0, 1, 7, 1001}) {
      auto x = (torch::arange(n * 2, torch::kLong) % 17 - 8).view({n, 2}).to(dtype);
      for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
        if (op == ReduceOp::kAvg && dtype == torch::kLong) continue;
        auto t = to_device(x);
        comm.all_reduce(t, op);
        EXPECT_TRUE(torch::equal(to_host(t), x)) << reduce_op_name(op) << " " << dtype;
      }
      auto b = to_device(x);
      comm.broadcast(b, 0);
      EXPECT_TRUE(torch::equal(to_host(b), x));
      auto gathered = empty_device({1, n, 2}, dtype);
      comm.all_gather_async(to_device(x), gathered)->wait(std::chrono::seconds(30));
      EXPECT_TRUE(torch::equal(to_host(gathered), x.unsqueeze(0)));
      auto scattered = empty_device({n, 2}, dtype);
      comm.reduce_scatter_async(to_device(x), ReduceOp::kSum, scattered)
          ->wait(std::chrono::seconds(30));
      EXPECT_TRUE(torch::equal(to_host(scattered), x));
      auto exchanged = empty_device({n, 2}, dtype);
      comm.all_to_all_async(to_device(x), exchanged)->wait(std::chrono::seconds(30));
      EXPECT_TRUE(torch::equal(to_host(exchanged), x));
    }
  }
  auto w = comm.all_reduce_async(to_device(torch::ones({1024})), ReduceOp::kSum);
  w->wait(std::chrono::seconds(30));
  EXPECT_TRUE(w->test());
  comm.barrier();
  EXPECT_EQ(comm.stats().ops, static_cast<int64_t>(comm.seq()));
  EXPECT_FALSE(comm.aborted());
  // After an abort every operation fails clearly instead of hanging.
  comm.abort("test");
  EXPECT_TRUE(comm.aborted());
  auto t = to_device(torch::ones({4}));
  EXPECT_THROW(comm.all_reduce(t, ReduceOp::kSum), Error);
}

TEST(Nccl, CpuTensorsAreRefused) {
  std::string why;
  if (!cuda_usable(&why)) GTEST_SKIP() << why;
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  auto t = torch::ones({4});
  try {
    comm.all_reduce(t, ReduceOp::kSum);
    FAIL() << "a CPU tensor must be refused";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("the NCCL communicator takes tensors on cuda:0"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace tessera::sharding
