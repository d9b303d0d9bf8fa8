#include "sharding/mpi/mpi_communicator.h"

#include <climits>
#include <exception>
#include <thread>
#include <vector>

#include "common/dtype.h"
#include "common/error.h"
#include "sharding/mpi/collective_check.h"
#include "sharding/mpi/mpi_env.h"
#include "sharding/watchdog.h"

namespace tessera::sharding {

namespace {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  TESSERA_FAIL(what, " failed: ", std::string(msg, len));
}

// --- fp16 / bf16 reductions as MPI user ops ---------------------------------------------------
template <float (*ToF)(uint16_t), uint16_t (*FromF)(float), int Op>
void half_op(void* in, void* inout, int* len, MPI_Datatype*) {
  auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = ToF(a[i]);
    const float y = ToF(b[i]);
    const float r = Op == 0 ? x + y : (Op == 1 ? (x > y ? x : y) : (x < y ? x : y));
    b[i] = FromF(r);
  }
}

struct HalfOps {
  MPI_Op f16[3];
  MPI_Op bf16[3];
};

const HalfOps& half_ops() {
  static HalfOps ops = [] {
    HalfOps o{};
    MPI_Op_create(&half_op<half_to_float, float_to_half, 0>, 1, &o.f16[0]);
    MPI_Op_create(&half_op<half_to_float, float_to_half, 1>, 1, &o.f16[1]);
    MPI_Op_create(&half_op<half_to_float, float_to_half, 2>, 1, &o.f16[2]);
    MPI_Op_create(&half_op<bf16_to_float, float_to_bf16, 0>, 1, &o.bf16[0]);
    MPI_Op_create(&half_op<bf16_to_float, float_to_bf16, 1>, 1, &o.bf16[1]);
    MPI_Op_create(&half_op<bf16_to_float, float_to_bf16, 2>, 1, &o.bf16[2]);
    return o;
  }();
  return ops;
}

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return MPI_FLOAT;
    case torch::kDouble:
      return MPI_DOUBLE;
    case torch::kLong:
      return MPI_INT64_T;
    case torch::kInt:
      return MPI_INT32_T;
    case torch::kShort:
      return MPI_INT16_T;
    case torch::kChar:
      return MPI_INT8_T;
    case torch::kByte:
      return MPI_UINT8_T;
    case torch::kBool:
      return MPI_C_BOOL;
    case torch::kHalf:
    case torch::kBFloat16:
      return MPI_UINT16_T;
    default:
      TESSERA_FAIL("MPI communicator: unsupported dtype ", t.scalar_type());
  }
}

MPI_Op mpi_op(const torch::Tensor& t, ReduceOp op) {
  const int idx = op == ReduceOp::kMax ? 1 : (op == ReduceOp::kMin ? 2 : 0);
  if (t.scalar_type() == torch::kHalf) return half_ops().f16[idx];
  if (t.scalar_type() == torch::kBFloat16) return half_ops().bf16[idx];
  if (t.scalar_type() == torch::kBool) {
    TESSERA_CHECK(op != ReduceOp::kAvg, "op=avg is not defined for dtype bool");
    return op == ReduceOp::kMin ? MPI_LAND : MPI_LOR;
  }
  return idx == 1 ? MPI_MAX : (idx == 2 ? MPI_MIN : MPI_SUM);
}

int checked_count(int64_t n, const char* op) {
  TESSERA_CHECK(n <= INT_MAX, op, ": ", n, " elements exceed MPI's int count; split the tensor");
  return static_cast<int>(n);
}

void check_cpu(const torch::Tensor& t, const char* op) {
  TESSERA_CHECK(t.device().is_cpu(), op, ": the MPI communicator takes CPU tensors, got device ",
                t.device());
}

void check_reduce(const torch::Tensor& t, ReduceOp op, const char* name) {
  if (op == ReduceOp::kAvg) {
    TESSERA_CHECK(t.is_floating_point(), name, ": op=avg needs a floating dtype, got ",
                  t.scalar_type());
  }
}

int64_t nbytes(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.itemsize()); }

