// Collectives of the MPI communicator against single-process computations: every rank builds the
// inputs of every rank (they are a function of the rank), so the expected result is computed with
// plain libtorch ops on one process and compared with what the communicator returned. Runs as one
// process (ctest) and under mpirun -np 2 and 4. Also: process groups, tensor-parallel linear
// layers.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <chrono>

#include "sharding/device_mesh.h"
#include "sharding/mpi/mpi_communicator.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/process_groups.h"
#include "sharding/tensor_parallel.h"
#include "sharding/watchdog.h"
#include "tests/sharding/test_world.h"

namespace tessera::sharding {
namespace {

MpiCommunicator& world() { return test_world(); }

const std::vector<torch::ScalarType> kDtypes = {torch::kFloat, torch::kHalf, torch::kBFloat16,
                                                torch::kLong};
// 0 elements, fewer elements than ranks, and counts not divisible by 2, 3 or 4.
const std::vector<int64_t> kSizes = {0, 1, 3, 7, 1001};

// Rank r's input: integers in [-8, 8] (exact in fp16 / bf16 sums over 4 ranks, so every dtype is
// compared exactly), shaped [n, 3] so row-wise operations have rows to split.
torch::Tensor input_of(int rank, int64_t n, torch::ScalarType dtype, int salt = 0) {
  auto i = torch::arange(n * 3, torch::kLong);
  auto v = (i * 7 + rank * 13 + salt * 5) % 17 - 8;
  return v.view({n, 3}).to(dtype);
}

// Float data with a fractional part, for fp32 sums whose order may differ from the reference's.
torch::Tensor real_input_of(int rank, int64_t n) {
  auto i = torch::arange(n * 3, torch::kDouble);
  return torch::sin(i * 0.37 + rank * 1.3).view({n, 3}).to(torch::kFloat);
}

torch::Tensor reference_reduce(int world, ReduceOp op,
                               const std::function<torch::Tensor(int)>& make) {
  torch::Tensor acc = make(0).to(torch::kDouble);
  for (int r = 1; r < world; ++r) {
    const auto x = make(r).to(torch::kDouble);
    acc = op == ReduceOp::kMax ? torch::maximum(acc, x)
                               : (op == ReduceOp::kMin ? torch::minimum(acc, x) : acc + x);
  }
  if (op == ReduceOp::kAvg) acc = acc / world;
  return acc;
}

void expect_equal(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (got.numel() == 0) return;
  if (got.scalar_type() == torch::kFloat && want.is_floating_point()) {
    EXPECT_TRUE(torch::allclose(got.to(torch::kDouble), want.to(torch::kDouble), 1e-6, 1e-6))
        << what;
  } else {
    EXPECT_TRUE(torch::equal(got, want.to(got.scalar_type()))) << what;
  }
}

std::string tag(const char* op, torch::ScalarType dtype, int64_t n) {
  return std::string(op) + " " + c10::toString(dtype) + " n=" + std::to_string(n);
}

TEST(Communicator, AllReduceEveryOpDtypeAndSize) {
  auto& c = world();
  for (auto dtype : kDtypes) {
    for (int64_t n : kSizes) {
      for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kAvg}) {
        if (op == ReduceOp::kAvg && dtype == torch::kLong) continue;  // tested as an error below
        auto make = [&](int r) { return input_of(r, n, dtype); };
        auto t = make(c.rank());
        c.all_reduce(t, op);
        auto want = reference_reduce(c.size(), op, make);
        if (op == ReduceOp::kAvg) want = want.to(dtype);  // the mean, rounded to the dtype
        expect_equal(t, want, tag(reduce_op_name(op), dtype, n));
      }
    }
  }
  // fp32 with fractional values: sums agree to rounding.
  auto make = [&](int r) { return real_input_of(r, 257); };
  auto t = make(c.rank());
  c.all_reduce(t, ReduceOp::kSum);
  expect_equal(t, reference_reduce(c.size(), ReduceOp::kSum, make), "fp32 real sum");
}

