// Torch-free test inputs for the cluster attention views: random buffers (std::mt19937), optional
// strided q / k / v (AutoFocusFormer's [B, N, 3, H, D] qkv layout), and tolerance checks. Shared
// by the CPU core test (which also runs under AddressSanitizer) and the CUDA test.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cluster_attention/cluster_attention.h"

namespace tessera::kernels::testing {

struct FusedSpec {
  std::string name;
  int B = 1, H = 1, N = 16, M = 4, D = 8;
  bool bias = false, pe = false, blank = false, global = false, strided = false;
  int mask_heads = 0;  // 0: no mask
  bool masked_rows = false;
  bool duplicates = false;
  float dropout = 0.f;
  uint32_t seed = 1;
};

// Owns every buffer of one fused case; view() points into them.
struct FusedData {
  FusedSpec s;
  int M = 0;
  std::vector<float> qkv;  // strided: [B, N, 3, H, D]; else q | k | v each [B, H, N, D]
  std::vector<int64_t> idx;
  std::vector<float> bias, pos, pe_w, pe_b, blank_k, blank_v, dout;
  std::vector<uint8_t> mask;

  explicit FusedData(const FusedSpec& spec) : s(spec) {
    std::mt19937 rng(spec.seed);
    std::normal_distribution<float> normal;
    auto randn = [&](size_t n, float scale = 1.f) {
      std::vector<float> v(n);
      for (auto& x : v) x = normal(rng) * scale;
      return v;
    };
    M = s.global ? s.N : s.M;
    const size_t plane = static_cast<size_t>(s.B) * s.H * s.N * s.D;
    qkv = randn(3 * plane);
    if (!s.global) {
      idx.resize(static_cast<size_t>(s.B) * s.N * M);
      std::uniform_int_distribution<int64_t> pick(0, std::max(s.N - 1, 0));
      for (auto& j : idx) j = pick(rng);
      if (s.duplicates && M > 1) {
        for (size_t r = 0; r < idx.size(); r += M) idx[r + 1] = idx[r];
      }
    }
    if (s.bias) bias = randn(static_cast<size_t>(s.B) * s.H * s.N * M);
    if (s.pe) {
      pos.resize(static_cast<size_t>(s.B) * s.N * 2);
      std::uniform_int_distribution<int> cell(0, 7);  // integer grid: zero distances occur
      for (auto& p : pos) p = static_cast<float>(cell(rng));
      pe_w = randn(static_cast<size_t>(s.H) * 5, 0.3f);
      pe_b = randn(s.H);
    }
    if (s.mask_heads > 0) {
      mask.resize(static_cast<size_t>(s.B) * s.mask_heads * s.N * M);
      std::uniform_real_distribution<float> u;
      for (auto& m : mask) m = u(rng) > 0.3f ? 1 : 0;
      if (s.masked_rows) {
        for (int b = 0; b < s.B; ++b)
          for (int h = 0; h < s.mask_heads; ++h)
            for (int n = 0; n < s.N; n += 3)
              std::fill_n(&mask[((static_cast<size_t>(b) * s.mask_heads + h) * s.N + n) * M], M, 0);
      }
    }
    if (s.blank) {
      blank_k = randn(static_cast<size_t>(s.H) * s.D);
      blank_v = randn(static_cast<size_t>(s.H) * s.D);
    }
    dout = randn(plane);
  }

  size_t rows() const { return static_cast<size_t>(s.B) * s.H * s.N; }

