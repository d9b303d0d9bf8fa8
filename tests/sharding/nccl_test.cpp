// The NCCL backend's collectives on GPUs (the bootstrap, which needs none, is nccl_bootstrap_test).
// Outputs written out of place start as a sentinel that no correct result contains, so a no-op
// fails; with two GPUs or more (mpirun -np 2 on a machine with two devices) every collective gets
// rank-dependent inputs whose result differs from every input (sums, averages, extremes, the
// broadcast of root 1, the gather order, uneven reduce-scatter rows, the all-to-all layout, a
// send/recv ring). At world size 1 an in-place all-reduce or broadcast cannot differ from its
// input; those are checked only for running and for leaving the data intact. A stalled stream
// exercises the deadline (wait → CommTimeoutError → ncclCommAbort) and the asynchronous-error
// poll. Skips (reported as skipped by ctest) without a GPU, and its multi-GPU cases without a
// second device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>
#include <torch/types.h>

#include <chrono>

#include "common/device.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/nccl/nccl_communicator.h"
#include "sharding/watchdog.h"

// tests/sharding/nccl_stall_cuda.cu
int tessera_test_stall_stream(double ms, void* stream);

namespace tessera::sharding {
namespace {

using std::chrono::milliseconds;

int devices() { return query_devices().count; }

// Device tensors without torch's CUDA backend (this libtorch may be CPU-only): cudaMalloc'd
// memory wrapped by at::for_blob (no torch CUDA op is ever called on them), copied with
// cudaMemcpy.
torch::Tensor to_device(const torch::Tensor& host, int device) {
  auto h = host.contiguous();
  void* p = nullptr;
  const size_t bytes = std::max<size_t>(1, h.numel() * h.itemsize());
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, h.data_ptr(), h.numel() * h.itemsize(), cudaMemcpyHostToDevice),
            cudaSuccess);
  // target_device: plain from_blob would ask the (possibly absent) CUDA hooks for the device.
  const torch::Device dev(torch::kCUDA, static_cast<c10::DeviceIndex>(device));
  return at::for_blob(p, h.sizes())
      .target_device(dev)
      .deleter([](void* q) { cudaFree(q); })
      .options(torch::TensorOptions().dtype(h.scalar_type()).device(dev))
      .make_tensor();
}
// A device buffer holding the sentinel -77 in every element (not in any expected result).
torch::Tensor sentinel_device(at::IntArrayRef shape, torch::ScalarType dtype, int device) {
  return to_device(torch::full(shape, -77, torch::TensorOptions().dtype(dtype)), device);
}
torch::Tensor to_host(const torch::Tensor& dev) {
  cudaDeviceSynchronize();
  auto h = torch::empty(dev.sizes(), torch::TensorOptions().dtype(dev.scalar_type()));
  EXPECT_EQ(
      cudaMemcpy(h.data_ptr(), dev.data_ptr(), h.numel() * h.itemsize(), cudaMemcpyDeviceToHost),
      cudaSuccess);
  return h;
}

// Input of rank r: values in [-8, 8] shifted by 20 * r, so ranks never hold equal values.
torch::Tensor input_of(int rank, int64_t n, torch::ScalarType dtype) {
  return ((torch::arange(n * 2, torch::kLong) % 17 - 8) + 20 * rank).view({n, 2}).to(dtype);
}