TEST(Communicator, SplitWithBadColorOnOneRankFailsOnEveryRank) {
  // Before the colour was agreed on, the other ranks waited forever inside MPI_Comm_split.
  auto& c = world();
  const int color = c.rank() == c.size() - 1 ? -1 : 0;
  try {
    c.split(color, c.rank(), "bad");
    FAIL() << "expected an error on every rank";
  } catch (const CollectiveError& e) {
    EXPECT_NE(e.message().find("color must be >= 0, got -1"), std::string::npos) << e.message();
  }
  auto ok = c.split(0, c.rank(), "ok");  // the communicator is still usable
  EXPECT_EQ(ok->size(), c.size());
}

TEST(Communicator, AgreeOnErrorGivesTheLowestFailingRankOfTheGroup) {
  auto& c = world();
  EXPECT_EQ(c.agree_on_error(""), "");
  // Every rank but 0 fails: all get rank 1's message, named by its rank.
  const std::string mine = c.rank() == 0 ? "" : "bad input on rank " + std::to_string(c.rank());
  EXPECT_EQ(c.agree_on_error(mine), c.size() == 1 ? "" : "rank 1: bad input on rank 1");
  // Within pairs of ranks (a group that is not the world), the second of each pair fails: each
  // pair agrees on its own message, the same as MPI's own agreement over the pair computes.
  auto pair = c.split(c.rank() / 2, c.rank(), "pair");
  const std::string second =
      pair->rank() == 1 ? "bad input on world rank " + std::to_string(c.rank()) : "";
  const std::string agreed = pair->agree_on_error(second);
  EXPECT_EQ(agreed, mpi::agree_on_error(second, pair->comm()));
  if (pair->size() == 2) {
    EXPECT_EQ(agreed, "rank 1: bad input on world rank " + std::to_string(c.rank() / 2 * 2 + 1));
  } else {
    EXPECT_EQ(agreed, "");
  }
  // Through the abstract interface, as process groups hand it out.
  auto groups = make_process_groups(c, c.size() % 2 == 0 ? 2 : 1);
  Communicator& tp = groups.group(MeshDim::kTensor);
  EXPECT_EQ(tp.agree_on_error(tp.rank() == 0 ? "first" : ""), "first");
}

TEST(Communicator, AllReduceNonContiguousInPlace) {
  auto& c = world();
  auto base = input_of(c.rank(), 5, torch::kFloat);
  auto t = base.t();  // [3, 5], not contiguous
  ASSERT_FALSE(t.is_contiguous());
  c.all_reduce(t, ReduceOp::kSum);
  auto want = reference_reduce(c.size(), ReduceOp::kSum,
                               [](int r) { return input_of(r, 5, torch::kFloat).t(); });
  expect_equal(t, want, "non-contiguous");
  // The result landed in the caller's storage.
  expect_equal(base.t(), want, "non-contiguous base");
}

TEST(Communicator, BroadcastFromEveryRoot) {
  auto& c = world();
  for (auto dtype : kDtypes) {
    for (int64_t n : kSizes) {
      for (int root = 0; root < c.size(); ++root) {
        auto t = input_of(c.rank(), n, dtype);
        c.broadcast(t, root);
        expect_equal(t, input_of(root, n, dtype), tag("broadcast", dtype, n));
      }
    }
  }
}

TEST(Communicator, AllGather) {
  auto& c = world();
  for (auto dtype : kDtypes) {
    for (int64_t n : kSizes) {
      auto got = c.all_gather(input_of(c.rank(), n, dtype));
      std::vector<torch::Tensor> parts;
      for (int r = 0; r < c.size(); ++r) parts.push_back(input_of(r, n, dtype));
      expect_equal(got, torch::stack(parts), tag("all_gather", dtype, n));
    }
  }
}

