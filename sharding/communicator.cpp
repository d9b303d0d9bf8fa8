#include "sharding/communicator.h"

#include <cstring>

namespace tessera::sharding {

const char* dtype_label(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return "float32";
    case torch::kDouble:
      return "float64";
    case torch::kHalf:
      return "float16";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kLong:
      return "int64";
    case torch::kInt:
      return "int32";
    case torch::kShort:
      return "int16";
    case torch::kChar:
      return "int8";
    case torch::kByte:
      return "uint8";
    case torch::kBool:
      return "bool";
    default:
      return "other";
  }
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kAvg:
      return "avg";
  }
  return "?";
}

void Communicator::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  auto work = all_reduce_async(tensor, op);
  work->wait();
  // A non-contiguous input was reduced in a contiguous copy; the result is that copy.
  if (!work->result().is_same(tensor)) tensor.copy_(work->result());
}

void Communicator::broadcast(torch::Tensor& tensor, int root) {
  auto work = broadcast_async(tensor, root);
  work->wait();
  if (!work->result().is_same(tensor)) tensor.copy_(work->result());
}

torch::Tensor Communicator::all_gather(const torch::Tensor& tensor, torch::Tensor out) {
  auto work = all_gather_async(tensor, std::move(out));
  work->wait();
  return work->result();
}

torch::Tensor Communicator::reduce_scatter(const torch::Tensor& tensor, ReduceOp op,
                                           torch::Tensor out) {
  auto work = reduce_scatter_async(tensor, op, std::move(out));
  work->wait();
  return work->result();
}

torch::Tensor Communicator::all_to_all(const torch::Tensor& tensor, torch::Tensor out) {
  auto work = all_to_all_async(tensor, std::move(out));
  work->wait();
  return work->result();
}

void Communicator::send(const torch::Tensor& tensor, int dst, int tag) {
  send_async(tensor, dst, tag)->wait();
}

void Communicator::recv(torch::Tensor& tensor, int src, int tag) {
  auto work = recv_async(tensor, src, tag);
  work->wait();
  if (!work->result().is_same(tensor)) tensor.copy_(work->result());
}

void Communicator::barrier() { barrier_async()->wait(); }

std::string Communicator::agree_on_error(const std::string& local_error) {
  if (size() == 1) return local_error;
  const auto longs = torch::TensorOptions().dtype(torch::kLong).device(device());
  // The lowest failing rank (size() when none failed) in one MIN all-reduce; its message then
  // travels by broadcast, its length first.
  auto first_t = torch::full({1}, local_error.empty() ? size() : rank(), longs);
  all_reduce(first_t, ReduceOp::kMin);
  const int first = static_cast<int>(first_t.item<int64_t>());
  if (first == size()) return {};
  const bool mine = first == rank();
  auto len_t = torch::full({1}, mine ? static_cast<int64_t>(local_error.size()) : 0, longs);
  broadcast(len_t, first);
  const int64_t len = len_t.item<int64_t>();
  std::string msg = mine ? local_error : std::string(static_cast<size_t>(len), '\0');
  if (len > 0) {
    torch::Tensor bytes = torch::from_blob(msg.data(), {len}, torch::kByte)
                              .to(device(), /*non_blocking=*/false,
                                  /*copy=*/true);
    broadcast(bytes, first);
    bytes = bytes.cpu();
    std::memcpy(msg.data(), bytes.data_ptr<uint8_t>(), static_cast<size_t>(len));
  }
  return first != 0 ? "rank " + std::to_string(first) + ": " + msg : msg;
}

std::pair<int64_t, int64_t> scatter_rows(int64_t n, int rank, int size) {
  TESSERA_CHECK(size >= 1, "size must be positive, got ", size);
  TESSERA_CHECK(rank >= 0 && rank < size, "rank=", rank, " is outside [0, ", size, ")");
  TESSERA_CHECK(n >= 0, "row count must be >= 0, got ", n);
  const int64_t base = n / size, extra = n % size;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, base + (rank < extra ? 1 : 0)};
}

torch::Tensor output_tensor(const char* op, const torch::Tensor& out, at::IntArrayRef shape,
                            const torch::Tensor& like) {
  if (!out.defined()) return torch::empty(shape, like.options());
  TESSERA_CHECK(out.sizes() == shape && out.scalar_type() == like.scalar_type() &&
                    out.device() == like.device() && out.is_contiguous(),
                op, ": out must be a contiguous ", like.scalar_type(), " tensor of shape ", shape,
                " on ", like.device(), ", got ", out.scalar_type(), " ", out.sizes(), " on ",
                out.device(), out.is_contiguous() ? "" : " (not contiguous)");
  return out;
}

}  // namespace tessera::sharding