// One nonblocking MPI operation: the request, the tensors it reads and writes (kept alive until it
// completes) and what to do once it did (kAvg's division).
class MpiWork final : public Work {
 public:
  MpiWork(OpDesc desc, torch::Tensor result, torch::Tensor input, bool avg, int avg_div)
      : comm_label_(desc.comm),
        desc_(desc),
        input_(std::move(input)),
        avg_(avg),
        avg_div_(avg_div) {
    // A Work may outlive its communicator (MPI completes operations on a freed communicator):
    // its reports name the communicator from a copy of the label.
    desc_.comm = comm_label_.c_str();
    result_ = std::move(result);
  }
  // MPI may still read and write the buffers of an unfinished operation: wait for it, like a
  // std::future of std::async. While an exception unwinds (a timeout on the way to ending the
  // job) waiting could block until the watchdog fires, so the buffers are parked instead.
  ~MpiWork() override {
    if (done_ || req_ == MPI_REQUEST_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (std::uncaught_exceptions() > 0) {
      static std::vector<torch::Tensor>* parked = new std::vector<torch::Tensor>;
      parked->push_back(input_);
      parked->push_back(result_);
      return;
    }
    auto scope = Watchdog::global().watch(desc_);
    MPI_Wait(&req_, MPI_STATUS_IGNORE);
  }
  MpiWork(const MpiWork&) = delete;
  MpiWork& operator=(const MpiWork&) = delete;
  MPI_Request* request() { return &req_; }
  std::vector<int> counts;
  void mark_done() {
    if (done_) return;
    done_ = true;
    if (avg_) result_.div_(avg_div_);
    input_ = torch::Tensor();
  }

  bool test() override {
    if (done_) return true;
    int flag = 0;
    check_mpi(MPI_Test(&req_, &flag, MPI_STATUS_IGNORE), desc_.op);
    if (flag) mark_done();
    return done_;
  }

  void wait(std::chrono::milliseconds timeout) override {
    if (done_) return;
    auto scope = Watchdog::global().watch(desc_);
    if (timeout == std::chrono::milliseconds::max()) {
      check_mpi(MPI_Wait(&req_, MPI_STATUS_IGNORE), desc_.op);
      mark_done();
      return;
    }
    // MPI_Wait has no deadline: poll. Progress happens inside MPI_Test.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!test()) {
      if (std::chrono::steady_clock::now() >= deadline) {
        throw CommTimeoutError(
            describe(desc_) + " did not complete within " + std::to_string(timeout.count()) + " ms",
            __FILE__, __LINE__);
      }
      std::this_thread::yield();
    }
  }

 private:
  std::string comm_label_;
  OpDesc desc_;
  torch::Tensor input_;
  MPI_Request req_ = MPI_REQUEST_NULL;
  bool done_ = false;
  bool avg_ = false;
  int avg_div_ = 1;
};

}  // namespace