TEST(Communicator, ReduceScatterUnevenRows) {
  auto& c = world();
  for (auto dtype : kDtypes) {
    for (int64_t n : kSizes) {
      for (auto op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
        if (op == ReduceOp::kAvg && dtype == torch::kLong) continue;
        auto make = [&](int r) { return input_of(r, n, dtype); };
        auto got = c.reduce_scatter(make(c.rank()), op);
        auto full = reference_reduce(c.size(), op, make);
        if (op == ReduceOp::kAvg) full = full.to(dtype);
        // The rows this rank owns: torch's own split of n rows into `size` near-equal parts.
        const auto [begin, count] = scatter_rows(n, c.rank(), c.size());
        expect_equal(got, full.narrow(0, begin, count), tag("reduce_scatter", dtype, n));
      }
    }
  }
  // scatter_rows matches tensor_split's partition (the first n % size ranks get one more row).
  for (int64_t n : kSizes) {
    auto parts = torch::arange(n).tensor_split(c.size());
    for (int r = 0; r < c.size(); ++r) {
      EXPECT_EQ(scatter_rows(n, r, c.size()).second, parts[r].numel()) << n;
    }
  }
}

TEST(Communicator, AllToAll) {
  auto& c = world();
  for (auto dtype : kDtypes) {
    for (int64_t k : {0, 1, 5}) {
      const int64_t n = k * c.size();
      auto got = c.all_to_all(input_of(c.rank(), n, dtype));
      // Rows [r*k, (r+1)*k) of the result are rank r's rows [me*k, (me+1)*k).
      std::vector<torch::Tensor> parts;
      for (int r = 0; r < c.size(); ++r) {
        parts.push_back(input_of(r, n, dtype).narrow(0, c.rank() * k, k));
      }
      expect_equal(got, torch::cat(parts), tag("all_to_all", dtype, n));
    }
  }
}

TEST(Communicator, PreallocatedOutputs) {
  auto& c = world();
  const int64_t k = 3, n = k * c.size();
  auto in = input_of(c.rank(), n, torch::kFloat);
  auto gathered = torch::empty({c.size(), n, 3});
  auto g = c.all_gather(in, gathered);
  EXPECT_TRUE(g.is_same(gathered));
  EXPECT_TRUE(torch::equal(gathered[c.size() - 1], input_of(c.size() - 1, n, torch::kFloat)));
  auto scattered = torch::empty({k, 3});
  EXPECT_TRUE(c.reduce_scatter(in, ReduceOp::kSum, scattered).is_same(scattered));
  auto want = reference_reduce(c.size(), ReduceOp::kSum,
                               [&](int r) { return input_of(r, n, torch::kFloat); });
  expect_equal(scattered, want.narrow(0, c.rank() * k, k), "reduce_scatter into out");
  auto exchanged = torch::empty({n, 3});
  auto w = c.all_to_all_async(in, exchanged);
  w->wait();
  EXPECT_TRUE(w->result().is_same(exchanged));
  // A wrong output shape or dtype is refused before anything moves, naming both shapes.
  try {
    c.all_gather(in, torch::empty({n, 3}));
    FAIL() << "wrong out shape must throw";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("all_gather: out must be a contiguous Float tensor of shape [" +
                               std::to_string(c.size()) + ", " + std::to_string(n) + ", 3]"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(c.all_to_all(in, torch::empty({n, 3}, torch::kDouble)), Error);
}

TEST(Communicator, BadArgumentsAreClearErrors) {
  auto& c = world();
  auto i64 = input_of(c.rank(), 4, torch::kLong);
  try {
    c.all_reduce(i64, ReduceOp::kAvg);
    FAIL() << "avg on int64 must throw";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("op=avg needs a floating dtype"), std::string::npos) << e.what();
  }
  if (c.size() > 1) {
    // Rows not divisible by the world size: all_to_all refuses, naming the value.
    const int64_t rows = c.size() + 1;
    try {
      c.all_to_all(input_of(c.rank(), rows, torch::kFloat));
      FAIL() << "all_to_all with " << rows << " rows must throw";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("tensor.size(0)=" + std::to_string(rows)), std::string::npos)
          << e.what();
    }
  }
  auto f = input_of(c.rank(), 2, torch::kFloat);
  EXPECT_THROW(c.broadcast(f, c.size()), Error);
  EXPECT_THROW(c.send(f, c.rank()), Error);
  EXPECT_THROW(c.reduce_scatter(torch::zeros({}), ReduceOp::kSum), Error);
  auto d = torch::zeros({2}, torch::kComplexFloat);
  EXPECT_THROW(c.all_reduce(d, ReduceOp::kSum), Error);
}

