// The fast CPU varlen attention against the fp64 reference and against dense attention written
// with libtorch one sequence at a time (softmax over a masked score matrix): windows of every
// size, grouped-query heads, odd head dims, empty and one-token sequences, strided inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "common/error.h"
#include "kernels/ops/varlen_attention_ops.h"

namespace tessera::kernels {
namespace {

// Dense attention of each sequence alone, in float64 libtorch.
torch::Tensor dense_reference(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const std::vector<int32_t>& cu, double scale,
                              int64_t window) {
  auto out = torch::zeros(q.sizes(), torch::kDouble);
  const int64_t group = q.size(1) / k.size(1);
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int64_t a = cu[s], len = cu[s + 1] - cu[s];
    if (len == 0) continue;
    auto qs = q.narrow(0, a, len).to(torch::kDouble).transpose(0, 1);  // [H, L, D]
    auto ks = k.narrow(0, a, len).to(torch::kDouble).repeat_interleave(group, 1).transpose(0, 1);
    auto vs = v.narrow(0, a, len).to(torch::kDouble).repeat_interleave(group, 1).transpose(0, 1);
    auto scores = torch::matmul(qs, ks.transpose(1, 2)) * scale;
    if (window >= 0) {
      auto idx = torch::arange(len);
      auto far = (idx.unsqueeze(0) - idx.unsqueeze(1)).abs() > window;
      scores = scores.masked_fill(far, -std::numeric_limits<double>::infinity());
    }
    out.narrow(0, a, len).copy_(torch::matmul(scores.softmax(-1), vs).transpose(0, 1));
  }
  return out;
}

double max_abs(const torch::Tensor& t) {
  return t.numel() == 0 ? 0.0 : t.abs().max().item<double>();
}

struct Case {
  std::vector<int32_t> lens;
  int64_t hq, hkv, d, window;
};

class VarlenAttention : public ::testing::TestWithParam<Case> {};

TEST_P(VarlenAttention, FastCpuMatchesReferenceAndDenseTorch) {
  const Case c = GetParam();
  torch::manual_seed(7);
  std::vector<int32_t> cu{0};
  for (auto l : c.lens) cu.push_back(cu.back() + l);
  const int64_t total = cu.back();
  // Strided: q, k and v are views into one fused [total, (hq + 2 hkv) * d] projection.
  auto qkv = torch::randn({total, (c.hq + 2 * c.hkv) * c.d});
  auto q = qkv.narrow(1, 0, c.hq * c.d).view({total, c.hq, c.d});
  auto k = qkv.narrow(1, c.hq * c.d, c.hkv * c.d).view({total, c.hkv, c.d});
  auto v = qkv.narrow(1, (c.hq + c.hkv) * c.d, c.hkv * c.d).view({total, c.hkv, c.d});
  auto cu_t = torch::tensor(cu, torch::kInt);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));

  VarlenAttentionOptions opt{.scale = scale, .window = c.window};
  auto [fast, fast_lse] = varlen_attention(q, k, v, cu_t, opt);
  opt.reference = true;
  auto [ref, ref_lse] = varlen_attention(q, k, v, cu_t, opt);
  auto dense = dense_reference(q, k, v, cu, scale, c.window);

  EXPECT_LT(max_abs(ref.to(torch::kDouble) - dense), 1e-5);
  EXPECT_LT(max_abs(fast - ref), 2e-5);
  EXPECT_LT(max_abs(fast_lse - ref_lse), 2e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, VarlenAttention,
    ::testing::Values(Case{{5, 1, 17, 0, 33}, 4, 4, 32, -1},  // MiniLM-like heads, empty seq
                      Case{{200, 3, 129}, 2, 2, 16, 64},      // ModernBERT window ±64
                      Case{{70, 40}, 6, 2, 7, 0},             // grouped, window 0 = itself
                      Case{{1}, 3, 1, 80, 5},                 // one token, odd head_dim
                      Case{{31, 47, 2, 100}, 4, 2, 64, 3},    // narrow window, several tiles
                      Case{{0, 0}, 2, 1, 8, -1},              // nothing at all
                      Case{{513}, 1, 1, 1, -1}));             // head_dim 1, long sequence

TEST(VarlenAttention, HalfInputsComputeInFloat) {
  torch::manual_seed(3);
  auto q = torch::randn({9, 2, 16}).to(torch::kBFloat16);
  auto k = torch::randn({9, 2, 16}).to(torch::kBFloat16);
  auto v = torch::randn({9, 2, 16}).to(torch::kBFloat16);
  auto cu = torch::tensor(std::vector<int32_t>{0, 4, 9}, torch::kInt);
  auto [out, lse] = varlen_attention(q, k, v, cu, {.scale = 0.25});
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  auto dense = dense_reference(q.to(torch::kFloat), k.to(torch::kFloat), v.to(torch::kFloat),
                               {0, 4, 9}, 0.25, -1);
  EXPECT_LT((out.to(torch::kDouble) - dense).abs().max().item<double>(), 2e-2);
}

TEST(VarlenAttention, BadInputsNameTheField) {
  auto q = torch::randn({6, 2, 8});
  auto run = [&](std::vector<int32_t> cu, const torch::Tensor& k) {
    return varlen_attention(q, k, k, torch::tensor(cu, torch::kInt), {});
  };
  try {
    run({0, 4, 5}, q);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("must equal the token count 6"), std::string::npos) << e.message();
  }
  try {
    run({0, 4, 2, 6}, q);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("non-decreasing"), std::string::npos) << e.message();
  }
  try {
    run({0, 6}, torch::randn({6, 3, 8}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("multiple of num_kv_heads=3"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace tessera::kernels