TEST(Nccl, WorldSizeOneOutOfPlaceCollectivesWriteTheirOutputs) {
  if (devices() == 0) GTEST_SKIP() << "no CUDA device";
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16, torch::kLong}) {
    for (int64_t n : {1, 7, 1001}) {
      const auto x = input_of(0, n, dtype);
      auto gathered = sentinel_device({1, n, 2}, dtype, 0);
      comm.all_gather_async(to_device(x, 0), gathered)->wait(milliseconds(30000));
      EXPECT_TRUE(torch::equal(to_host(gathered), x.unsqueeze(0))) << dtype << " n=" << n;
      auto scattered = sentinel_device({n, 2}, dtype, 0);
      comm.reduce_scatter_async(to_device(x, 0), ReduceOp::kSum, scattered)
          ->wait(milliseconds(30000));
      EXPECT_TRUE(torch::equal(to_host(scattered), x));
      auto exchanged = sentinel_device({n, 2}, dtype, 0);
      comm.all_to_all_async(to_device(x, 0), exchanged)->wait(milliseconds(30000));
      EXPECT_TRUE(torch::equal(to_host(exchanged), x));
      // In place at world size 1: the identity (it runs, and leaves the data as it was).
      for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
        if (op == ReduceOp::kAvg && dtype == torch::kLong) continue;
        auto t = to_device(x, 0);
        comm.all_reduce(t, op);
        EXPECT_TRUE(torch::equal(to_host(t), x)) << reduce_op_name(op) << " " << dtype;
      }
    }
  }
  auto w = comm.all_reduce_async(to_device(torch::ones({1024}), 0), ReduceOp::kSum);
  w->wait(milliseconds(30000));
  EXPECT_TRUE(w->test());
  comm.barrier();
  EXPECT_EQ(comm.stats().ops, static_cast<int64_t>(comm.seq()));
  EXPECT_FALSE(comm.aborted());
  comm.abort("test");
  EXPECT_TRUE(comm.aborted());
  auto t = to_device(torch::ones({4}), 0);
  EXPECT_THROW(comm.all_reduce(t, ReduceOp::kSum), Error);
}

// Every collective with results that differ from every rank's input (one GPU per rank).
TEST(Nccl, MultiGpuCollectivesAgainstClosedForms) {
  const int size = mpi::world_size(), rank = mpi::world_rank();
  if (size < 2) GTEST_SKIP() << "needs mpirun -np 2 or more";
  if (devices() < size) GTEST_SKIP() << "needs one GPU per rank: " << devices() << " present";
  NcclCommunicator comm(MPI_COMM_WORLD, rank);
  const int64_t n = 6 * size + 1;
  for (auto dtype : {torch::kFloat, torch::kBFloat16, torch::kLong}) {
    std::vector<torch::Tensor> xs;
    for (int r = 0; r < size; ++r) xs.push_back(input_of(r, n, torch::kDouble));
    auto stacked = torch::stack(xs);
    const auto mine = xs[rank].to(dtype);
    struct OpCase {
      ReduceOp op;
      torch::Tensor want;
    };
    std::vector<OpCase> ops = {{ReduceOp::kSum, stacked.sum(0)},
                               {ReduceOp::kMax, std::get<0>(stacked.max(0))},
                               {ReduceOp::kMin, std::get<0>(stacked.min(0))}};
    if (dtype != torch::kLong) ops.push_back({ReduceOp::kAvg, stacked.mean(0)});
    for (const auto& c : ops) {
      auto t = to_device(mine, rank);
      comm.all_reduce(t, c.op);
      EXPECT_TRUE(torch::allclose(to_host(t).to(torch::kDouble), c.want, 1e-2, 1e-2))
          << reduce_op_name(c.op) << " " << dtype;
    }
    auto b = to_device(mine, rank);
    comm.broadcast(b, 1);
    EXPECT_TRUE(torch::equal(to_host(b), xs[1].to(dtype)));
    auto gathered = sentinel_device({size, n, 2}, dtype, rank);
    comm.all_gather_async(to_device(mine, rank), gathered)->wait(milliseconds(30000));
    EXPECT_TRUE(torch::equal(to_host(gathered), stacked.to(dtype)));
    // Uneven rows: rank r gets its share of the summed rows.
    const auto [begin, rows] = scatter_rows(n, rank, size);
    auto scattered = sentinel_device({rows, 2}, dtype, rank);
    comm.reduce_scatter_async(to_device(mine, rank), ReduceOp::kSum, scattered)
        ->wait(milliseconds(30000));
    EXPECT_TRUE(torch::allclose(to_host(scattered).to(torch::kDouble),
                                stacked.sum(0).narrow(0, begin, rows), 1e-2, 1e-2));
    // All-to-all: chunk p of rank r lands as chunk r of rank p.
    const int64_t m = 3 * size;
    std::vector<torch::Tensor> sends;
    for (int r = 0; r < size; ++r) sends.push_back(input_of(r, m, torch::kDouble));
    auto exchanged = sentinel_device({m, 2}, dtype, rank);
    comm.all_to_all_async(to_device(sends[rank].to(dtype), rank), exchanged)
        ->wait(milliseconds(30000));
    std::vector<torch::Tensor> want;
    for (int r = 0; r < size; ++r) want.push_back(sends[r].chunk(size, 0)[rank]);
    EXPECT_TRUE(torch::equal(to_host(exchanged), torch::cat(want).to(dtype)));
    // A ring of send / recv.
    auto got = sentinel_device({n, 2}, dtype, rank);
    auto s = comm.send_async(to_device(mine, rank), (rank + 1) % size);
    auto rv = comm.recv_async(got, (rank + size - 1) % size);
    s->wait(milliseconds(30000));
    rv->wait(milliseconds(30000));
    EXPECT_TRUE(torch::equal(to_host(got), xs[(rank + size - 1) % size].to(dtype)));
  }
}