TEST(Communicator, SendRecvRingAndAsyncDeadline) {
  auto& c = world();
  if (c.size() == 1) GTEST_SKIP() << "point to point needs two ranks";
  const int next = (c.rank() + 1) % c.size(), prev = (c.rank() + c.size() - 1) % c.size();
  for (auto dtype : kDtypes) {
    auto out = input_of(c.rank(), 9, dtype);
    auto in = torch::empty_like(out);
    auto r = c.recv_async(in, prev, 3);
    auto s = c.send_async(out, next, 3);
    s->wait(std::chrono::seconds(30));
    r->wait(std::chrono::seconds(30));
    expect_equal(in, input_of(prev, 9, dtype), tag("recv", dtype, 9));
  }
  // A receive whose message is not sent yet times out with a clear error, then completes once it
  // is sent.
  if (c.rank() == 1) {
    auto buf = torch::zeros({4}, torch::kFloat);
    auto r = c.recv_async(buf, 0, 7);
    EXPECT_FALSE(r->test());
    try {
      r->wait(std::chrono::milliseconds(50));
      FAIL() << "wait must time out";
    } catch (const CommTimeoutError& e) {
      EXPECT_NE(e.message().find("recv #"), std::string::npos) << e.what();
      EXPECT_NE(e.message().find("did not complete within 50 ms"), std::string::npos) << e.what();
    }
    c.barrier();
    r->wait(std::chrono::seconds(30));
    EXPECT_TRUE(torch::equal(buf, torch::full({4}, 5.0f)));
  } else {
    c.barrier();
    if (c.rank() == 0) c.send(torch::full({4}, 5.0f), 1, 7);
  }
}