// Everything one operation needs, prepared identically for the blocking and async paths.
struct MpiCommunicator::Call {
  const char* op = "";
  torch::Tensor input;   // contiguous
  torch::Tensor result;  // contiguous; may alias `input`
  const char* dtype = "";
  int64_t count = 0;  // elements in the fingerprint
  int64_t bytes = 0;  // for CommStats
  int peer = -1;
  bool collective = true;  // fingerprint-checked (point to point is not)
  bool noop = false;       // nothing to move (empty tensor or one rank)
  bool avg = false;
  std::vector<int> counts;  // per-rank counts (reduce_scatter), alive until completion
  // The MPI call's arguments.
  void* in = nullptr;
  void* out = nullptr;
  int n = 0;
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op mpi_op = MPI_OP_NULL;
  MPI_Comm comm = MPI_COMM_NULL;
  int tag = 0;
  // Exactly one MPI call; `req` null means the blocking form. `counts` is Call::counts, moved
  // into the Work so that it outlives a nonblocking call. A plain function pointer: no
  // allocation per operation.
  int (*issue)(const Call& c, MPI_Request* req, const int* counts) = nullptr;
};

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string label) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  set_label(std::move(label));
  if (mpi::collective_debug_enabled()) {
    check_mpi(MPI_Comm_dup(comm_, &check_comm_), "MPI_Comm_dup");
  }
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (check_comm_ != MPI_COMM_NULL) MPI_Comm_free(&check_comm_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(int color, int key,
                                                        std::string label) const {
  // Agreed before the collective split: a bad colour on one rank must not leave the others
  // waiting inside MPI_Comm_split. At the MPI level: a const split must not count operations.
  const std::string bad =
      color >= 0 ? std::string() : "split: color must be >= 0, got " + std::to_string(color);
  const std::string agreed = mpi::agree_on_error(bad, comm_);
  if (!agreed.empty()) throw CollectiveError(agreed, __FILE__, __LINE__);
  MPI_Comm sub = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
  auto out = std::make_unique<MpiCommunicator>(sub, std::move(label));
  MPI_Comm_free(&sub);
  return out;
}

WorkPtr MpiCommunicator::run(Call& c, bool async) {
  OpDesc desc;
  desc.comm = label().c_str();
  desc.op = c.op;
  desc.dtype = c.dtype;
  desc.rank = rank_;
  desc.world_rank = world_rank_;
  desc.count = c.count;
  desc.peer = c.peer;
  desc.seq = count_op(c.bytes);
  if (c.collective && check_comm_ != MPI_COMM_NULL) {
    std::string err;
    {
      auto scope = Watchdog::global().watch(desc);
      err = mpi::compare_fingerprints(
          check_comm_, mpi::Fingerprint(c.op, c.dtype, c.count, c.peer, desc.seq), label());
    }
    if (!err.empty()) throw CollectiveError(err, __FILE__, __LINE__);
  }
  if (!async) {
    // The blocking form allocates no Work: it is the path the all-reduce benchmark holds to
    // within a few percent of the raw MPI call.
    if (!c.noop) {
      auto scope = Watchdog::global().watch(desc);
      check_mpi(c.issue(c, nullptr, c.counts.data()), c.op);
    }
    if (c.avg) c.result.div_(size_);
    return nullptr;
  }
  auto work = std::make_unique<MpiWork>(desc, c.result, c.input, c.avg, size_);
  work->counts = std::move(c.counts);
  if (c.noop) {
    work->mark_done();
  } else {
    check_mpi(c.issue(c, work->request(), work->counts.data()), c.op);
  }
  return work;
}

// --- the operations: one prepare_* each, shared by the blocking and the async form -------------

namespace {

void check_root(int root, int size, const char* op) {
  TESSERA_CHECK(root >= 0 && root < size, op, ": root=", root, " is outside [0, ", size, ")");
}
void check_rows(const torch::Tensor& t, const char* op) {
  TESSERA_CHECK(t.dim() >= 1, op, ": tensor must have at least one dimension (rows), got shape ",
                t.sizes());
}
void check_tag(int tag, const char* op) {
  TESSERA_CHECK(tag >= 0 && tag <= 32767, op, ": tag must be in [0, 32767], got ", tag);
}

}  // namespace

MpiCommunicator::Call MpiCommunicator::prepare(const char* op, const torch::Tensor& tensor,
                                               bool in_place) const {
  check_cpu(tensor, op);
  Call c;
  c.op = op;
  c.input = tensor.is_contiguous() ? tensor : tensor.contiguous();
  if (in_place) c.result = c.input;
  // Unsupported dtypes fail on every rank count, even when nothing moves.
  c.type = mpi_type(c.input);
  c.comm = comm_;
  c.dtype = dtype_label(c.input);
  c.count = checked_count(c.input.numel(), op);
  c.n = static_cast<int>(c.count);
  c.bytes = nbytes(c.input);
  c.noop = c.count == 0;
  return c;
}

MpiCommunicator::Call MpiCommunicator::prepare_all_reduce(const torch::Tensor& tensor,
                                                          ReduceOp op) const {
  Call c = prepare("all_reduce", tensor, true);
  check_reduce(c.input, op, c.op);
  c.noop = c.noop || size_ == 1;
  c.avg = op == ReduceOp::kAvg;
  if (c.noop) return c;
  c.out = c.input.data_ptr();
  c.mpi_op = mpi_op(c.input, op);
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Iallreduce(MPI_IN_PLACE, call.out, call.n, call.type, call.mpi_op, call.comm,
                                req)
               : MPI_Allreduce(MPI_IN_PLACE, call.out, call.n, call.type, call.mpi_op, call.comm);
  };
  return c;
}

