// Segmented LoRA matmul on CPU: the fast kernel against the fp64 reference and against an
// independent libtorch formulation (per segment, x_s A_s[:r]^T B_s[:, :r]^T in float64), over odd
// feature sizes, ranks 1 / 8 / 16 / 64 in one stack, empty / one-row / prime-length segments,
// base-only segments (-1), adapters used by several segments, strided y, and every dtype (float64:
// the decoder's float64 mode). The padding of the stack beyond each adapter's rank holds NaN, so
// reading it would show. Bad input gives one named error.
#include <gtest/gtest.h>
#include <omp.h>
#include <torch/types.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/ops/lora_ops.h"

namespace tessera::kernels {
namespace {

using torch::indexing::Slice;

struct Case {
  int64_t in = 37, out = 53;
  std::vector<int> seg_rows{0, 1, 7, 13, 0, 2, 31};
  std::vector<int> seg_adapter{0, -1, 1, 1, 2, 3, 0};
  std::vector<int> ranks{1, 8, 16, 64};
  torch::ScalarType dtype = torch::kFloat;
  bool strided_y = false;
  uint64_t seed = 1;
};

std::string describe(const Case& c) {
  return "in=" + std::to_string(c.in) + " out=" + std::to_string(c.out) +
         " segs=" + std::to_string(c.seg_rows.size()) + " dtype=" + c10::toString(c.dtype) +
         (c.strided_y ? " strided" : "");
}

void PrintTo(const Case& c, std::ostream* os) { *os << describe(c); }

struct Problem {
  torch::Tensor x, y0;
  LoraStack stack;
  torch::Tensor indptr, adapter;
  std::vector<int> rows, ranks;
  std::vector<int> seg_adapter;
  std::vector<float> scales;
};

Problem make_problem(const Case& c) {
  torch::manual_seed(static_cast<int64_t>(c.seed));
  Problem p;
  p.seg_adapter = c.seg_adapter;
  p.ranks = c.ranks;
  int64_t rows = 0;
  std::vector<int32_t> indptr{0};
  for (int n : c.seg_rows) {
    rows += n;
    indptr.push_back(static_cast<int32_t>(rows));
  }
  const int64_t n_ad = static_cast<int64_t>(c.ranks.size());
  int64_t rmax = 0;
  for (int r : c.ranks) rmax = std::max<int64_t>(rmax, r);
  auto opts = torch::TensorOptions().dtype(c.dtype);
  p.x = torch::randn({rows, c.in}).to(c.dtype);
  // NaN padding: the kernels must never read past an adapter's rank.
  auto a = torch::full({n_ad, rmax, c.in}, std::numeric_limits<float>::quiet_NaN());
  auto b = torch::full({n_ad, c.out, rmax}, std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < n_ad; ++i) {
    const int64_t r = c.ranks[i];
    a.index_put_({i, Slice(0, r)}, torch::randn({r, c.in}) / std::sqrt(double(c.in)));
    b.index_put_({i, Slice(), Slice(0, r)}, torch::randn({c.out, r}));
    p.scales.push_back(16.0f / static_cast<float>(std::max<int64_t>(r, 1)));
  }
  p.stack.a = a.to(c.dtype);
  p.stack.b = b.to(c.dtype);
  p.stack.ranks = torch::tensor(std::vector<int32_t>(c.ranks.begin(), c.ranks.end()), torch::kInt);
  p.stack.scales = torch::tensor(p.scales, torch::kFloat);
  p.indptr = torch::tensor(indptr, torch::kInt);
  p.adapter =
      torch::tensor(std::vector<int32_t>(c.seg_adapter.begin(), c.seg_adapter.end()), torch::kInt);
  if (c.strided_y) {
    // y is a column slice of a wider tensor: rows are not adjacent.
    auto wide = torch::randn({rows, c.out + 9}).to(c.dtype);
    p.y0 = wide.index({Slice(), Slice(4, 4 + c.out)});
  } else {
    p.y0 = torch::randn({rows, c.out}, opts.dtype(torch::kFloat)).to(c.dtype);
  }
  return p;
}

// The formulation a user would write with libtorch, in float64.
torch::Tensor torch_formulation(const Problem& p) {
  auto y = p.y0.to(torch::kDouble).clone();
  auto x = p.x.to(torch::kDouble);
  auto indptr = p.indptr.accessor<int32_t, 1>();
  for (size_t s = 0; s < p.seg_adapter.size(); ++s) {
    const int a = p.seg_adapter[s];
    if (a < 0) continue;
    const int r = p.ranks[a];
    auto rows = Slice(indptr[s], indptr[s + 1]);
    auto A = p.stack.a.index({a, Slice(0, r)}).to(torch::kDouble);           // [r, in]
    auto B = p.stack.b.index({a, Slice(), Slice(0, r)}).to(torch::kDouble);  // [out, r]
    y.index_put_({rows}, y.index({rows}) + p.scales[a] * x.index({rows}).mm(A.t()).mm(B.t()));
  }
  return y;
}

// One unit in the last place of the output dtype, relative to the value (1 for float32 is too
// strict: the fast kernel sums in a different order).
double rel_tol(torch::ScalarType t) {
  switch (t) {
    case torch::kHalf:
      return 1.0 / 1024;
    case torch::kBFloat16:
      return 1.0 / 128;
    case torch::kDouble:
      return 1e-12;
    default:
      return 2e-5;
  }
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (got.numel() == 0) return;
  auto g = got.to(torch::kDouble), w = want.to(torch::kDouble);
  ASSERT_FALSE(torch::isnan(g).any().item<bool>()) << what << ": NaN in the output";
  auto err = (g - w).abs();
  auto bound = rtol * (w.abs() + 1.0);
  const double worst = (err / bound).max().item<double>();
  EXPECT_LE(worst, 1.0) << what << ": max |err| = " << err.max().item<double>();
}

class LoraSgmv : public ::testing::TestWithParam<Case> {};

TEST_P(LoraSgmv, FastMatchesReferenceAndLibtorch) {
  const Case c = GetParam();
  const Problem p = make_problem(c);
  auto y_fast = p.y0.clone();
  auto y_ref = p.y0.clone();
  if (c.strided_y) {  // keep the strided layout for the kernels
    auto wide = torch::zeros({p.y0.size(0), c.out + 9}, p.y0.options());
    y_fast = wide.index({Slice(), Slice(4, 4 + c.out)});
    y_fast.copy_(p.y0);
    ASSERT_NE(y_fast.stride(0), c.out);
  }
  lora_sgmv_(y_fast, p.x, p.stack, p.indptr, p.adapter);
  lora_sgmv_(y_ref, p.x, p.stack, p.indptr, p.adapter, /*reference=*/true);
  const auto want = torch_formulation(p);
  expect_close(y_ref, want, rel_tol(c.dtype), describe(c) + " reference vs libtorch");
  expect_close(y_fast, want, rel_tol(c.dtype), describe(c) + " fast vs libtorch");
  expect_close(y_fast, y_ref, rel_tol(c.dtype), describe(c) + " fast vs reference");
  // Rows of base-only segments are untouched, bit for bit.
  auto indptr = p.indptr.accessor<int32_t, 1>();
  for (size_t s = 0; s < p.seg_adapter.size(); ++s) {
    if (p.seg_adapter[s] >= 0) continue;
    auto rows = Slice(indptr[s], indptr[s + 1]);
    EXPECT_TRUE(torch::equal(y_fast.index({rows}), p.y0.index({rows}))) << describe(c);
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16, torch::kDouble}) {
    Case c;
    c.dtype = dtype;
    out.push_back(c);
    c.in = 130;
    c.out = 67;
    c.strided_y = true;
    c.seed = 2;
    out.push_back(c);
  }
  Case wide;  // full vector blocks plus tails on both sides
  wide.in = 256 + 3;
  wide.out = 128 + 5;
  wide.seg_rows = {5, 3, 11};
  wide.seg_adapter = {3, 2, 3};
  out.push_back(wide);
  Case long_in;  // several passes over in_features (512 at a time) with a ragged last one
  long_in.in = 1100;
  long_in.out = 70;
  long_in.seg_rows = {9, 2, 16};
  long_in.seg_adapter = {3, 1, 0};
  out.push_back(long_in);
  long_in.dtype = torch::kBFloat16;
  out.push_back(long_in);
  Case one_out;
  one_out.in = 64;
  one_out.out = 1;
  out.push_back(one_out);
  Case one_in;
  one_in.in = 1;
  one_in.out = 200;
  out.push_back(one_in);
  Case decode;  // one row per segment, every adapter and the base interleaved (BGMV-shaped)
  decode.in = 96;
  decode.out = 80;
  decode.seg_rows = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  decode.seg_adapter = {0, 1, 2, 3, -1, 3, 2, 1, 0, -1, 2};
  out.push_back(decode);
  Case rank0;  // an adapter of rank 0 contributes nothing
  rank0.ranks = {0, 8, 16, 64};
  out.push_back(rank0);
  Case no_rows;
  no_rows.seg_rows = {0, 0};
  no_rows.seg_adapter = {0, 1};
  out.push_back(no_rows);
  Case no_segments;
  no_segments.seg_rows = {};
  no_segments.seg_adapter = {};
  out.push_back(no_segments);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, LoraSgmv, ::testing::ValuesIn(cases()));

TEST(LoraSgmvThreads, SameResultWithThreeThreads) {
  Case c;
  c.in = 300;
  c.out = 260;
  c.seg_rows = {40, 1, 17, 0, 29};
  c.seg_adapter = {1, 0, 3, 2, 1};
  const Problem p = make_problem(c);
  auto y1 = p.y0.clone(), y3 = p.y0.clone();
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  lora_sgmv_(y1, p.x, p.stack, p.indptr, p.adapter);
  omp_set_num_threads(3);
  lora_sgmv_(y3, p.x, p.stack, p.indptr, p.adapter);
  omp_set_num_threads(before);
  // Each output element is summed by one thread in a fixed order: bitwise equal.
  EXPECT_TRUE(torch::equal(y1, y3));
  expect_close(y3, torch_formulation(p), rel_tol(c.dtype), "three threads");
}

// The error names the field; the output stays untouched.
void expect_error(const std::function<void(torch::Tensor&)>& call, torch::Tensor y,
                  const std::string& needle) {
  const auto before = y.clone();
  try {
    call(y);
    ADD_FAILURE() << "no error, expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_TRUE(torch::equal(y, before)) << needle;
}

TEST(LoraSgmvErrors, BadInputIsNamed) {
  Case c;
  const Problem p = make_problem(c);
  auto run = [&](const LoraStack& st, const torch::Tensor& indptr, const torch::Tensor& adapter,
                 const torch::Tensor& x) {
    return [=](torch::Tensor& y) { lora_sgmv_(y, x, st, indptr, adapter); };
  };
  const auto rows = static_cast<int32_t>(p.x.size(0));
  auto bad_indptr = p.indptr.clone();
  bad_indptr[0] = 1;
  expect_error(run(p.stack, bad_indptr, p.adapter, p.x), p.y0, "seg_indptr[0] must be 0, got 1");
  bad_indptr = p.indptr.clone();
  bad_indptr[3] = rows;  // then decreasing
  expect_error(run(p.stack, bad_indptr, p.adapter, p.x), p.y0, "non-decreasing");
  bad_indptr = p.indptr.clone();
  bad_indptr[-1] = rows - 1;
  expect_error(run(p.stack, bad_indptr, p.adapter, p.x), p.y0, "must equal num_rows=");
  auto bad_adapter = p.adapter.clone();
  bad_adapter[2] = 4;
  expect_error(run(p.stack, p.indptr, bad_adapter, p.x), p.y0, "seg_adapter[2]=4 is out of range");
  bad_adapter[2] = -2;
  expect_error(run(p.stack, p.indptr, bad_adapter, p.x), p.y0, "seg_adapter[2]=-2");
  LoraStack st = p.stack;
  st.ranks = torch::tensor({1, 8, 65, 64}, torch::kInt);
  expect_error(run(st, p.indptr, p.adapter, p.x), p.y0, "ranks[2]=65 is out of range");
  st = p.stack;
  st.scales = torch::tensor({1.0f, std::nanf(""), 1.0f, 1.0f});
  expect_error(run(st, p.indptr, p.adapter, p.x), p.y0, "scales[1]=nan is not finite");
  st = p.stack;
  st.a = p.stack.a.to(torch::kHalf);
  expect_error(run(st, p.indptr, p.adapter, p.x), p.y0, "a dtype");
  st = p.stack;
  st.b = p.stack.b.index({Slice(), Slice(0, 50)});
  expect_error(run(st, p.indptr, p.adapter, p.x), p.y0, "b must be [num_adapters=4");
  expect_error(run(p.stack, p.indptr.to(torch::kLong), p.adapter, p.x), p.y0,
               "seg_indptr must be int32");
  expect_error(run(p.stack, p.indptr, p.adapter.index({Slice(0, 3)}), p.x), p.y0,
               "seg_adapter must be int32 [7]");
  expect_error(run(p.stack, p.indptr, p.adapter, p.x.index({Slice(), Slice(0, 30)})), p.y0,
               "a in_features=37 differs from x in_features=30");
  expect_error(run(p.stack, p.indptr, p.adapter, p.x.to(torch::kInt)), p.y0,
               "x must be float32, float16, bfloat16 or float64");
  expect_error(run(p.stack, p.indptr, p.adapter, p.x), p.y0.to(torch::kHalf), "y dtype");
  // A rank above r_max of a zero-width stack.
  st = p.stack;
  st.a = p.stack.a.index({Slice(), Slice(0, 0)});
  st.b = p.stack.b.index({Slice(), Slice(), Slice(0, 0)});
  expect_error(run(st, p.indptr, p.adapter, p.x), p.y0, "ranks[0]=1 is out of range [0, r_max=0]");
}

}  // namespace
}  // namespace tessera::kernels