// An operation may outlive its communicator (MPI completes pending operations on a freed
// communicator). Its timeout report still names the communicator correctly: the Work keeps its own
// copy of the label instead of pointing into the destroyed communicator.
TEST(Communicator, WorkOutlivesItsCommunicator) {
  auto& c = world();
  if (c.size() == 1) GTEST_SKIP() << "point to point needs two ranks";
  const std::string label = "a-process-group-label-long-enough-to-live-on-the-heap";
  auto group = c.split(0, c.rank(), label);
  if (c.rank() == 1) {
    auto buf = torch::zeros({4}, torch::kFloat);
    auto r = group->recv_async(buf, 0, 0);
    group.reset();
    // Reuse the freed memory so that a dangling label would read as X's.
    std::vector<std::string> reuse(64, std::string(label.size(), 'X'));
    try {
      r->wait(std::chrono::milliseconds(50));
      FAIL() << "wait must time out";
    } catch (const CommTimeoutError& e) {
      EXPECT_NE(e.message().find("(" + label + " rank 1): recv #1"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "unexpected error: " << e.what();
    }
    c.barrier();
    r->wait(std::chrono::seconds(30));
    EXPECT_TRUE(torch::equal(buf, torch::full({4}, 6.0f)));
  } else {
    c.barrier();
    if (c.rank() == 0) group->send(torch::full({4}, 6.0f), 1, 0);
  }
}

TEST(Communicator, AsyncCollectivesOverlap) {
  auto& c = world();
  auto a = input_of(c.rank(), 33, torch::kFloat);
  auto b = input_of(c.rank(), 17, torch::kBFloat16);
  auto wa = c.all_reduce_async(a, ReduceOp::kSum);
  auto wb = c.all_gather_async(b);
  auto wc = c.barrier_async();
  wc->wait(std::chrono::seconds(30));
  wb->wait(std::chrono::seconds(30));
  wa->wait(std::chrono::seconds(30));
  EXPECT_TRUE(wa->test());
  expect_equal(a,
               reference_reduce(c.size(), ReduceOp::kSum,
                                [](int r) { return input_of(r, 33, torch::kFloat); }),
               "async all_reduce");
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < c.size(); ++r) parts.push_back(input_of(r, 17, torch::kBFloat16));
  expect_equal(wb->result(), torch::stack(parts), "async all_gather");
}

TEST(Communicator, StatsCountPayloadAndSequence) {
  auto& c = world();
  c.reset_stats();
  const uint64_t seq0 = c.seq();
  auto t = torch::zeros({10}, torch::kFloat);
  c.all_reduce(t, ReduceOp::kSum);
  c.all_gather(torch::zeros({3}, torch::kLong));
  EXPECT_EQ(c.stats().ops, 2);
  EXPECT_EQ(c.stats().bytes, 10 * 4 + 3 * 8);
  EXPECT_EQ(c.seq(), seq0 + 2);
}

TEST(DeviceMesh, LayoutAndGroups) {
  DeviceMesh m(8, /*tp=*/2, /*sp=*/2);
  EXPECT_EQ(m.size(MeshDim::kData), 2);
  for (int r = 0; r < 8; ++r) EXPECT_EQ(m.rank_of(m.coord(r)), r);
  EXPECT_EQ(m.coord(5), (MeshCoord{1, 0, 1}));
  EXPECT_EQ(m.group(MeshDim::kTensor, 5), (std::vector<int>{4, 5}));
  EXPECT_EQ(m.group(MeshDim::kSequence, 5), (std::vector<int>{5, 7}));
  EXPECT_EQ(m.group(MeshDim::kData, 5), (std::vector<int>{1, 5}));
  EXPECT_THROW(DeviceMesh(6, 4), Error);
  EXPECT_EQ(device_for_local_rank(1, 2, 8), 1);
  EXPECT_EQ(device_for_local_rank(1, 2, 0), -1);
  try {
    device_for_local_rank(0, 4, 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("4 ranks on this node but only 2 CUDA devices"), std::string::npos);
  }
}

TEST(ProcessGroups, SplitMatchesMeshAndCollectivesStayInGroup) {
  auto& c = world();
  for (int tp : {1, 2}) {
    if (c.size() % tp != 0) continue;
    auto g = make_process_groups(c, tp);
    for (MeshDim dim : {MeshDim::kData, MeshDim::kTensor, MeshDim::kSequence}) {
      auto members = g.mesh.group(dim, c.rank());
      auto& comm = g.group(dim);
      ASSERT_EQ(comm.size(), static_cast<int>(members.size()));
      EXPECT_EQ(members[comm.rank()], c.rank());
      // Sum of world ranks inside the group equals the mesh's member list.
      auto t = torch::full({1}, static_cast<int64_t>(c.rank()), torch::kLong);
      comm.all_reduce(t, ReduceOp::kSum);
      int64_t want = 0;
      for (int r : members) want += r;
      EXPECT_EQ(t.item<int64_t>(), want) << mesh_dim_name(dim) << " tp=" << tp;
    }
  }
}

TEST(TensorParallel, ColumnThenRowParallelEqualsFullMlp) {
  auto& c = world();
  const int64_t in = 12, hidden = 8 * c.size(), out = 5;
  auto x = torch::sin(torch::arange(3 * in, torch::kFloat) * 0.3).view({3, in});
  auto w1 = torch::cos(torch::arange(hidden * in, torch::kFloat) * 0.11).view({hidden, in});
  auto b1 = torch::sin(torch::arange(hidden, torch::kFloat));
  auto w2 = torch::sin(torch::arange(out * hidden, torch::kFloat) * 0.07).view({out, hidden});
  auto b2 = torch::cos(torch::arange(out, torch::kFloat));
  auto want = torch::linear(torch::relu(torch::linear(x, w1, b1)), w2, b2);

  const auto s = even_shard(hidden, c.rank(), c.size(), "hidden");
  auto h = torch::relu(
      column_parallel_linear(x, w1.narrow(0, s.begin, s.size), b1.narrow(0, s.begin, s.size)));
  auto y = row_parallel_linear(h, w2.narrow(1, s.begin, s.size).contiguous(), &c, b2);
  EXPECT_TRUE(torch::allclose(y, want, 1e-5, 1e-5));
}

}  // namespace

MpiCommunicator& test_world() {
  static MpiCommunicator comm(MPI_COMM_WORLD);
  return comm;
}

}  // namespace tessera::sharding
