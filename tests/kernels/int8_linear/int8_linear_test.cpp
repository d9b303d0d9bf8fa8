// int8 weight-only linear on CPU: the per-channel quantiser (fast == reference bit for bit, scales
// = absmax / 127 from libtorch, round trip within scale / 2), the linear (fast vs fp64 reference vs
// libtorch's x (q * s)^T in float64) over decode- and prefill-shaped inputs with odd sizes on
// every side of the kernels' tile boundaries, the weight memory (int8 + scales <= 0.27x float32)
// and the peak memory of a call (no float32 copy of W), and named errors on bad input.
#include <gtest/gtest.h>
#include <omp.h>
#include <torch/types.h>

#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/ops/int8_linear_ops.h"

namespace tessera::kernels {
namespace {

using torch::indexing::Slice;

TEST(Int8Quantise, FastEqualsReferenceAndRoundTripsWithinHalfAStep) {
  torch::manual_seed(3);
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    for (auto [n, k] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 33}, {67, 257}, {130, 1000}}) {
      // Rows of very different magnitudes, one all-zero row.
      auto w = torch::randn({n, k}) * torch::logspace(-3, 2, n).unsqueeze(1);
      if (n > 3) w.index_put_({2}, 0.0);
      w = w.to(dtype);
      auto [q, s] = quantize_int8_per_channel(w);
      auto [q_ref, s_ref] = quantize_int8_per_channel(w, /*reference=*/true);
      const std::string what =
          std::string(c10::toString(dtype)) + " " + std::to_string(n) + "x" + std::to_string(k);
      EXPECT_TRUE(torch::equal(q, q_ref)) << what;
      EXPECT_TRUE(torch::equal(s, s_ref)) << what;
      auto wf = w.to(torch::kDouble);
      auto amax = wf.abs().amax(1);
      auto want_scale = torch::where(amax > 0, amax / 127.0, torch::ones_like(amax));
      EXPECT_TRUE(torch::allclose(s.to(torch::kDouble), want_scale, 1e-6, 0)) << what;
      EXPECT_LE(q.abs().max().item<int>(), 127) << what;
      // |w - q s| <= s / 2, up to float32 rounding of w / s.
      auto err = (wf - q.to(torch::kDouble) * s.to(torch::kDouble).unsqueeze(1)).abs();
      auto bound = s.to(torch::kDouble).unsqueeze(1) * (0.5 + 1e-5);
      EXPECT_TRUE((err <= bound).all().item<bool>())
          << what << ": worst err / scale = " << (err / s.to(torch::kDouble).unsqueeze(1)).max();
      if (n > 3) {
        EXPECT_EQ(s[2].item<float>(), 1.0f);
        EXPECT_EQ(q[2].abs().max().item<int>(), 0);
      }
    }
  }
}

struct Shape {
  int64_t m, n, k;
};

torch::Tensor torch_formulation(const torch::Tensor& x, const torch::Tensor& q,
                                const torch::Tensor& s, const torch::Tensor& b) {
  auto w = q.to(torch::kDouble) * s.to(torch::kDouble).unsqueeze(1);
  auto y = x.to(torch::kDouble).matmul(w.t());
  return b.defined() ? y + b.to(torch::kDouble) : y;
}

void expect_close(const torch::Tensor& got, const torch::Tensor& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  if (got.numel() == 0) return;
  auto err = (got.to(torch::kDouble) - want.to(torch::kDouble)).abs();
  auto bound = tol * (want.to(torch::kDouble).abs() + 1.0);
  EXPECT_TRUE((err <= bound).all().item<bool>()) << what << ": max |err| " << err.max();
}

TEST(Int8Linear, FastMatchesReferenceAndLibtorch) {
  torch::manual_seed(4);
  const std::vector<Shape> shapes = {{1, 1, 1},      {1, 5, 15},    {2, 64, 16},   {3, 67, 17},
                                     {5, 130, 255},  {7, 3, 256},   {8, 17, 257},  {13, 64, 600},
                                     {15, 65, 31},   {16, 64, 256}, {17, 67, 257}, {33, 130, 100},
                                     {300, 70, 520}, {0, 9, 12}};
  for (const auto& sh : shapes) {
    for (bool with_bias : {false, true}) {
      const std::string what = "m=" + std::to_string(sh.m) + " n=" + std::to_string(sh.n) +
                               " k=" + std::to_string(sh.k) + (with_bias ? " bias" : "");
      auto w = torch::randn({sh.n, sh.k});
      auto [q, s] = quantize_int8_per_channel(w);
      // x as a column slice of a wider tensor: rows are not adjacent.
      auto wide = torch::randn({sh.m, sh.k + 3});
      auto x = wide.index({Slice(), Slice(1, 1 + sh.k)});
      auto b = with_bias ? torch::randn({sh.n}) : torch::Tensor();
      auto y = int8_linear(x, q, s, b);
      auto y_ref = int8_linear(x, q, s, b, /*reference=*/true);
      const auto want = torch_formulation(x, q, s, b);
      expect_close(y_ref, want, 1e-6, what + " reference vs libtorch");
      // float32 sums over k: the error scales with sum_k |x_k w_k|, not with |y|. A wrong or
      // missing weight would be off by one term, ~|x w|, orders of magnitude above the bound.
      auto terms = torch_formulation(x.abs(), q.abs(), s, {});
      auto err = (y.to(torch::kDouble) - want).abs();
      EXPECT_TRUE((err <= 4e-6 * terms + 1e-7).all().item<bool>())
          << what << " fast vs libtorch: max |err| " << err.max() << ", max sum|xw| "
          << terms.max();
    }
  }
}

