// Cluster attention kernels against independent references: a plain libtorch-ops version in fp64
// (gather + matmul + softmax, gradients by autograd) checks the fp64 reference kernel, and the fast
// CPU kernel is checked against the reference kernel on the seed's configurations and edge cases.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <cmath>
#include <map>
#include <optional>
#include <string>

#include "common/error.h"
#include "kernels/cluster_attention/cluster_neighbors.h"
#include "kernels/modules/cluster_attention_module.h"
#include "kernels/ops/cluster_attention_autograd.h"
#include "kernels/ops/cluster_attention_ops.h"
#include "kernels/ops/cluster_neighbors_ops.h"

namespace tessera::kernels {
namespace {

using torch::indexing::Slice;

// |a - b| <= atol + rtol * |b| everywhere, reporting the worst element.
void expect_close(const torch::Tensor& a, const torch::Tensor& b, double tol,
                  const std::string& what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what << ": undefined tensor";
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  if (a.numel() == 0) return;
  auto ad = a.to(torch::kDouble), bd = b.to(torch::kDouble);
  // -inf == -inf counts as equal (lse of fully masked rows).
  auto both_inf = torch::isinf(ad) & torch::isinf(bd) & (ad.sign() == bd.sign());
  auto diff = torch::where(both_inf, torch::zeros_like(ad), (ad - bd).abs());
  auto bound = tol + tol * torch::where(both_inf, torch::zeros_like(bd), bd.abs());
  auto excess = diff - bound;
  const double worst = excess.max().item<double>();
  EXPECT_FALSE(std::isnan(worst)) << what << ": NaN found";
  EXPECT_LE(worst, 0.0) << what << ": max |a-b| = " << diff.max().item<double>() << " exceeds tol "
                        << tol;
}

struct Case {
  std::string name;
  int64_t B = 1, H = 1, N = 16, M = 4, D = 8;
  bool bias = false, pe = false, blank = false, global = false, noncontig = false;
  int mask_heads = 0;        // 0 = no mask, 1 or H
  bool masked_rows = false;  // a few rows fully masked
  torch::ScalarType idx_type = torch::kLong;
  torch::ScalarType dtype = torch::kFloat;
  bool duplicates = false;  // force repeated neighbours in every row
  double dropout = 0.0;
};

struct Made {
  ClusterAttentionInputs in;
  torch::Tensor idx_full;   // [B, N, M] int64 (global mode: arange)
  torch::Tensor mask_full;  // [B, Hm, N, M] bool or undefined
  torch::Tensor dout;
};

Made make_inputs(const Case& c, uint64_t seed = 1) {
  torch::manual_seed(seed);
  Made r;
  const auto f = torch::TensorOptions().dtype(torch::kFloat);
  const int64_t M = c.global ? c.N : c.M;
  if (c.noncontig) {
    // AutoFocusFormer's layout: one qkv projection [B, N, 3, H, D] viewed as [B, H, N, D].
    auto qkv = torch::randn({c.B, c.N, 3, c.H, c.D}, f).to(c.dtype);
    r.in.q = qkv.select(2, 0).permute({0, 2, 1, 3});
    r.in.k = qkv.select(2, 1).permute({0, 2, 1, 3});
    r.in.v = qkv.select(2, 2).permute({0, 2, 1, 3});
  } else {
    r.in.q = torch::randn({c.B, c.H, c.N, c.D}, f).to(c.dtype);
    r.in.k = torch::randn({c.B, c.H, c.N, c.D}, f).to(c.dtype);
    r.in.v = torch::randn({c.B, c.H, c.N, c.D}, f).to(c.dtype);
  }
  if (c.global) {
    r.idx_full = torch::arange(c.N, torch::kLong).view({1, 1, c.N}).expand({c.B, c.N, c.N});
  } else {
    r.idx_full = torch::randint(0, std::max<int64_t>(c.N, 1), {c.B, c.N, M}, torch::kLong);
    if (c.duplicates && M > 1) {
      r.idx_full.index_put_({Slice(), Slice(), 1}, r.idx_full.index({Slice(), Slice(), 0}));
    }
    r.in.idx = r.idx_full.to(c.idx_type);
    // Non-contiguous index too: the same values read through a transposed [B, M, N] tensor.
    if (c.noncontig) r.in.idx = r.in.idx.transpose(1, 2).contiguous().transpose(1, 2);
  }
  if (c.bias) {
    r.in.bias = c.noncontig ? torch::randn({c.B, c.N, c.H, M}, f).permute({0, 2, 1, 3})
                            : torch::randn({c.B, c.H, c.N, M}, f);
  }
  if (c.pe) {
    r.in.pos = torch::randint(0, 8, {c.B, c.N, 2}, f);  // integer grid: zero distances happen
    r.in.pe_w = torch::randn({c.H, 5}, f) * 0.3;
    r.in.pe_b = torch::randn({c.H}, f);
  }
  if (c.mask_heads > 0) {
    r.mask_full = torch::rand({c.B, c.mask_heads, c.N, M}) > 0.3;
    if (c.masked_rows && c.N > 1) {
      r.mask_full.index_put_({Slice(), Slice(), Slice(0, c.N, 3)}, false);
    }
    r.in.mask = r.mask_full;
  }
  if (c.blank) {
    r.in.blank_k = torch::randn({c.H, c.D}, f);
    r.in.blank_v = torch::randn({c.H, c.D}, f);
  }
  r.in.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
  r.in.dropout_p = c.dropout;
  r.in.seed = 1234;
  r.dout = torch::randn({c.B, c.H, c.N, c.D}, f);
  return r;
}

// Plain libtorch-ops cluster attention in fp64 (no dropout): gather keys / values by idx, logits,
// softmax with the blank column, weighted sum. Gradients come from autograd.
struct TorchRef {
  torch::Tensor out, lse;
  torch::Tensor dq, dk, dv, dbias, dpe_w, dpe_b, dblank_k, dblank_v;
};

TorchRef torch_reference(const Made& m) {
  const auto& in = m.in;
  auto leaf = [](const torch::Tensor& t) {
    return t.defined() ? t.to(torch::kDouble).detach().requires_grad_(true) : torch::Tensor();
  };
  auto q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), bias = leaf(in.bias), pe_w = leaf(in.pe_w),
       pe_b = leaf(in.pe_b), bk = leaf(in.blank_k), bv = leaf(in.blank_v);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const int64_t M = m.idx_full.size(2);
  auto gidx = m.idx_full.reshape({B, 1, N * M, 1}).expand({B, H, N * M, D});
  auto kg = k.gather(2, gidx).view({B, H, N, M, D});
  auto vg = v.gather(2, gidx).view({B, H, N, M, D});
  auto s = (q.unsqueeze(3) * kg).sum(-1) * in.scale;  // [B, H, N, M]
  if (bias.defined()) s = s + bias;
  if (pe_w.defined()) {
    auto pos = in.pos.to(torch::kDouble);
    auto pj =
        pos.gather(1, m.idx_full.reshape({B, N * M, 1}).expand({B, N * M, 2})).view({B, N, M, 2});
    auto rel = pj - pos.unsqueeze(2);
    auto dx = rel.select(-1, 0), dy = rel.select(-1, 1);
    auto dist = (dx * dx + dy * dy).sqrt();
    auto safe = torch::where(dist > 0, dist, torch::ones_like(dist));
    auto zero = torch::zeros_like(dist);
    auto feats = torch::stack({dx, dy, dist, torch::where(dist > 0, dy / safe, zero),
                               torch::where(dist > 0, dx / safe, zero)},
                              -1);  // [B, N, M, 5]
    auto pe = torch::einsum("bnmc,hc->bhnm", {feats, pe_w});
    if (pe_b.defined()) pe = pe + pe_b.view({1, H, 1, 1});
    s = s + pe;
  }
  torch::Tensor keep = torch::ones({B, H, N, M}, torch::kBool);
  if (m.mask_full.defined()) keep = m.mask_full.expand({B, H, N, M});
  if (bk.defined()) {
    auto sb = (q * bk.view({1, H, 1, D})).sum(-1, true) * in.scale;
    s = torch::cat({s, sb}, -1);
    keep = torch::cat({keep, torch::ones({B, H, N, 1}, torch::kBool)}, -1);
  }
  auto filled = s.masked_fill(~keep, -INFINITY);
  auto all_masked = (~keep).all(-1, true);
  auto safe_s = torch::where(all_masked, torch::zeros_like(s), filled);
  auto lse = torch::logsumexp(safe_s, -1, true);
  auto p = torch::exp(safe_s - lse) * (~all_masked).to(torch::kDouble);
  auto out = (p.index({"...", Slice(0, M)}).unsqueeze(-1) * vg).sum(3);
  if (bv.defined()) out = out + p.index({"...", Slice(M, M + 1)}) * bv.view({1, H, 1, D});
  TorchRef r;
  r.out = out.detach();
  r.lse = lse.squeeze(-1).masked_fill(all_masked.squeeze(-1), -INFINITY).detach();
  if (B * N > 0) {
    (out * m.dout.to(torch::kDouble)).sum().backward();
    r.dq = q.grad();
    r.dk = k.grad();
    r.dv = v.grad();
    if (bias.defined()) r.dbias = bias.grad();
    if (pe_w.defined()) r.dpe_w = pe_w.grad();
    if (pe_b.defined()) r.dpe_b = pe_b.grad();
    if (bk.defined()) {
      r.dblank_k = bk.grad();
      r.dblank_v = bv.grad();
    }
  }
  return r;
}

void expect_grads_close(const ClusterAttentionGradients& a, const ClusterAttentionGradients& b,
                        double tol, const std::string& what) {
  expect_close(a.dq, b.dq, tol, what + " dq");
  expect_close(a.dk, b.dk, tol, what + " dk");
  expect_close(a.dv, b.dv, tol, what + " dv");
  if (b.dbias.defined()) expect_close(a.dbias, b.dbias, tol, what + " dbias");
  if (b.dpe_w.defined()) expect_close(a.dpe_w, b.dpe_w, tol, what + " dpe_w");
  if (b.dpe_b.defined()) expect_close(a.dpe_b, b.dpe_b, tol, what + " dpe_b");
  if (b.dblank_k.defined()) {
    expect_close(a.dblank_k, b.dblank_k, tol, what + " dblank_k");
    expect_close(a.dblank_v, b.dblank_v, tol, what + " dblank_v");
  }
}

ClusterAttentionGradients as_grads(const TorchRef& t) {
  return {t.dq, t.dk, t.dv, t.dbias, t.dpe_w, t.dpe_b, t.dblank_k, t.dblank_v};
}

// Runs one case: reference kernel vs libtorch ops (when check_torch), fast CPU (both backward
// variants) vs the reference kernel.
void run_case(const Case& c, bool check_torch = true) {
  SCOPED_TRACE(c.name);
  Made m = make_inputs(c);
  auto [out_ref, lse_ref] = cluster_attention_forward(m.in, ClusterImpl::kReference);
  auto g_ref =
      cluster_attention_backward(m.in, out_ref, lse_ref, m.dout, false, ClusterImpl::kReference);
  EXPECT_EQ(out_ref.scalar_type(), c.dtype);
  const double fwd_tol = 1e-4, bwd_tol = 1e-3;
  if (check_torch && c.dropout == 0.0) {
    TorchRef t = torch_reference(m);
    expect_close(out_ref, t.out, fwd_tol, "ref out vs torch");
    expect_close(lse_ref, t.lse, fwd_tol, "ref lse vs torch");
    if (t.dq.defined()) expect_grads_close(g_ref, as_grads(t), bwd_tol, "ref vs torch");
  }
  auto [out, lse] = cluster_attention_forward(m.in);
  expect_close(out, out_ref, fwd_tol, "cpu out");
  expect_close(lse, lse_ref, fwd_tol, "cpu lse");
  for (bool det : {false, true}) {
    auto g = cluster_attention_backward(m.in, out, lse, m.dout, det);
    expect_grads_close(g, g_ref, bwd_tol, det ? "cpu deterministic" : "cpu");
  }
}

// The seed's three configurations (C = H * D).
TEST(ClusterAttention, SeedSmall) {
  run_case({.name = "small B1 N64 C8 H1 M32",
            .B = 1,
            .H = 1,
            .N = 64,
            .M = 32,
            .D = 8,
            .bias = true,
            .blank = true,
            .mask_heads = 1});
}

TEST(ClusterAttention, SeedMedium) {
  run_case({.name = "medium B16 N128 C16 H2 M48",
            .B = 16,
            .H = 2,
            .N = 128,
            .M = 48,
            .D = 8,
            .pe = true,
            .blank = true,
            .noncontig = true,
            .mask_heads = 1});
}

TEST(ClusterAttention, SeedLarge) {
  // The full configuration runs the fp64 reference kernel against the fast kernel; the libtorch
  // fp64 cross-check materialises [B, H, N, M, D] gathers, so it runs on the first 2 batches.
  Case c{.name = "large B32 N256 C256 H8 M64",
         .B = 32,
         .H = 8,
         .N = 256,
         .M = 64,
         .D = 32,
         .pe = true,
         .blank = true,
         .mask_heads = 1};
  run_case(c, /*check_torch=*/false);
  c.B = 2;
  c.name = "large, 2 batches, vs torch";
  run_case(c);
}

TEST(ClusterAttention, EdgeCases) {
  run_case({.name = "N not multiple of 8", .B = 3, .H = 2, .N = 13, .M = 5, .D = 8, .blank = true});
  run_case({.name = "M = 1", .B = 2, .H = 2, .N = 9, .M = 1, .D = 8, .bias = true});
  run_case({.name = "M >= N", .B = 2, .H = 1, .N = 7, .M = 12, .D = 8, .pe = true});
  run_case({.name = "duplicates",
            .B = 2,
            .H = 3,
            .N = 11,
            .M = 6,
            .D = 8,
            .blank = true,
            .duplicates = true});
  run_case({.name = "fully masked rows, no blank",
            .B = 2,
            .H = 2,
            .N = 10,
            .M = 4,
            .D = 8,
            .bias = true,
            .mask_heads = 2,
            .masked_rows = true});
  run_case({.name = "fully masked rows, blank",
            .B = 2,
            .H = 2,
            .N = 10,
            .M = 4,
            .D = 8,
            .blank = true,
            .mask_heads = 1,
            .masked_rows = true});
  run_case({.name = "B = 0", .B = 0, .H = 2, .N = 8, .M = 3, .D = 8, .blank = true});
  run_case({.name = "N = 1", .B = 2, .H = 2, .N = 1, .M = 3, .D = 8, .pe = true, .blank = true});
  for (int64_t d : {8, 24, 32, 64, 128}) {
    run_case({.name = "head_dim " + std::to_string(d),
              .B = 2,
              .H = 2,
              .N = 12,
              .M = 5,
              .D = d,
              .bias = true,
              .blank = true});
  }
  run_case({.name = "non-contiguous",
            .B = 2,
            .H = 3,
            .N = 10,
            .M = 4,
            .D = 24,
            .pe = true,
            .noncontig = true});
  run_case({.name = "int32 idx",
            .B = 2,
            .H = 2,
            .N = 10,
            .M = 4,
            .D = 8,
            .mask_heads = 2,
            .idx_type = torch::kInt});
  run_case({.name = "global mode",
            .B = 2,
            .H = 2,
            .N = 10,
            .D = 8,
            .pe = true,
            .blank = true,
            .global = true,
            .mask_heads = 1});
  run_case({.name = "everything",
            .B = 3,
            .H = 2,
            .N = 17,
            .M = 9,
            .D = 24,
            .bias = true,
            .pe = true,
            .blank = true,
            .noncontig = true,
            .mask_heads = 2,
            .masked_rows = true,
            .idx_type = torch::kInt,
            .duplicates = true});
}

TEST(ClusterAttention, HalfAndBFloat16) {
  // Inputs rounded to fp16 / bf16, computed in fp32: compared with the reference on the same
  // rounded inputs, looser only by the output rounding (fp16 1e-3, bf16 1e-2 relative).
  for (auto [dtype, tol] : {std::pair{torch::kHalf, 2e-3}, {torch::kBFloat16, 1.6e-2}}) {
    Case c{.name = std::string("dtype ") + c10::toString(dtype),
           .B = 2,
           .H = 2,
           .N = 20,
           .M = 6,
           .D = 24,
           .pe = true,
           .blank = true,
           .mask_heads = 1,
           .dtype = dtype};
    Made m = make_inputs(c);
    auto [out_ref, lse_ref] = cluster_attention_forward(m.in, ClusterImpl::kReference);
    auto [out, lse] = cluster_attention_forward(m.in);
    EXPECT_EQ(out.scalar_type(), dtype);
    expect_close(out, out_ref, tol, c.name + " out");
    expect_close(lse, lse_ref, 1e-4, c.name + " lse");
    // Against fp32 inputs holding the same values: only output rounding differs.
    Made m32 = m;
    for (auto* t : {&m32.in.q, &m32.in.k, &m32.in.v}) *t = t->to(torch::kFloat);
    auto [out32, lse32] = cluster_attention_forward(m32.in, ClusterImpl::kReference);
    expect_close(out, out32, tol, c.name + " out vs fp32");
    // The backward reads out (dout . out): it is given the fp32 output (as the autograd Function
    // does), so only the rounding of the returned gradients differs.
    auto [out_f32, lse_f32] = cluster_attention_forward(m.in, ClusterImpl::kAuto, true);
    EXPECT_EQ(out_f32.scalar_type(), torch::kFloat);
    expect_close(out_f32, out32, 1e-4, c.name + " fp32 out");
    auto g = cluster_attention_backward(m.in, out_f32, lse_f32, m.dout);
    auto g32 =
        cluster_attention_backward(m32.in, out32, lse32, m.dout, false, ClusterImpl::kReference);
    EXPECT_EQ(g.dq.scalar_type(), dtype);
    expect_grads_close(g, g32, tol, c.name);
  }
}

TEST(ClusterAttention, DeterministicBackwardIsBitwiseReproducible) {
  Made m = make_inputs(
      {.B = 2, .H = 2, .N = 64, .M = 16, .D = 32, .pe = true, .blank = true, .duplicates = true});
  auto [out, lse] = cluster_attention_forward(m.in);
  auto a = cluster_attention_backward(m.in, out, lse, m.dout, true);
  auto b = cluster_attention_backward(m.in, out, lse, m.dout, true);
  for (auto [x, y] : {std::pair{a.dq, b.dq},
                      {a.dk, b.dk},
                      {a.dv, b.dv},
                      {a.dpe_w, b.dpe_w},
                      {a.dblank_k, b.dblank_k}}) {
    EXPECT_TRUE(torch::equal(x, y));
  }
}

// Central finite differences of the fp64-accumulating reference forward: the analytic gradients
// (reference and fast) must match them. Inputs are fp32, so the differences use a coarse step.
TEST(ClusterAttention, FiniteDifferenceGradcheck) {
  for (double p : {0.0, 0.3}) {
    Case c{.name = "fd",
           .B = 1,
           .H = 2,
           .N = 6,
           .M = 4,
           .D = 8,
           .bias = true,
           .pe = true,
           .blank = true,
           .mask_heads = 1,
           .duplicates = true,
           .dropout = p};
    Made m = make_inputs(c);
    for (auto* t : {&m.in.q, &m.in.k, &m.in.v}) *t = t->contiguous();
    auto loss = [&](const ClusterAttentionInputs& in) {
      auto [o, l] = cluster_attention_forward(in, ClusterImpl::kReference);
      return (o.to(torch::kDouble) * m.dout.to(torch::kDouble)).sum().item<double>();
    };
    auto [out, lse] = cluster_attention_forward(m.in, ClusterImpl::kReference);
    auto g_ref = cluster_attention_backward(m.in, out, lse, m.dout, false, ClusterImpl::kReference);
    auto [out_f, lse_f] = cluster_attention_forward(m.in);
    auto g_cpu = cluster_attention_backward(m.in, out_f, lse_f, m.dout, true);
    const double eps = 1e-2;
    auto check = [&](torch::Tensor ClusterAttentionInputs::*field, torch::Tensor grad_ref,
                     torch::Tensor grad_cpu, const char* name) {
      auto base = (m.in.*field).clone();
      auto flat_grad = grad_ref.reshape(-1), flat_cpu = grad_cpu.reshape(-1);
      for (int64_t i = 0; i < base.numel(); i += 1 + base.numel() / 24) {
        ClusterAttentionInputs in = m.in;
        auto plus = base.clone(), minus = base.clone();
        plus.view(-1)[i] += eps;
        minus.view(-1)[i] -= eps;
        in.*field = plus;
        const double lp = loss(in);
        in.*field = minus;
        const double lm = loss(in);
        const double fd = (lp - lm) / (2 * eps);
        const double tol = 2e-3 * (1 + std::abs(fd));
        EXPECT_NEAR(flat_grad[i].item<double>(), fd, tol) << name << "[" << i << "] p=" << p;
        EXPECT_NEAR(flat_cpu[i].item<double>(), fd, tol) << name << "[" << i << "] cpu p=" << p;
      }
    };
    check(&ClusterAttentionInputs::q, g_ref.dq, g_cpu.dq, "q");
    check(&ClusterAttentionInputs::k, g_ref.dk, g_cpu.dk, "k");
    check(&ClusterAttentionInputs::v, g_ref.dv, g_cpu.dv, "v");
    check(&ClusterAttentionInputs::bias, g_ref.dbias, g_cpu.dbias, "bias");
    check(&ClusterAttentionInputs::pe_w, g_ref.dpe_w, g_cpu.dpe_w, "pe_w");
    check(&ClusterAttentionInputs::pe_b, g_ref.dpe_b, g_cpu.dpe_b, "pe_b");
    check(&ClusterAttentionInputs::blank_k, g_ref.dblank_k, g_cpu.dblank_k, "blank_k");
    check(&ClusterAttentionInputs::blank_v, g_ref.dblank_v, g_cpu.dblank_v, "blank_v");
  }
}

TEST(ClusterAttention, Dropout) {
  Case c{.B = 2, .H = 2, .N = 32, .M = 16, .D = 8, .blank = true, .mask_heads = 1};
  Made m = make_inputs(c);
  auto [out0, lse0] = cluster_attention_forward(m.in);
  // p = 0 with any seed is the identity on the attention weights.
  ClusterAttentionInputs in = m.in;
  in.seed = 99;
  EXPECT_TRUE(torch::equal(std::get<0>(cluster_attention_forward(in)), out0));
  in.dropout_p = 0.25;
  auto [a, la] = cluster_attention_forward(in);
  auto [b, lb] = cluster_attention_forward(in);
  EXPECT_TRUE(torch::equal(a, b)) << "same seed, same mask";
  EXPECT_TRUE(torch::equal(la, lse0)) << "lse is dropout-free";
  EXPECT_FALSE(torch::allclose(a, out0));
  in.seed = 100;
  EXPECT_FALSE(torch::equal(std::get<0>(cluster_attention_forward(in)), a)) << "new seed";
  // Fast and reference kernels draw the same mask.
  in.seed = 99;
  expect_close(a, std::get<0>(cluster_attention_forward(in, ClusterImpl::kReference)), 1e-4,
               "dropout cpu vs ref");
  auto g = cluster_attention_backward(in, a, la, m.dout);
  auto gr = cluster_attention_backward(in, a, la, m.dout, false, ClusterImpl::kReference);
  expect_grads_close(g, gr, 1e-3, "dropout backward");
  // Keep rate: with q = 0 every weight is 1 / M (no blank), and v = 1 makes each output element
  // (kept count) / (M (1 - p)).
  ClusterAttentionInputs u = in;
  u.q = torch::zeros_like(in.q);
  u.v = torch::ones_like(in.v);
  u.mask = torch::Tensor();
  u.blank_k = u.blank_v = torch::Tensor();
  u.dropout_p = 0.4;
  auto kept = std::get<0>(cluster_attention_forward(u)).select(-1, 0) * (1 - 0.4);
  EXPECT_NEAR(kept.mean().item<double>(), 0.6, 0.02);
}

TEST(ClusterAttention, BadInputs) {
  Made m = make_inputs({.B = 2, .H = 2, .N = 8, .M = 3, .D = 8, .blank = true});
  auto expect_error = [&](ClusterAttentionInputs in, const std::string& needle) {
    try {
      cluster_attention_forward(in);
      ADD_FAILURE() << "no error, expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto in = m.in;
  in.idx = m.in.idx.clone();
  in.idx.index_put_({0, 0, 0}, 8);
  expect_error(in, "idx values must lie in [0, 8)");
  in.idx.index_put_({0, 0, 0}, -1);
  expect_error(in, "idx values must lie in [0, 8)");
  in = m.in;
  in.idx = torch::zeros({2, 8, 0}, torch::kLong);
  expect_error(in, "M > 0");
  in = m.in;
  in.idx = m.in.idx.to(torch::kFloat);
  expect_error(in, "idx must be int32 or int64");
  in = m.in;
  in.k = m.in.k.to(torch::kHalf);
  expect_error(in, "dtypes must match");
  in = m.in;
  in.v = m.in.v.narrow(2, 0, 7);
  expect_error(in, "shapes must match");
  in = m.in;
  in.k = torch::empty(m.in.k.sizes(), torch::TensorOptions().device(torch::kMeta));
  expect_error(in, "must be on cpu");
  in = m.in;
  in.q = m.in.q.to(torch::kInt);
  expect_error(in, "q must be float32, float16, bfloat16 or float64");
  in = m.in;
  in.blank_v = torch::Tensor();
  expect_error(in, "blank_k and blank_v must be given together");
  in = m.in;
  in.mask = torch::ones({2, 3, 8, 3}, torch::kBool);
  expect_error(in, "mask shape");
  in = m.in;
  in.bias = torch::zeros({2, 2, 8, 4});
  expect_error(in, "bias shape");
  in = m.in;
  in.dropout_p = 1.0;
  expect_error(in, "dropout_p must be in [0, 1)");
}

// ---- unfused primitives ----

TEST(ClusterPrimitives, QkAvWfMatchTorchAndReference) {
  struct P {
    int64_t B, H, N, M, D;
  };
  for (P p : {P{1, 1, 64, 32, 8}, P{3, 2, 13, 20, 24}, P{2, 3, 9, 1, 64}, P{0, 2, 8, 3, 8},
              P{2, 8, 256, 64, 32}}) {
    SCOPED_TRACE("B" + std::to_string(p.B) + " N" + std::to_string(p.N) + " M" +
                 std::to_string(p.M) + " D" + std::to_string(p.D));
    torch::manual_seed(7);
    auto q = torch::randn({p.B, p.H, p.N, p.D}), k = torch::randn({p.B, p.H, p.N, p.D});
    auto idx = torch::randint(0, p.N, {p.B, p.N, p.M}, torch::kLong);
    auto attn = torch::randn({p.B, p.H, p.N, p.M});
    auto g_attn = torch::randn({p.B, p.H, p.N, p.M}), g_out = torch::randn({p.B, p.H, p.N, p.D});
    auto idx32 = idx.to(torch::kInt);
    // libtorch-ops versions in fp64 with autograd.
    auto qd = q.to(torch::kDouble).requires_grad_(), kd = k.to(torch::kDouble).requires_grad_();
    auto ad = attn.to(torch::kDouble).requires_grad_();
    auto gidx = idx.reshape({p.B, 1, p.N * p.M, 1}).expand({p.B, p.H, p.N * p.M, p.D});
    auto qk_t = (qd.unsqueeze(3) * kd.gather(2, gidx).view({p.B, p.H, p.N, p.M, p.D})).sum(-1);
    auto av_t = (ad.unsqueeze(-1) * kd.gather(2, gidx).view({p.B, p.H, p.N, p.M, p.D})).sum(3);
    if (p.B > 0)
      ((qk_t * g_attn.to(torch::kDouble)).sum() + (av_t * g_out.to(torch::kDouble)).sum())
          .backward();

    for (ClusterImpl impl : {ClusterImpl::kReference, ClusterImpl::kAuto}) {
      const std::string tag = impl == ClusterImpl::kReference ? "ref" : "cpu";
      expect_close(cluster_qk_forward(q, k, idx32, impl), qk_t.detach(), 1e-4, tag + " qk");
      expect_close(cluster_av_forward(attn, k, idx, impl), av_t.detach(), 1e-4, tag + " av");
      if (p.B == 0) continue;
      auto [dq, dk] = cluster_qk_backward(g_attn, q, k, idx, impl);
      auto [dattn, dv] = cluster_av_backward(g_out, attn, k, idx, impl);
      expect_close(dq, qd.grad(), 1e-3, tag + " qk dq");
      expect_close(dattn, ad.grad(), 1e-3, tag + " av dattn");
      expect_close(dk + dv, kd.grad(), 1e-3, tag + " qk dk + av dv");
    }
  }
  // WF: weights [B, N', M, IC] x features [B, N, C] -> [B, N', IC, C].
  struct W {
    int64_t B, Q, N, M, I, C;
  };
  for (W p : {W{2, 16, 64, 8, 4, 32}, W{1, 5, 13, 20, 3, 7}, W{3, 1, 1, 1, 1, 1}}) {
    torch::manual_seed(8);
    auto w = torch::randn({p.B, p.Q, p.M, p.I}), f = torch::randn({p.B, p.N, p.C});
    auto idx = torch::randint(0, p.N, {p.B, p.Q, p.M}, torch::kLong);
    auto gout = torch::randn({p.B, p.Q, p.I, p.C});
    auto wd = w.to(torch::kDouble).requires_grad_(), fd = f.to(torch::kDouble).requires_grad_();
    auto fg = fd.gather(1, idx.reshape({p.B, p.Q * p.M, 1}).expand({p.B, p.Q * p.M, p.C}))
                  .view({p.B, p.Q, p.M, p.C});
    auto out_t = torch::einsum("bnmi,bnmc->bnic", {wd, fg});
    (out_t * gout.to(torch::kDouble)).sum().backward();
    for (ClusterImpl impl : {ClusterImpl::kReference, ClusterImpl::kAuto}) {
      expect_close(cluster_wf_forward(w, f, idx, impl), out_t.detach(), 1e-4, "wf");
      auto [dw, df] = cluster_wf_backward(gout, w, f, idx.to(torch::kInt), impl);
      expect_close(dw, wd.grad(), 1e-3, "wf dw");
      expect_close(df, fd.grad(), 1e-3, "wf df");
    }
  }
  EXPECT_THROW(cluster_qk_forward(torch::randn({1, 1, 4, 8}), torch::randn({1, 1, 4, 8}),
                                  torch::full({1, 4, 2}, 4, torch::kLong)),
               Error);
  EXPECT_THROW(cluster_wf_forward(torch::randn({1, 2, 3, 4}), torch::randn({1, 5, 6}),
                                  torch::zeros({1, 2, 2}, torch::kLong)),
               Error);
}

// ---- autograd Functions and the ClusterAttention module ----

// AutoFocusFormer's ClusterAttention written with plain libtorch ops (fp32, autograd).
torch::Tensor module_reference(const std::map<std::string, torch::Tensor>& p, int64_t H,
                               double scale, const torch::Tensor& feat, const torch::Tensor& pos,
                               const torch::Tensor& idx_full, const torch::Tensor& mask) {
  const int64_t B = feat.size(0), N = feat.size(1), C = feat.size(2), D = C / H;
  const int64_t M = idx_full.size(2);
  auto qkv = torch::linear(feat, p.at("qkv.weight"), p.at("qkv.bias"))
                 .view({B, N, 3, H, D})
                 .permute({2, 0, 3, 1, 4});
  auto q = qkv[0] * scale, k = qkv[1], v = qkv[2];
  auto gidx = idx_full.reshape({B, 1, N * M, 1}).expand({B, H, N * M, D});
  auto kg = k.gather(2, gidx).view({B, H, N, M, D});
  auto vg = v.gather(2, gidx).view({B, H, N, M, D});
  auto attn = torch::matmul(q.unsqueeze(3), kg.transpose(-1, -2)).squeeze(3);
  auto pj = pos.gather(1, idx_full.reshape({B, N * M, 1}).expand({B, N * M, 2})).view({B, N, M, 2});
  auto rel = pj - pos.unsqueeze(2);
  auto dx = rel.select(-1, 0), dy = rel.select(-1, 1);
  auto dist = (dx * dx + dy * dy).sqrt();
  auto safe = torch::where(dist > 0, dist, torch::ones_like(dist));
  auto zero = torch::zeros_like(dist);
  auto feats = torch::stack({dx, dy, dist, torch::where(dist > 0, dy / safe, zero),
                             torch::where(dist > 0, dx / safe, zero)},
                            -1);
  attn =
      attn +
      torch::linear(feats, p.at("pos_embed.weight"), p.at("pos_embed.bias")).permute({0, 3, 1, 2});
  if (mask.defined()) attn = attn.masked_fill(~mask.unsqueeze(1), -INFINITY);
  auto blank = (q * p.at("blank_k").view({1, H, 1, D})).sum(-1, true);
  auto w = torch::softmax(torch::cat({attn, blank}, -1), -1);
  auto out = torch::matmul(w.index({"...", Slice(0, M)}).unsqueeze(3), vg).squeeze(3) +
             w.index({"...", Slice(M, M + 1)}) * p.at("blank_v").view({1, H, 1, D});
  out = out.permute({0, 2, 1, 3}).reshape({B, N, C});
  return torch::linear(out, p.at("proj.weight"), p.at("proj.bias"));
}

TEST(ClusterAttentionModule, MatchesLibtorchOpsOutputAndEveryGradient) {
  for (bool global : {false, true}) {
    SCOPED_TRACE(global ? "global" : "local");
    torch::manual_seed(3);
    const int64_t B = 3, N = 21, C = 24, H = 3, M = global ? N : 8;
    ClusterAttention module({.dim = C, .heads = H, .attn_drop = 0.4, .proj_drop = 0.2});
    auto feat = torch::randn({B, N, C}).requires_grad_(true);
    auto pos = torch::randint(0, 6, {B, N, 2}).to(torch::kFloat);
    auto idx_full = global ? torch::arange(N).view({1, 1, N}).expand({B, N, N}).contiguous()
                           : torch::randint(0, N, {B, N, M}, torch::kLong);
    auto mask = torch::rand({B, N, M}) > 0.25;
    mask.index_put_({Slice(), 0}, false);  // a fully masked row: only the blank token remains
    module.eval();  // dropout off: eval mode must be the identity on both dropouts
    auto y = module.forward(feat, pos, global ? torch::Tensor() : idx_full.to(torch::kInt), mask);

    std::map<std::string, torch::Tensor> ref_params;
    for (auto& [name, t] : module.named_parameters()) {
      ref_params[name] = t.detach().clone().requires_grad_(true);
    }
    EXPECT_EQ(ref_params.size(), 8u);
    auto feat_ref = feat.detach().clone().requires_grad_(true);
    auto y_ref =
        module_reference(ref_params, H, 1.0 / std::sqrt(C / H), feat_ref, pos, idx_full, mask);
    expect_close(y, y_ref, 1e-4, "module output");
    auto gy = torch::randn_like(y);
    (y * gy).sum().backward();
    (y_ref * gy).sum().backward();
    expect_close(feat.grad(), feat_ref.grad(), 1e-3, "dfeat");
    for (auto& [name, t] : module.named_parameters()) {
      ASSERT_TRUE(t.grad().defined()) << name;
      expect_close(t.grad(), ref_params[name].grad(), 1e-3, "d" + name);
    }
  }
}

TEST(ClusterAttentionModule, DropoutTrainingAndErrors) {
  torch::manual_seed(4);
  const int64_t B = 2, N = 16, C = 16, H = 2, M = 6;
  ClusterAttention module({.dim = C, .heads = H, .attn_drop = 0.3, .seed = 5});
  auto feat = torch::randn({B, N, C});
  auto pos = torch::randn({B, N, 2});
  auto idx = torch::randint(0, N, {B, N, M}, torch::kLong);
  module.eval();
  auto y_eval = module.forward(feat, pos, idx);
  module.train();
  auto y_a = module.forward(feat, pos, idx);
  auto y_b = module.forward(feat, pos, idx);
  EXPECT_FALSE(torch::allclose(y_a, y_eval)) << "training applies attention dropout";
  EXPECT_FALSE(torch::equal(y_a, y_b)) << "each training step draws a new mask";
  ClusterAttention no_drop({.dim = C, .heads = H});
  // Same parameters, attn_drop = 0 in training mode: identical to eval.
  {
    torch::NoGradGuard g;
    auto src = module.parameters(), dst = no_drop.parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  EXPECT_TRUE(torch::allclose(no_drop.forward(feat, pos, idx), y_eval, 1e-6, 1e-6));

  // A few SGD steps on a regression target lower the loss.
  auto target = torch::randn({B, N, C});
  double first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    auto loss = (no_drop.forward(feat, pos, idx) - target).pow(2).mean();
    for (auto& p : no_drop.parameters()) p.mutable_grad() = torch::Tensor();
    loss.backward();
    torch::NoGradGuard g;
    for (auto& p : no_drop.parameters()) p.sub_(0.5 * p.grad());
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.9 * first);

  EXPECT_THROW(ClusterAttention({.dim = 10, .heads = 3}), Error);
  try {
    ClusterAttention({.dim = 10, .heads = 3});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("divisible by heads"), std::string::npos) << e.what();
  }
  EXPECT_THROW(module.forward(torch::randn({B, N, C + 1}), pos, idx), Error);
}

TEST(ClusterAttentionAutograd, PrimitivesComposeAndFusedMatchesThem) {
  // QK -> softmax -> AV through the autograd Functions equals the fused attention (no bias, no
  // blank), forward and backward; WF's autograd gradients equal its explicit backward.
  torch::manual_seed(5);
  const int64_t B = 2, H = 2, N = 19, M = 7, D = 24;
  auto q = torch::randn({B, H, N, D}).requires_grad_(true);
  auto k = torch::randn({B, H, N, D}).requires_grad_(true);
  auto v = torch::randn({B, H, N, D}).requires_grad_(true);
  auto idx = torch::randint(0, N, {B, N, M}, torch::kLong);
  const double scale = 0.3;
  auto attn = torch::softmax(cluster_qk(q * scale, k, idx), -1);
  auto out_unfused = cluster_av(attn, v, idx);
  auto gout = torch::randn_like(out_unfused);
  // Gradients through backward(): read and cleared after each pass.
  auto grads_of = [&](const torch::Tensor& out) {
    (out * gout).sum().backward();
    std::vector<torch::Tensor> g;
    for (auto* t : {&q, &k, &v}) {
      g.push_back(t->grad().clone());
      t->mutable_grad() = torch::Tensor();
    }
    return g;
  };
  auto grads_unfused = grads_of(out_unfused);
  ClusterAttentionInputs in{.q = q, .k = k, .v = v, .idx = idx, .scale = scale};
  for (bool det : {false, true}) {
    auto out = std::get<0>(cluster_attention(in, det));
    expect_close(out, out_unfused, 1e-4, "fused vs QK-softmax-AV");
    auto grads = grads_of(out);
    for (int i = 0; i < 3; ++i) expect_close(grads[i], grads_unfused[i], 1e-3, "grad");
  }
  auto w = torch::randn({B, 5, M, 3}).requires_grad_(true);
  auto f = torch::randn({B, N, 11}).requires_grad_(true);
  auto widx = torch::randint(0, N, {B, 5, M}, torch::kInt);
  auto y = cluster_wf(w, f, widx);
  auto gy = torch::randn_like(y);
  (y * gy).sum().backward();
  auto [dw, df] = cluster_wf_backward(gy, w.detach(), f.detach(), widx, ClusterImpl::kReference);
  expect_close(w.grad(), dw, 1e-3, "wf dw");
  expect_close(f.grad(), df, 1e-3, "wf df");
}

// ---- neighbour building ----

TEST(ClusterNeighbors, HilbertCurveVisitsAdjacentCells) {
  // The order-16 curve restricted to a 16 x 16 lattice of cell corners is the order-4 curve:
  // consecutive lattice points along it are grid neighbours.
  std::vector<std::pair<uint64_t, std::pair<int, int>>> pts;
  for (int x = 0; x < 16; ++x) {
    for (int y = 0; y < 16; ++y) pts.push_back({hilbert_index(x * 4096u, y * 4096u), {x, y}});
  }
  std::sort(pts.begin(), pts.end());
  for (size_t i = 1; i < pts.size(); ++i) {
    const auto [x0, y0] = pts[i - 1].second;
    const auto [x1, y1] = pts[i].second;
    EXPECT_EQ(std::abs(x1 - x0) + std::abs(y1 - y0), 1) << "step " << i;
  }
}

TEST(ClusterNeighbors, BalancedClustersExactKnnAndNeighbourIndex) {
  struct P {
    int64_t B, N, S, k;
  };
  for (P p : {P{2, 64, 8, 4}, P{3, 61, 8, 3}, P{1, 5, 8, 1}, P{2, 100, 4, 25}, P{0, 8, 8, 1}}) {
    SCOPED_TRACE("B" + std::to_string(p.B) + " N" + std::to_string(p.N));
    torch::manual_seed(11);
    auto pos = torch::rand({p.B, p.N, 2}) * 50;
    auto r = build_cluster_neighbors(pos, p.k, p.S);
    const int64_t K = (p.N + p.S - 1) / p.S;
    ASSERT_EQ(r.members.sizes(), torch::IntArrayRef({p.B, K, p.S}));
    ASSERT_EQ(r.idx.sizes(), torch::IntArrayRef({p.B, p.N, p.k * p.S}));
    if (p.B == 0) continue;
    // Every token is a real member exactly once, clusters are full but the last, cluster_of agrees.
    EXPECT_EQ(r.member_mask.sum().item<int64_t>(), p.B * p.N);
    EXPECT_TRUE(torch::equal(r.member_mask.sum(-1).index({Slice(), Slice(0, K - 1)}),
                             torch::full({p.B, K - 1}, p.S, torch::kLong)));
    auto real = r.members.masked_select(r.member_mask).view({p.B, p.N});
    EXPECT_TRUE(torch::equal(std::get<0>(real.sort(-1)), torch::arange(p.N).expand({p.B, p.N})));
    auto owner = torch::arange(K).view({1, K, 1}).expand({p.B, K, p.S});
    auto scattered = torch::full({p.B, p.N}, -1, torch::kLong)
                         .scatter(1, real, owner.masked_select(r.member_mask).view({p.B, p.N}));
    EXPECT_TRUE(torch::equal(scattered, r.cluster_of));
    // Centroids are the member means.
    auto mf = r.member_mask.to(torch::kFloat).unsqueeze(-1);
    auto gathered = pos.gather(1, r.members.view({p.B, K * p.S, 1}).expand({p.B, K * p.S, 2}))
                        .view({p.B, K, p.S, 2});
    expect_close(r.centroids, (gathered * mf).sum(2) / mf.sum(2), 1e-5, "centroids");
    // Clusters along the curve are compact: much tighter than clusters of random tokens.
    if (p.N >= 32) {
      auto spread = ((gathered - r.centroids.unsqueeze(2)).pow(2).sum(-1) * mf.squeeze(-1)).sum();
      auto shuffled = pos.index({Slice(), torch::randperm(p.N)});
      auto rnd =
          shuffled.index({Slice(), Slice(0, (p.N / p.S) * p.S)}).reshape({p.B, p.N / p.S, p.S, 2});
      auto rnd_spread = (rnd - rnd.mean(2, true)).pow(2).sum(-1).sum();
      const double ratio = spread.item<double>() / rnd_spread.item<double>();
      EXPECT_LT(ratio, 0.35) << "curve clusters should be compact";
    }
    // k nearest clusters: exact against cdist + sort (distinct random distances).
    auto d = torch::cdist(r.centroids.to(torch::kDouble), r.centroids.to(torch::kDouble));
    auto expect_nn = std::get<1>(d.sort(-1)).index({"...", Slice(0, p.k)});
    EXPECT_TRUE(torch::equal(r.nearest, expect_nn));
    EXPECT_TRUE(torch::equal(nearest_clusters(r.centroids, p.k), r.nearest));
    // Neighbour index: members of the k nearest clusters of the token's cluster.
    auto near_of_tok = r.nearest.gather(1, r.cluster_of.unsqueeze(-1).expand({p.B, p.N, p.k}));
    auto expect_idx =
        r.members.gather(1, near_of_tok.reshape({p.B, p.N * p.k, 1}).expand({p.B, p.N * p.k, p.S}))
            .view({p.B, p.N, p.k * p.S});
    EXPECT_TRUE(torch::equal(r.idx, expect_idx));
    EXPECT_TRUE(r.idx.min().item<int64_t>() >= 0 && r.idx.max().item<int64_t>() < p.N);
    // The token itself is among its neighbours (its own cluster is its nearest).
    auto self = torch::arange(p.N).view({1, p.N, 1});
    EXPECT_TRUE(((r.idx == self) & r.mask).any(-1).all().item<bool>());
  }
  EXPECT_THROW(build_cluster_neighbors(torch::rand({1, 16, 2}), 3, 8), Error);  // K = 2 < 3
  EXPECT_THROW(build_cluster_neighbors(torch::rand({1, 16, 3}), 1, 8), Error);
  EXPECT_THROW(nearest_clusters(torch::rand({1, 4, 2}), 0), Error);
}

TEST(ClusterNeighbors, FeedsClusterAttention) {
  // End to end: neighbours from positions, padding masked, attention equals the reference.
  torch::manual_seed(12);
  const int64_t B = 2, N = 45, H = 2, D = 8;
  auto pos = torch::rand({B, N, 2});
  auto nb = build_cluster_neighbors(pos, 3);
  ClusterAttentionInputs in{.q = torch::randn({B, H, N, D}),
                            .k = torch::randn({B, H, N, D}),
                            .v = torch::randn({B, H, N, D}),
                            .idx = nb.idx,
                            .pos = pos,
                            .pe_w = torch::randn({H, 5}),
                            .mask = nb.mask.unsqueeze(1),
                            .scale = 0.35};
  auto [out, lse] = cluster_attention_forward(in);
  auto [out_r, lse_r] = cluster_attention_forward(in, ClusterImpl::kReference);
  expect_close(out, out_r, 1e-4, "out");
  EXPECT_TRUE(torch::isfinite(lse).all().item<bool>());
}

}  // namespace
}  // namespace tessera::kernels
