#include "sharding/mpi/mpi_communicator.h"

#include <climits>
#include <mutex>

#include "common/dtype.h"
#include "common/error.h"

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
    TESSERA_CHECK(op != ReduceOp::kAvg, "all_reduce: op=avg is not defined for dtype bool");
    return op == ReduceOp::kMin ? MPI_LAND : MPI_LOR;
  }
  return idx == 1 ? MPI_MAX : (idx == 2 ? MPI_MIN : MPI_SUM);
}

int checked_count(const torch::Tensor& t, const char* op) {
  TESSERA_CHECK(t.numel() <= INT_MAX, op, ": tensor of ", t.numel(),
                " elements exceeds MPI's int count; split it");
  return static_cast<int>(t.numel());
}

void check_cpu(const torch::Tensor& t, const char* op) {
  TESSERA_CHECK(t.device().is_cpu(), op, ": the MPI communicator takes CPU tensors, got device ",
                t.device());
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  check_cpu(tensor, "all_reduce");
  if (op == ReduceOp::kAvg) {
    TESSERA_CHECK(tensor.is_floating_point(), "all_reduce: op=avg needs a floating dtype, got ",
                  tensor.scalar_type());
  }
  torch::Tensor buf = tensor.is_contiguous() ? tensor : tensor.contiguous();
  const int count = checked_count(buf, "all_reduce");
  if (count > 0 && size_ > 1) {
    check_mpi(
        MPI_Allreduce(MPI_IN_PLACE, buf.data_ptr(), count, mpi_type(buf), mpi_op(buf, op), comm_),
        "MPI_Allreduce");
  }
  if (op == ReduceOp::kAvg) buf.div_(size_);
  if (!buf.is_same(tensor)) tensor.copy_(buf);
}

void MpiCommunicator::broadcast(torch::Tensor& tensor, int root) {
  check_cpu(tensor, "broadcast");
  TESSERA_CHECK(root >= 0 && root < size_, "broadcast: root=", root, " is outside [0, ", size_,
                ")");
  torch::Tensor buf = tensor.is_contiguous() ? tensor : tensor.contiguous();
  const int count = checked_count(buf, "broadcast");
  if (count > 0 && size_ > 1) {
    check_mpi(MPI_Bcast(buf.data_ptr(), count, mpi_type(buf), root, comm_), "MPI_Bcast");
  }
  if (!buf.is_same(tensor)) tensor.copy_(buf);
}

torch::Tensor MpiCommunicator::all_gather(const torch::Tensor& tensor) {
  check_cpu(tensor, "all_gather");
  torch::Tensor in = tensor.contiguous();
  std::vector<int64_t> shape{size_};
  for (auto d : in.sizes()) shape.push_back(d);
  torch::Tensor out = torch::empty(shape, in.options());
  const int count = checked_count(in, "all_gather");
  if (count > 0) {
    check_mpi(MPI_Allgather(in.data_ptr(), count, mpi_type(in), out.data_ptr(), count, mpi_type(in),
                            comm_),
              "MPI_Allgather");
  }
  return out;
}

void MpiCommunicator::barrier() { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

}  // namespace tessera::sharding