  // A view whose pointers are offset from the given bases (host buffers, or device copies made
  // by the CUDA test with the same layout). out / lse are left for the caller.
  ClusterAttentionView view(const float* qkv_base, const int64_t* idx_base, const float* bias_base,
                            const float* pos_base, const float* pe_w_base, const float* pe_b_base,
                            const uint8_t* mask_base, const float* bk_base,
                            const float* bv_base) const {
    ClusterAttentionView a;
    const int64_t plane = static_cast<int64_t>(s.B) * s.H * s.N * s.D;
    if (s.strided) {
      // [B, N, 3, H, D]: batch stride N*3*H*D, head stride D, token stride 3*H*D.
      const int64_t st[3] = {static_cast<int64_t>(s.N) * 3 * s.H * s.D, s.D,
                             static_cast<int64_t>(3) * s.H * s.D};
      a.q = qkv_base;
      a.k = qkv_base + static_cast<int64_t>(s.H) * s.D;
      a.v = qkv_base + 2 * static_cast<int64_t>(s.H) * s.D;
      for (int i = 0; i < 3; ++i) a.q_stride[i] = a.k_stride[i] = a.v_stride[i] = st[i];
    } else {
      const int64_t st[3] = {static_cast<int64_t>(s.H) * s.N * s.D, static_cast<int64_t>(s.N) * s.D,
                             s.D};
      a.q = qkv_base;
      a.k = qkv_base + plane;
      a.v = qkv_base + 2 * plane;
      for (int i = 0; i < 3; ++i) a.q_stride[i] = a.k_stride[i] = a.v_stride[i] = st[i];
    }
    a.idx = s.global ? nullptr : idx_base;
    a.bias = s.bias ? bias_base : nullptr;
    a.pos = s.pe ? pos_base : nullptr;
    a.pe_w = s.pe ? pe_w_base : nullptr;
    a.pe_b = s.pe ? pe_b_base : nullptr;
    a.mask = s.mask_heads > 0 ? mask_base : nullptr;
    a.mask_heads = std::max(s.mask_heads, 1);
    a.blank_k = s.blank ? bk_base : nullptr;
    a.blank_v = s.blank ? bv_base : nullptr;
    a.batch = s.B;
    a.heads = s.H;
    a.tokens = s.N;
    a.neighbours = M;
    a.head_dim = s.D;
    a.scale = 1.f / std::sqrt(static_cast<float>(s.D));
    a.dropout_p = s.dropout;
    a.seed = 77;
    return a;
  }

  ClusterAttentionView host_view() const {
    return view(qkv.data(), idx.data(), bias.data(), pos.data(), pe_w.data(), pe_b.data(),
                mask.data(), blank_k.data(), blank_v.data());
  }
};

// Every |a - b| <= tol * (1 + |b|); -inf matches -inf.
inline void expect_close(const std::vector<float>& a, const std::vector<float>& b, double tol,
                         const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) && std::isinf(b[i]) && (a[i] > 0) == (b[i] > 0)) continue;
    const double excess = std::abs(double(a[i]) - b[i]) - tol * (1 + std::abs(double(b[i])));
    if (!(excess <= worst)) {  // NaN counts as a failure
      worst = std::isnan(excess) ? INFINITY : excess;
      at = i;
    }
  }
  EXPECT_LE(worst, 0.0) << what << ": element " << at << " got " << a[at] << ", expected " << b[at]
                        << " (tol " << tol << ")";
}

// Output buffers of a fused forward + backward.
struct FusedResult {
  std::vector<float> out, lse, dq, dk, dv, dbias, dpe_w, dpe_b, dbk, dbv;
  explicit FusedResult(const FusedData& d) {
    const size_t n = d.rows() * d.s.D;
    out.resize(n);
    lse.resize(d.rows());
    dq.resize(n);
    dk.resize(n);
    dv.resize(n);
    dbias.resize(d.s.bias ? d.rows() * d.M : 0);
    dpe_w.resize(d.s.pe ? d.s.H * 5 : 0);
    dpe_b.resize(d.s.pe ? d.s.H : 0);
    dbk.resize(d.s.blank ? d.s.H * d.s.D : 0);
    dbv.resize(d.s.blank ? d.s.H * d.s.D : 0);
  }
  void expect_close_to(const FusedResult& ref, const std::string& what) const {
    testing::expect_close(out, ref.out, 1e-4, what + " out");
    testing::expect_close(lse, ref.lse, 1e-4, what + " lse");
    testing::expect_close(dq, ref.dq, 1e-3, what + " dq");
    testing::expect_close(dk, ref.dk, 1e-3, what + " dk");
    testing::expect_close(dv, ref.dv, 1e-3, what + " dv");
    testing::expect_close(dbias, ref.dbias, 1e-3, what + " dbias");
    testing::expect_close(dpe_w, ref.dpe_w, 1e-3, what + " dpe_w");
    testing::expect_close(dpe_b, ref.dpe_b, 1e-3, what + " dpe_b");
    testing::expect_close(dbk, ref.dbk, 1e-3, what + " dblank_k");
    testing::expect_close(dbv, ref.dbv, 1e-3, what + " dblank_v");
  }
};

inline ClusterAttentionGrads grads_of(FusedResult& r, const float* dout) {
  ClusterAttentionGrads g;
  g.dout = dout;
  g.dq = r.dq.data();
  g.dk = r.dk.data();
  g.dv = r.dv.data();
  g.dbias = r.dbias.empty() ? nullptr : r.dbias.data();
  g.dpe_w = r.dpe_w.empty() ? nullptr : r.dpe_w.data();
  g.dpe_b = r.dpe_b.empty() ? nullptr : r.dpe_b.data();
  g.dblank_k = r.dbk.empty() ? nullptr : r.dbk.data();
  g.dblank_v = r.dbv.empty() ? nullptr : r.dbv.data();
  return g;
}