MpiCommunicator::Call MpiCommunicator::prepare_broadcast(const torch::Tensor& tensor,
                                                         int root) const {
  check_root(root, size_, "broadcast");
  Call c = prepare("broadcast", tensor, true);
  c.peer = root;
  c.noop = c.noop || size_ == 1;
  if (c.noop) return c;
  c.out = c.input.data_ptr();
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Ibcast(call.out, call.n, call.type, call.peer, call.comm, req)
               : MPI_Bcast(call.out, call.n, call.type, call.peer, call.comm);
  };
  return c;
}

MpiCommunicator::Call MpiCommunicator::prepare_all_gather(const torch::Tensor& tensor,
                                                          const torch::Tensor& out_arg) const {
  Call c = prepare("all_gather", tensor, false);
  std::vector<int64_t> shape{size_};
  for (auto d : c.input.sizes()) shape.push_back(d);
  c.result = output_tensor(c.op, out_arg, shape, c.input);
  if (c.noop) return c;
  c.in = c.input.data_ptr();
  c.out = c.result.data_ptr();
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Iallgather(call.in, call.n, call.type, call.out, call.n, call.type, call.comm,
                                req)
               : MPI_Allgather(call.in, call.n, call.type, call.out, call.n, call.type, call.comm);
  };
  return c;
}

MpiCommunicator::Call MpiCommunicator::prepare_reduce_scatter(const torch::Tensor& tensor,
                                                              ReduceOp op,
                                                              const torch::Tensor& out_arg) const {
  check_cpu(tensor, "reduce_scatter");
  check_rows(tensor, "reduce_scatter");
  Call c = prepare("reduce_scatter", tensor, false);
  check_reduce(c.input, op, c.op);
  const int64_t rows = c.input.size(0);
  const int64_t row_elems = rows == 0 ? 0 : c.input.numel() / rows;
  auto shape = c.input.sizes().vec();
  shape[0] = scatter_rows(rows, rank_, size_).second;
  c.result = output_tensor(c.op, out_arg, shape, c.input);
  c.avg = op == ReduceOp::kAvg;
  if (c.noop) return c;
  if (size_ == 1) {
    c.result.copy_(c.input);
    c.noop = true;
    return c;
  }
  // Uneven row counts are fine for MPI_Reduce_scatter: one count per rank.
  c.counts.resize(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r) {
    c.counts[r] = checked_count(scatter_rows(rows, r, size_).second * row_elems, c.op);
  }
  c.in = c.input.data_ptr();
  c.out = c.result.data_ptr();
  c.mpi_op = mpi_op(c.input, op);
  c.issue = [](const Call& call, MPI_Request* req, const int* counts) {
    return req ? MPI_Ireduce_scatter(call.in, call.out, counts, call.type, call.mpi_op, call.comm,
                                     req)
               : MPI_Reduce_scatter(call.in, call.out, counts, call.type, call.mpi_op, call.comm);
  };
  return c;
}

MpiCommunicator::Call MpiCommunicator::prepare_all_to_all(const torch::Tensor& tensor,
                                                          const torch::Tensor& out_arg) const {
  check_cpu(tensor, "all_to_all");
  check_rows(tensor, "all_to_all");
  TESSERA_CHECK(tensor.size(0) % size_ == 0, "all_to_all: tensor.size(0)=", tensor.size(0),
                " must be a multiple of the communicator size ", size_);
  Call c = prepare("all_to_all", tensor, false);
  c.result = output_tensor(c.op, out_arg, c.input.sizes(), c.input);
  if (c.noop) return c;
  c.in = c.input.data_ptr();
  c.out = c.result.data_ptr();
  c.n = static_cast<int>(c.count / size_);  // elements to and from each rank
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Ialltoall(call.in, call.n, call.type, call.out, call.n, call.type, call.comm,
                               req)
               : MPI_Alltoall(call.in, call.n, call.type, call.out, call.n, call.type, call.comm);
  };
  return c;
}