TEST(Int8Linear, HalfPrecisionActivationsAndBatchDims) {
  torch::manual_seed(5);
  auto w = torch::randn({48, 80});
  auto [q, s] = quantize_int8_per_channel(w);
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto x = torch::randn({2, 3, 80}).to(dtype);
    auto y = int8_linear(x, q, s);
    ASSERT_EQ(y.scalar_type(), dtype);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 48}));
    // float32 compute of the same (widened) input, then one rounding to the dtype.
    auto want = torch_formulation(x.to(torch::kFloat), q, s, {}).to(dtype);
    expect_close(y, want, dtype == torch::kHalf ? 1.0 / 1024 : 1.0 / 128, c10::toString(dtype));
  }
}

TEST(Int8Linear, SameResultWithThreeThreads) {
  torch::manual_seed(6);
  auto w = torch::randn({200, 300});
  auto [q, s] = quantize_int8_per_channel(w);
  const int before = omp_get_max_threads();
  for (int64_t m : {3, 40}) {
    auto x = torch::randn({m, 300});
    omp_set_num_threads(1);
    auto y1 = int8_linear(x, q, s);
    omp_set_num_threads(3);
    auto y3 = int8_linear(x, q, s);
    EXPECT_TRUE(torch::equal(y1, y3)) << "m=" << m;
  }
  omp_set_num_threads(before);
}

TEST(Int8Linear, WeightMemoryIsAQuarterOfFloat32) {
  for (auto [n, k] :
       std::vector<std::pair<int64_t, int64_t>>{{1024, 1024}, {4096, 512}, {256, 64}}) {
    auto w = torch::randn({n, k});
    auto [q, s] = quantize_int8_per_channel(w);
    const double ratio = static_cast<double>(int8_weight_bytes(q, s)) /
                         static_cast<double>(w.numel() * w.element_size());
    EXPECT_LE(ratio, 0.27) << n << "x" << k;
    EXPECT_GE(ratio, 0.25) << n << "x" << k;  // int8 values plus one float per row, no more
  }
}

int64_t status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) {
      std::istringstream is(line.substr(std::string(field).size()));
      int64_t kb = 0;
      is >> kb;
      return kb;
    }
  }
  return -1;
}

// A float32 copy of W (64 MiB here) would show in the process's peak RSS; the kernels' panels and
// buffers are a few hundred KiB. The peak is reset (clear_refs 5) before each call.
TEST(Int8Linear, NoFloat32CopyOfTheWeights) {
  const int64_t n = 4096, k = 4096;
  auto q = torch::randint(-127, 128, {n, k}, torch::kChar);
  auto s = torch::rand({n}) * 0.01;
  for (int64_t m : {1, 16, 64}) {
    auto x = torch::randn({m, k});
    {
      std::ofstream clear("/proc/self/clear_refs");
      clear << "5";
      if (!clear.good()) GTEST_SKIP() << "cannot reset the peak RSS (/proc/self/clear_refs)";
    }
    const int64_t rss_before = status_kb("VmRSS:");
    auto y = int8_linear(x, q, s);
    const int64_t peak = status_kb("VmHWM:");
    ASSERT_GT(rss_before, 0);
    const double extra_mb = static_cast<double>(peak - rss_before) / 1024.0;
    EXPECT_LT(extra_mb, 16.0) << "m=" << m << ": peak grew by " << extra_mb
                              << " MiB during the call (a float32 W is 64 MiB)";
  }
}

void expect_error(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error, expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Int8Linear, BadInputIsNamed) {
  auto w = torch::randn({8, 12});
  auto [q, s] = quantize_int8_per_channel(w);
  auto x = torch::randn({3, 12});
  expect_error([&] { int8_linear(x, q.to(torch::kFloat), s); }, "q must be int8");
  expect_error(
      [&] {
        int8_linear(torch::randn({3, 11}), q, s);
      },
      "q in_features=12 differs from x in_features=11");
  expect_error([&] { int8_linear(x, q, s.index({Slice(0, 7)})); }, "scale must be float32 [8]");
  expect_error([&] { int8_linear(x, q, s.to(torch::kDouble)); }, "scale must be float32 [8]");
  expect_error([&] { int8_linear(x, q, s, torch::randn({9})); }, "bias must be float32 [8]");
  expect_error([&] { int8_linear(x.to(torch::kInt), q, s); }, "x must be float32");
  expect_error([&] { quantize_int8_per_channel(torch::randn({2, 3, 4})); }, "w must be 2-D");
  expect_error(
      [&] {
        quantize_int8_per_channel(torch::ones({2, 3}, torch::kInt));
      },
      "w must be float32, float16 or bfloat16");
}

}  // namespace
}  // namespace tessera::kernels