// A collective stuck behind a busy stream: wait() gives up at its deadline with a
// CommTimeoutError naming the operation, aborts the communicator, and every later operation
// fails at once with the reason.
TEST(Nccl, DeadlinePassedAbortsTheCommunicator) {
  if (devices() == 0) GTEST_SKIP() << "no CUDA device";
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  auto t = to_device(torch::ones({256}), 0);
  comm.all_reduce(t, ReduceOp::kSum);  // warm: the communicator is up
  ASSERT_EQ(tessera_test_stall_stream(3000, nullptr), 0);
  auto w = comm.all_reduce_async(t, ReduceOp::kSum);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    w->wait(milliseconds(200));
    ADD_FAILURE() << "a collective behind a 3 s stall finished within 200 ms";
  } catch (const CommTimeoutError& e) {
    EXPECT_NE(e.message().find("did not complete within 200 ms"), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("all_reduce"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  EXPECT_TRUE(comm.aborted());
  try {
    comm.all_reduce(t, ReduceOp::kSum);
    ADD_FAILURE() << "an aborted communicator accepted work";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("was aborted ("), std::string::npos) << e.what();
    EXPECT_NE(e.message().find("did not complete within 200 ms"), std::string::npos) << e.what();
  }
  try {
    w->test();
    ADD_FAILURE() << "the stalled work reports no abort";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("was aborted"), std::string::npos) << e.what();
  }
  cudaDeviceSynchronize();  // let the stall end before the next test
  cudaGetLastError();
}

// An asynchronous NCCL error seen while polling an unfinished operation aborts the communicator
// and names the error (injected: a real one needs a failing peer or network).
TEST(Nccl, AsyncErrorSeenWhilePollingAborts) {
  if (devices() == 0) GTEST_SKIP() << "no CUDA device";
  if (mpi::world_size() != 1) GTEST_SKIP() << "world-size-1 test";
  NcclCommunicator comm(MPI_COMM_WORLD, 0);
  auto t = to_device(torch::ones({256}), 0);
  comm.all_reduce(t, ReduceOp::kSum);
  ASSERT_EQ(tessera_test_stall_stream(1000, nullptr), 0);  // the event is not ready when polled
  auto w = comm.all_reduce_async(t, ReduceOp::kSum);
  comm.inject_async_error_for_testing(static_cast<int>(ncclSystemError));
  try {
    w->wait(milliseconds(30000));
    ADD_FAILURE() << "the injected asynchronous error went unnoticed";
  } catch (const CommTimeoutError& e) {
    ADD_FAILURE() << "timed out instead of seeing the error: " << e.what();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(std::string("NCCL reported ") + ncclGetErrorString(ncclSystemError)),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(comm.aborted());
  cudaDeviceSynchronize();
  cudaGetLastError();
}

TEST(Nccl, CpuTensorsAreRefused) {
  if (devices() == 0) GTEST_SKIP() << "no CUDA device";
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
