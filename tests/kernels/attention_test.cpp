// The attention reference (positioned KV buffer: causal, sliding window, GQA, empty slots) and the
// LSE merge against libtorch ops with explicit masks.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <limits>

#include "common/error.h"
#include "kernels/ops/attention_ops.h"
#include "kernels/ops/merge_ops.h"

namespace tessera::kernels {
namespace {

// softmax(q k^T * scale + mask) v in float64 with libtorch ops; rows that see nothing give 0.
std::pair<torch::Tensor, torch::Tensor> torch_attention(
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& qp,
    const torch::Tensor& kp, double scale, int64_t window) {
  const int64_t group = q.size(2) / k.size(2);
  auto qd = q.to(torch::kDouble).permute({0, 2, 1, 3});  // [B, H, T, D]
  auto kd = k.to(torch::kDouble).repeat_interleave(group, 2).permute({0, 2, 1, 3});
  auto vd = v.to(torch::kDouble).repeat_interleave(group, 2).permute({0, 2, 1, 3});
  auto s = torch::matmul(qd, kd.transpose(-1, -2)) * scale;  // [B, H, T, S]
  auto qpos = qp.unsqueeze(2), kpos = kp.unsqueeze(1);       // [B, T, 1], [B, 1, S]
  auto visible = (kpos >= 0) & (kpos <= qpos);
  if (window > 0) visible = visible & ((qpos - kpos) < window);
  s = s.masked_fill(~visible.unsqueeze(1), -std::numeric_limits<double>::infinity());
  auto lse = torch::logsumexp(s, -1);  // [B, H, T]
  auto p = torch::exp(s - lse.unsqueeze(-1)).nan_to_num(0.0);
  auto out = torch::matmul(p, vd).permute({0, 2, 1, 3});  // [B, T, H, D]
  return {out.to(torch::kFloat), lse.to(torch::kFloat)};
}

struct Shape {
  int64_t b, t, s, hq, hkv, d, window;
};

class AttentionRef : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionRef, MatchesLibtorch) {
  const Shape c = GetParam();
  torch::manual_seed(c.b * 131 + c.t * 17 + c.s + c.d);
  auto q = torch::randn({c.b, c.t, c.hq, c.d});
  auto k = torch::randn({c.b, c.s, c.hkv, c.d});
  auto v = torch::randn({c.b, c.s, c.hkv, c.d});
  // Slots hold shuffled positions (as a ring buffer does), some empty; queries are the last t.
  auto kp = torch::stack(std::vector<torch::Tensor>(c.b, torch::randperm(c.s, torch::kLong)));
  kp.masked_fill_(torch::rand({c.b, c.s}) < 0.1, -1);
  auto qp = (torch::arange(c.t, torch::kLong) + (c.s - c.t)).expand({c.b, c.t}).contiguous();
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  auto [out, lse] = attention(q, k, v, qp, kp, scale, c.window);
  auto [ref_out, ref_lse] = torch_attention(q, k, v, qp, kp, scale, c.window);
  EXPECT_TRUE(torch::allclose(out, ref_out, 1e-5, 1e-5)) << (out - ref_out).abs().max();
  EXPECT_TRUE(torch::allclose(lse, ref_lse, 1e-5, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionRef,
                         ::testing::Values(Shape{1, 1, 1, 1, 1, 8, 0}, Shape{2, 5, 9, 4, 2, 24, 0},
                                           Shape{3, 7, 40, 8, 2, 16, 5},
                                           Shape{1, 16, 16, 6, 3, 20, 1},
                                           Shape{5, 3, 64, 4, 4, 64, 17},
                                           Shape{2, 1, 33, 12, 1, 128, 8}));

TEST(Attention, NonContiguousInputsAndEmptyRows) {
  auto base = torch::randn({2, 6, 4, 10});
  auto q = base.narrow(3, 1, 8);                        // strided: head_dim contiguous, rows not
  auto k = torch::randn({2, 4, 5, 8}).transpose(1, 2);  // [2, 5, 4, 8] with permuted strides
  auto v = torch::randn({2, 5, 4, 8});
  auto kp = torch::tensor({0, 1, 2, 3, 4, 10, 11, 12, 13, 14}, torch::kLong).view({2, 5});
  auto qp = torch::tensor({0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5}, torch::kLong).view({2, 6});
  auto [out, lse] = attention(q, k, v, qp, kp, 0.3, 0);
  auto [ref, ref_lse] = torch_attention(q, k, v, qp, kp, 0.3, 0);
  EXPECT_TRUE(torch::allclose(out, ref, 1e-5, 1e-5));
  // Batch 1's queries (positions 0..5) precede all its keys (10..14): zeros and -inf, not NaN.
  EXPECT_EQ(out[1].abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(torch::isinf(lse[1]).all().item<bool>());
  EXPECT_FALSE(torch::isnan(out).any().item<bool>());
}

TEST(Attention, BadInputsAreNamed) {
  auto q = torch::randn({1, 2, 4, 8}), k = torch::randn({1, 3, 3, 8});
  auto qp = torch::zeros({1, 2}, torch::kLong), kp = torch::zeros({1, 3}, torch::kLong);
  try {
    attention(q, k, k, qp, kp, 1.0, 0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("num_q_heads=4 is not a multiple of num_kv_heads=3"),
              std::string::npos);
  }
  EXPECT_THROW(attention(q.to(torch::kDouble), k, k, qp, kp, 1.0, 0), Error);
  EXPECT_THROW(attention(q, torch::randn({1, 3, 2, 8}), torch::randn({1, 3, 2, 8}),
                         qp.to(torch::kInt), kp, 1.0, 0),
               Error);
  EXPECT_THROW(
      attention(q, torch::randn({1, 3, 2, 8}), torch::randn({1, 3, 2, 8}), qp, kp, 1.0, -1), Error);
}

TEST(LseMerge, SplitKeysMergeToWholeAttention) {
  // Attention over keys split into 3 parts, merged, equals attention over all keys.
  auto q = torch::randn({2, 3, 4, 16}), k = torch::randn({2, 30, 2, 16}),
       v = torch::randn({2, 30, 2, 16});
  auto kp = torch::arange(30, torch::kLong).expand({2, 30}).contiguous();
  auto qp = torch::full({2, 3}, 29, torch::kLong);
  auto [whole, whole_lse] = attention(q, k, v, qp, kp, 0.25, 0);
  std::vector<torch::Tensor> outs, lses;
  for (auto [b, n] : {std::pair{0, 7}, std::pair{7, 13}, std::pair{20, 10}}) {
    auto [o, l] =
        attention(q, k.narrow(1, b, n), v.narrow(1, b, n), qp, kp.narrow(1, b, n), 0.25, 0);
    outs.push_back(o.permute({0, 2, 1, 3}));  // [B, H, T, D] to line up with lse [B, H, T]
    lses.push_back(l);
  }
  auto [merged, merged_lse] = merge_attention_states(torch::stack(outs), torch::stack(lses));
  EXPECT_TRUE(torch::allclose(merged.permute({0, 2, 1, 3}), whole, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(merged_lse, whole_lse, 1e-5, 1e-5));
}

TEST(LseMerge, NegativeInfinityPartsAreGuarded) {
  const float inf = std::numeric_limits<float>::infinity();
  auto outs = torch::randn({2, 3, 4});
  // part 0 per row: 0.3, 0.5, -inf; part 1: -inf, 1.0, -inf.
  auto lses = torch::tensor({0.3f, 0.5f, -inf, -inf, 1.0f, -inf}).view({2, 3});
  auto [out, lse] = merge_attention_states(outs, lses);
  EXPECT_FALSE(torch::isnan(out).any().item<bool>());
  EXPECT_TRUE(torch::allclose(out[0], outs[0][0]));  // row 0: only part 0 saw keys
  EXPECT_NEAR(lse[0].item<float>(), 0.3f, 1e-6);
  const double w0 = std::exp(0.5), w1 = std::exp(1.0);  // row 1: both parts, weighted
  auto expect = (outs[0][1] * w0 + outs[1][1] * w1) / (w0 + w1);
  EXPECT_TRUE(torch::allclose(out[1], expect.to(torch::kFloat), 1e-5, 1e-6));
  EXPECT_NEAR(lse[1].item<float>(), std::log(w0 + w1), 1e-5);
  EXPECT_EQ(out[2].abs().max().item<float>(), 0.0f);  // row 2: every part -inf -> zeros
  EXPECT_TRUE(std::isinf(lse[2].item<float>()) && lse[2].item<float>() < 0);
}

}  // namespace
}  // namespace tessera::kernels