// Forward + backward with the fp64 reference on the host.
inline FusedResult run_reference(const FusedData& d) {
  FusedResult r(d);
  auto a = d.host_view();
  a.out = r.out.data();
  a.lse = r.lse.data();
  cluster_attention_fwd_ref(a);
  cluster_attention_bwd_ref(a, grads_of(r, d.dout.data()));
  return r;
}

// The edge cases of the issue, for both the CPU core test and the CUDA test.
inline std::vector<FusedSpec> fused_specs() {
  std::vector<FusedSpec> v = {
      {.name = "small B1 N64 C8 H1 M32",
       .B = 1,
       .H = 1,
       .N = 64,
       .M = 32,
       .D = 8,
       .bias = true,
       .blank = true,
       .mask_heads = 1},
      {.name = "medium B16 N128 C16 H2 M48",
       .B = 16,
       .H = 2,
       .N = 128,
       .M = 48,
       .D = 8,
       .pe = true,
       .blank = true,
       .strided = true,
       .mask_heads = 1},
      // The large configuration (B32 N256 C256 H8 M64) on 2 batches: the fp64 reference is the
      // slow part, every other dimension is kept.
      {.name = "large (2 batches)",
       .B = 2,
       .H = 8,
       .N = 256,
       .M = 64,
       .D = 32,
       .pe = true,
       .blank = true,
       .mask_heads = 1},
      {.name = "N not multiple of 8", .B = 3, .H = 2, .N = 13, .M = 5, .D = 8, .blank = true},
      {.name = "M = 1", .B = 2, .H = 2, .N = 9, .M = 1, .D = 8, .bias = true},
      {.name = "M >= N", .B = 2, .H = 1, .N = 7, .M = 12, .D = 8, .pe = true},
      {.name = "duplicates",
       .B = 2,
       .H = 3,
       .N = 11,
       .M = 6,
       .D = 8,
       .blank = true,
       .duplicates = true},
      {.name = "masked rows",
       .B = 2,
       .H = 2,
       .N = 10,
       .M = 4,
       .D = 8,
       .bias = true,
       .mask_heads = 2,
       .masked_rows = true},
      {.name = "masked rows + blank",
       .B = 2,
       .H = 2,
       .N = 10,
       .M = 4,
       .D = 8,
       .blank = true,
       .mask_heads = 1,
       .masked_rows = true},
      {.name = "B = 0", .B = 0, .H = 2, .N = 8, .M = 3, .D = 8, .blank = true},
      {.name = "N = 1", .B = 2, .H = 2, .N = 1, .M = 3, .D = 8, .pe = true, .blank = true},
      {.name = "strided", .B = 2, .H = 3, .N = 10, .M = 4, .D = 24, .pe = true, .strided = true},
      {.name = "global",
       .B = 2,
       .H = 2,
       .N = 10,
       .D = 8,
       .pe = true,
       .blank = true,
       .global = true,
       .mask_heads = 1},
      {.name = "dropout",
       .B = 2,
       .H = 2,
       .N = 16,
       .M = 8,
       .D = 8,
       .bias = true,
       .pe = true,
       .blank = true,
       .dropout = 0.3f},
      // Blocks of eight neighbours plus a tail, with every logit term and dropout: the vector
      // path (head_dim 16) and the generic one (head_dim 12).
      {.name = "M 19 head_dim 16 dropout",
       .B = 2,
       .H = 3,
       .N = 23,
       .M = 19,
       .D = 16,
       .bias = true,
       .pe = true,
       .blank = true,
       .mask_heads = 3,
       .duplicates = true,
       .dropout = 0.2f},
      {.name = "M 19 head_dim 12 dropout",
       .B = 2,
       .H = 2,
       .N = 21,
       .M = 19,
       .D = 12,
       .pe = true,
       .blank = true,
       .mask_heads = 1,
       .dropout = 0.25f},
  };
  for (int d : {24, 32, 64, 128}) {
    v.push_back({.name = "head_dim " + std::to_string(d),
                 .B = 2,
                 .H = 2,
                 .N = 12,
                 .M = 5,
                 .D = d,
                 .bias = true,
                 .blank = true});
  }
  return v;
}

}  // namespace tessera::kernels::testing