WorkPtr MpiCommunicator::all_reduce_async(torch::Tensor tensor, ReduceOp op) {
  Call c = prepare_all_reduce(tensor, op);
  return run(c, true);
}
void MpiCommunicator::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  Call c = prepare_all_reduce(tensor, op);
  run(c, false);
  if (!c.result.is_same(tensor)) tensor.copy_(c.result);
}

WorkPtr MpiCommunicator::broadcast_async(torch::Tensor tensor, int root) {
  Call c = prepare_broadcast(tensor, root);
  return run(c, true);
}
void MpiCommunicator::broadcast(torch::Tensor& tensor, int root) {
  Call c = prepare_broadcast(tensor, root);
  run(c, false);
  if (!c.result.is_same(tensor)) tensor.copy_(c.result);
}

WorkPtr MpiCommunicator::all_gather_async(const torch::Tensor& tensor, torch::Tensor out) {
  Call c = prepare_all_gather(tensor, out);
  return run(c, true);
}
torch::Tensor MpiCommunicator::all_gather(const torch::Tensor& tensor, torch::Tensor out) {
  Call c = prepare_all_gather(tensor, out);
  run(c, false);
  return c.result;
}

WorkPtr MpiCommunicator::reduce_scatter_async(const torch::Tensor& tensor, ReduceOp op,
                                              torch::Tensor out) {
  Call c = prepare_reduce_scatter(tensor, op, out);
  return run(c, true);
}
torch::Tensor MpiCommunicator::reduce_scatter(const torch::Tensor& tensor, ReduceOp op,
                                              torch::Tensor out) {
  Call c = prepare_reduce_scatter(tensor, op, out);
  run(c, false);
  return c.result;
}

WorkPtr MpiCommunicator::all_to_all_async(const torch::Tensor& tensor, torch::Tensor out) {
  Call c = prepare_all_to_all(tensor, out);
  return run(c, true);
}
torch::Tensor MpiCommunicator::all_to_all(const torch::Tensor& tensor, torch::Tensor out) {
  Call c = prepare_all_to_all(tensor, out);
  run(c, false);
  return c.result;
}

WorkPtr MpiCommunicator::send_async(const torch::Tensor& tensor, int dst, int tag) {
  TESSERA_CHECK(dst >= 0 && dst < size_ && dst != rank_, "send: dst=", dst,
                " must be another rank in [0, ", size_, ")");
  check_tag(tag, "send");
  Call c = prepare("send", tensor, true);
  c.peer = dst;
  c.tag = tag;
  c.collective = false;
  c.in = c.input.data_ptr();
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Isend(call.in, call.n, call.type, call.peer, call.tag, call.comm, req)
               : MPI_Send(call.in, call.n, call.type, call.peer, call.tag, call.comm);
  };
  return run(c, true);
}

WorkPtr MpiCommunicator::recv_async(torch::Tensor tensor, int src, int tag) {
  TESSERA_CHECK(src >= 0 && src < size_ && src != rank_, "recv: src=", src,
                " must be another rank in [0, ", size_, ")");
  check_tag(tag, "recv");
  Call c = prepare("recv", tensor, true);
  c.peer = src;
  c.tag = tag;
  c.collective = false;
  c.out = c.input.data_ptr();
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Irecv(call.out, call.n, call.type, call.peer, call.tag, call.comm, req)
               : MPI_Recv(call.out, call.n, call.type, call.peer, call.tag, call.comm,
                          MPI_STATUS_IGNORE);
  };
  return run(c, true);
}

MpiCommunicator::Call MpiCommunicator::prepare_barrier() const {
  Call c;
  c.op = "barrier";
  c.dtype = "none";
  c.noop = size_ == 1;
  c.comm = comm_;
  c.issue = [](const Call& call, MPI_Request* req, const int*) {
    return req ? MPI_Ibarrier(call.comm, req) : MPI_Barrier(call.comm);
  };
  return c;
}

WorkPtr MpiCommunicator::barrier_async() {
  Call c = prepare_barrier();
  return run(c, true);
}
void MpiCommunicator::barrier() {
  Call c = prepare_barrier();
  run(c, false);
}

}  // namespace tessera::sharding
