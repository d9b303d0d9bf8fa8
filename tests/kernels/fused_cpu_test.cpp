// The fused CPU row kernels (RMSNorm, SiLU * up), the small-batch GEMM and the vector exp they and
// the paged attention kernel use, against float64 computations of the same formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/common/vec16.h"
#include "kernels/fused/fused_cpu.h"
#include "kernels/gemm/small_m_gemm_cpu.h"

namespace tessera::kernels {
namespace {

TEST(FusedCpu, VectorExpWithinTwoUlpOfDoubleExp) {
  std::vector<float> xs;
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) xs.push_back(x);
  for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 1.0f, -1.0f}) xs.push_back(x);
  while (xs.size() % 16 != 0) xs.push_back(0.5f);
  double worst = 0;
  for (size_t i = 0; i < xs.size(); i += 16) {
    const vec::Vec16 e = vec::vexp(vec::load16(xs.data() + i));
    for (int l = 0; l < 16; ++l) {
      const double want = std::exp(static_cast<double>(xs[i + l]));
      worst = std::max(worst, std::fabs(e[l] - want) / want);
    }
  }
  EXPECT_LT(worst, 2.5e-7) << "largest relative error of vexp";
  // Below FLT_MIN the result is 0 (the softmax's masked keys), NaN stays NaN, -inf gives 0.
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> edge = {-inf,   -100.0f, -87.5f,   std::nanf(""), 0.0f, -0.0f, 1.0f,  -1.0f,
                             -50.0f, -88.0f,  -1000.0f, 2.0f,          3.0f, -3.0f, 10.0f, -10.0f};
  const vec::Vec16 e = vec::vexp(vec::load16(edge.data()));
  EXPECT_EQ(e[0], 0.0f);
  EXPECT_EQ(e[1], 0.0f);
  EXPECT_EQ(e[2], 0.0f);
  EXPECT_TRUE(std::isnan(e[3]));
  EXPECT_EQ(e[4], 1.0f);
  EXPECT_EQ(e[5], 1.0f);
  EXPECT_EQ(e[10], 0.0f);
}

TEST(FusedCpu, RmsNormMatchesFloat64Formula) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  // Row lengths with and without a 16-lane tail; row counts on both sides of the threading limit.
  for (int64_t n : {1, 15, 16, 24, 512, 1000}) {
    for (int64_t rows : {1, 3, 64, 300}) {
      std::vector<float> x(rows * n), w(n), out(rows * n);
      for (auto& v : x) v = nd(rng);
      for (auto& v : w) v = nd(rng);
      const float eps = 1e-5f;
      rms_norm_cpu(x.data(), w.data(), out.data(), rows, n, eps);
      double worst = 0;
      for (int64_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (int64_t j = 0; j < n; ++j) ss += double(x[r * n + j]) * x[r * n + j];
        const double inv = 1.0 / std::sqrt(ss / n + eps);
        for (int64_t j = 0; j < n; ++j) {
          const double want = x[r * n + j] * inv * w[j];
          worst = std::max(worst, std::fabs(out[r * n + j] - want) / (1.0 + std::fabs(want)));
        }
      }
      EXPECT_LT(worst, 2e-6) << "n=" << n << " rows=" << rows;
    }
  }
  // A NaN in a row makes that whole row NaN and leaves the other rows alone.
  std::vector<float> x(2 * 32, 1.0f), w(32, 1.0f), out(2 * 32);
  x[5] = std::nanf("");
  rms_norm_cpu(x.data(), w.data(), out.data(), 2, 32, 1e-6f);
  for (int j = 0; j < 32; ++j) {
    EXPECT_TRUE(std::isnan(out[j])) << j;
    EXPECT_NEAR(out[32 + j], 1.0f, 1e-6f) << j;
  }
}

TEST(FusedCpu, SiluMulMatchesFloat64Formula) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (int64_t n : {1, 7, 16, 40, 1536}) {
    for (int64_t rows : {1, 5, 64}) {
      std::vector<float> in(rows * 2 * n), out(rows * n);
      for (auto& v : in) v = nd(rng);
      in[0] = -120.0f;  // exp(120) overflows float: silu is -0-ish, never NaN
      if (n > 1) in[1] = 95.0f;
      silu_mul_cpu(in.data(), out.data(), rows, n);
      double worst = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < n; ++j) {
          const double g = in[r * 2 * n + j], u = in[r * 2 * n + n + j];
          const double want = g / (1.0 + std::exp(-g)) * u;
          ASSERT_FALSE(std::isnan(out[r * n + j])) << r << "," << j;
          worst = std::max(worst, std::fabs(out[r * n + j] - want) / (1.0 + std::fabs(want)));
        }
      }
      EXPECT_LT(worst, 2e-6) << "n=" << n << " rows=" << rows;
    }
  }
  std::vector<float> in = {std::nanf(""), 1.0f, 2.0f, 2.0f}, out(2);
  silu_mul_cpu(in.data(), out.data(), 1, 2);
  EXPECT_TRUE(std::isnan(out[0]));
  EXPECT_NEAR(out[1], 1.0 / (1.0 + std::exp(-1.0)) * 2.0, 1e-6);
}

TEST(SmallMGemm, MatchesFloat64ProductWithTailsStridesAndBias) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t m : {1, 7, 8, 13, 64, 128}) {
    for (int64_t n : {1, 31, 32, 100, 512}) {
      for (int64_t k : {1, 17, 512}) {
        for (bool with_bias : {false, true}) {
          const int64_t lda = k + 3, ldb = n + 5, ldc = n + 2;  // row strides wider than rows
          std::vector<float> a(m * lda), b(k * ldb), bias(n), c(m * ldc, -7.0f);
          for (auto& v : a) v = nd(rng);
          for (auto& v : b) v = nd(rng);
          for (auto& v : bias) v = nd(rng);
          small_m_gemm_cpu(a.data(), lda, b.data(), ldb, with_bias ? bias.data() : nullptr,
                           c.data(), ldc, m, n, k);
          double worst = 0;
          for (int64_t r = 0; r < m; ++r) {
            for (int64_t j = 0; j < n; ++j) {
              double want = with_bias ? bias[j] : 0.0, mag = std::fabs(want);
              for (int64_t p = 0; p < k; ++p) {
                want += double(a[r * lda + p]) * b[p * ldb + j];
                mag += std::fabs(double(a[r * lda + p]) * b[p * ldb + j]);
              }
              // Sequential float32 sums: error within k + 2 roundings of the sum of magnitudes.
              worst = std::max(worst,
                               std::fabs(c[r * ldc + j] - want) / (mag * (k + 2) * 6e-8 + 1e-30));
            }
            for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(c[r * ldc + j], -7.0f) << "wrote past n";
          }
          EXPECT_LE(worst, 1.0) << "m=" << m << " n=" << n << " k=" << k;
        }
      }
    }
  }
}

TEST(SmallMGemm, ARowsResultDoesNotDependOnTheBatch) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t m = 37, n = 200, k = 300;
  std::vector<float> a(m * k), b(k * n), c(m * n), one(n);
  for (auto& v : a) v = nd(rng);
  for (auto& v : b) v = nd(rng);
  small_m_gemm_cpu(a.data(), k, b.data(), n, nullptr, c.data(), n, m, n, k);
  for (int64_t r : {0, 8, 36}) {
    small_m_gemm_cpu(a.data() + r * k, k, b.data(), n, nullptr, one.data(), n, 1, n, k);
    for (int64_t j = 0; j < n; ++j) ASSERT_EQ(one[j], c[r * n + j]) << "row " << r << " col " << j;
  }
}

}  // namespace
}  // namespace tessera::kernels
