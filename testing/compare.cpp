#include "testing/compare.h"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "sharding/communicator.h"

namespace tessera::testing {

namespace {

constexpr int64_t kMaxDims = 16;

std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << "]";
  return os.str();
}

// Row-major index of element `flat` in a tensor of `sizes`.
std::string index_str(int64_t flat, at::IntArrayRef sizes) {
  std::vector<int64_t> idx(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    idx[d] = sizes[d] > 0 ? flat % sizes[d] : 0;
    flat = sizes[d] > 0 ? flat / sizes[d] : 0;
  }
  return shape_str(idx);
}

std::string rank_prefix() { return "rank " + std::to_string(rank()) + ": "; }

}  // namespace

torch::Device device() {
  const auto& w = world();
  return w.device_comm ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(w.device))
                       : torch::Device(torch::kCPU);
}

torch::Tensor broadcast_from_rank0(const torch::Tensor& tensor) {
  // [defined, dtype, ndim, sizes...] from rank 0, over MPI.
  auto meta = torch::zeros({3 + kMaxDims}, torch::kLong);
  if (rank() == 0) {
    TESSERA_CHECK(tensor.defined(), "broadcast_from_rank0: rank 0's tensor is undefined");
    TESSERA_CHECK(tensor.dim() <= kMaxDims, "broadcast_from_rank0: at most ", kMaxDims,
                  " dimensions, got ", tensor.dim());
    auto m = meta.accessor<int64_t, 1>();
    m[0] = 1;
    m[1] = static_cast<int64_t>(tensor.scalar_type());
    m[2] = tensor.dim();
    for (int64_t d = 0; d < tensor.dim(); ++d) m[3 + d] = tensor.size(d);
  }
  cpu_comm().broadcast(meta, 0);
  auto m = meta.accessor<int64_t, 1>();
  std::vector<int64_t> sizes(m[2]);
  for (int64_t d = 0; d < m[2]; ++d) sizes[d] = m[3 + d];
  const auto dtype = static_cast<torch::ScalarType>(m[1]);
  auto& c = comm();
  // NCCL moves device tensors; MPI host ones.
  const auto where = c.backend_name() == "mpi" ? torch::Device(torch::kCPU) : device();
  torch::Tensor buf = rank() == 0 ? tensor.to(where, dtype).contiguous().clone()
                                  : torch::empty(sizes, torch::TensorOptions(dtype).device(where));
  if (buf.numel() > 0) c.broadcast(buf, 0);
  return buf;
}

::testing::AssertionResult tensors_match(const torch::Tensor& actual, const torch::Tensor& expected,
                                         Tolerance tol, const std::string& what) {
  if (!actual.defined()) return ::testing::AssertionFailure() << "the tensor is undefined";
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.sizes()) << " but " << what
                                         << " has " << shape_str(expected.sizes());
  }
  const bool exact = tol.atol == 0 && tol.rtol == 0;
  if (exact && actual.scalar_type() == expected.scalar_type() &&
      !at::isFloatingType(actual.scalar_type()) && !at::isComplexType(actual.scalar_type())) {
    // Integers and booleans: compared as they are (fp64 would round int64 beyond 2^53).
    auto a = actual.cpu().contiguous().view(-1);
    auto e = expected.cpu().contiguous().view(-1);
    auto bad = a.ne(e);
    const int64_t n_bad = bad.sum().item<int64_t>();
    if (n_bad == 0) return ::testing::AssertionSuccess();
    const int64_t first = bad.nonzero()[0][0].item<int64_t>();
    return ::testing::AssertionFailure()
           << n_bad << " of " << a.numel() << " values differ from " << what << "; first at "
           << index_str(first, actual.sizes()) << ": " << a[first].item<int64_t>() << " vs "
           << e[first].item<int64_t>();
  }
  auto a = actual.detach().to(torch::kCPU, torch::kDouble).contiguous().view(-1);
  auto e = expected.detach().to(torch::kCPU, torch::kDouble).contiguous().view(-1);
  auto diff = (a - e).abs();
  auto ok = a.eq(e) | diff.le(tol.atol + tol.rtol * e.abs()) | (a.isnan() & e.isnan());
  const int64_t n_bad = a.numel() - ok.sum().item<int64_t>();
  if (n_bad == 0) return ::testing::AssertionSuccess();
  const int64_t first = ok.logical_not().nonzero()[0][0].item<int64_t>();
  auto finite = diff.masked_fill(diff.isnan(), 0);
  const int64_t worst = finite.argmax().item<int64_t>();
  std::ostringstream os;
  os.precision(9);
  os << n_bad << " of " << a.numel() << " values differ from " << what << " beyond atol "
     << tol.atol << ", rtol " << tol.rtol << "; first at " << index_str(first, actual.sizes())
     << ": " << a[first].item<double>() << " vs " << e[first].item<double>()
     << "; largest |difference| " << finite[worst].item<double>() << " at "
     << index_str(worst, actual.sizes());
  if (actual.scalar_type() != expected.scalar_type()) {
    os << " (" << actual.scalar_type() << " vs " << expected.scalar_type() << ")";
  }
  return ::testing::AssertionFailure() << os.str();
}

::testing::AssertionResult same_on_all_ranks(const torch::Tensor& tensor, Tolerance tol) {
  // Rank 0's tensor goes to every rank (shape first), so a rank whose shape differs still takes
  // part in the broadcast and then reports the difference.
  TESSERA_CHECK(tensor.defined(), "same_on_all_ranks: the tensor is undefined on rank ", rank());
  const auto ref = broadcast_from_rank0(tensor);
  if (rank() == 0) return ::testing::AssertionSuccess();
  auto r = tensors_match(tensor, ref, tol, "rank 0's");
  if (r) return r;
  return ::testing::AssertionFailure() << rank_prefix() << r.message();
}

::testing::AssertionResult matches_rank0(const torch::Tensor& actual,
                                         const torch::Tensor& reference, Tolerance tol) {
  const auto ref = broadcast_from_rank0(reference);
  auto r = tensors_match(actual, ref, tol, "rank 0's reference");
  if (r) return r;
  return ::testing::AssertionFailure() << rank_prefix() << r.message();
}

::testing::AssertionResult matches_rank0_shard(const torch::Tensor& shard,
                                               const torch::Tensor& reference, int64_t dim,
                                               Tolerance tol) {
  const auto ref = broadcast_from_rank0(reference);
  const int64_t d = dim < 0 ? dim + ref.dim() : dim;
  TESSERA_CHECK(d >= 0 && d < ref.dim(), "matches_rank0_shard: dim ", dim,
                " is out of range for rank 0's reference of shape ", shape_str(ref.sizes()));
  const auto part = torch::tensor_split(ref, size(), d)[rank()];
  auto r = tensors_match(shard, part, tol,
                         "its part (" + std::to_string(rank()) + " of " + std::to_string(size()) +
                             " along dim " + std::to_string(d) + ") of rank 0's reference");
  if (r) return r;
  return ::testing::AssertionFailure() << rank_prefix() << r.message();
}

}  // namespace tessera::testing
