// Torch-free checks of the fast CPU cluster attention kernels against the fp64 reference on the
// very same views. Kept free of torch so that `scripts/sanitize.sh address` can build and run it
// under AddressSanitizer in seconds.
#include <gtest/gtest.h>

#include <random>

#include "kernels/cluster_attention/cluster_neighbors.h"
#include "kernels/cluster_attention/cluster_primitives.h"
#include "tests/kernels/cluster_attention/cluster_test_data.h"

namespace tessera::kernels {
namespace {

using testing::FusedData;
using testing::FusedResult;

TEST(ClusterCore, FastCpuMatchesReference) {
  for (const auto& spec : testing::fused_specs()) {
    SCOPED_TRACE(spec.name);
    FusedData d(spec);
    FusedResult ref = testing::run_reference(d);
    for (bool det : {false, true}) {
      for (bool saved : {false, true}) {  // the backward recomputes P, or reads the forward's
        FusedResult r(d);
        auto a = d.host_view();
        a.out = r.out.data();
        a.lse = r.lse.data();
        std::vector<float> weights(
            saved ? r.lse.size() * (spec.global ? spec.N + 1 : spec.M + 1) : 0, -1.f);
        a.weights = saved ? weights.data() : nullptr;
        cluster_attention_fwd_cpu(a);
        cluster_attention_bwd_cpu(a, testing::grads_of(r, d.dout.data()), det);
        r.expect_close_to(
            ref, std::string(det ? "cpu deterministic" : "cpu") + (saved ? " saved weights" : ""));
      }
    }
  }
}

TEST(ClusterCore, InverseIndexListsEverySlotOnceInOrder) {
  const int B = 3, N = 11, M = 7;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> pick(0, N - 1);
  std::vector<int64_t> idx(B * N * M), offsets(B * (N + 1)), entries(B * N * M);
  for (auto& j : idx) j = pick(rng);
  cluster_inverse_index_cpu(idx.data(), B, N, M, offsets.data(), entries.data());
  for (int b = 0; b < B; ++b) {
    EXPECT_EQ(offsets[b * (N + 1) + N], N * M);
    for (int j = 0; j < N; ++j) {
      for (int64_t e = offsets[b * (N + 1) + j]; e < offsets[b * (N + 1) + j + 1]; ++e) {
        const int64_t slot = entries[b * N * M + e];
        EXPECT_EQ(idx[b * N * M + slot], j);
        if (e > offsets[b * (N + 1) + j]) EXPECT_LT(entries[b * N * M + e - 1], slot);
      }
    }
  }
}

TEST(ClusterCore, PrimitivesFastMatchReference) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  auto randn = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = normal(rng);
    return v;
  };
  for (ClusterDims d : {ClusterDims{1, 1, 64, 32, 8}, ClusterDims{3, 2, 13, 20, 24},
                        ClusterDims{2, 3, 9, 1, 128}}) {
    const size_t nd = size_t(d.batch) * d.heads * d.tokens * d.head_dim;
    const size_t nm = size_t(d.batch) * d.heads * d.tokens * d.neighbours;
    auto q = randn(nd), k = randn(nd), attn = randn(nm), gq = randn(nm), go = randn(nd);
    std::vector<int64_t> idx(size_t(d.batch) * d.tokens * d.neighbours);
    std::uniform_int_distribution<int64_t> pick(0, d.tokens - 1);
    for (auto& j : idx) j = pick(rng);
    std::vector<float> a1(nm), a2(nm), o1(nd), o2(nd), dq1(nd), dq2(nd), dk1(nd), dk2(nd);
    cluster_qk_fwd_ref(d, q.data(), k.data(), idx.data(), a1.data());
    cluster_qk_fwd_cpu(d, q.data(), k.data(), idx.data(), a2.data());
    testing::expect_close(a2, a1, 1e-4, "qk");
    cluster_qk_bwd_ref(d, q.data(), k.data(), idx.data(), gq.data(), dq1.data(), dk1.data());
    cluster_qk_bwd_cpu(d, q.data(), k.data(), idx.data(), gq.data(), dq2.data(), dk2.data());
    testing::expect_close(dq2, dq1, 1e-3, "qk dq");
    testing::expect_close(dk2, dk1, 1e-3, "qk dk");
    cluster_av_fwd_ref(d, attn.data(), k.data(), idx.data(), o1.data());
    cluster_av_fwd_cpu(d, attn.data(), k.data(), idx.data(), o2.data());
    testing::expect_close(o2, o1, 1e-4, "av");
    cluster_av_bwd_ref(d, attn.data(), k.data(), idx.data(), go.data(), a1.data(), dk1.data());
    cluster_av_bwd_cpu(d, attn.data(), k.data(), idx.data(), go.data(), a2.data(), dk2.data());
    testing::expect_close(a2, a1, 1e-3, "av dattn");
    testing::expect_close(dk2, dk1, 1e-3, "av dv");
  }
  ClusterWfDims w{2, 5, 13, 20, 3, 7};
  const size_t nw = size_t(w.batch) * w.queries * w.neighbours * w.inner;
  const size_t nf = size_t(w.batch) * w.tokens * w.channels;
  const size_t no = size_t(w.batch) * w.queries * w.inner * w.channels;
  auto wt = randn(nw), f = randn(nf), go = randn(no);
  std::vector<int64_t> idx(size_t(w.batch) * w.queries * w.neighbours);
  std::uniform_int_distribution<int64_t> pick(0, w.tokens - 1);
  for (auto& j : idx) j = pick(rng);
  std::vector<float> o1(no), o2(no), dw1(nw), dw2(nw), df1(nf), df2(nf);
  cluster_wf_fwd_ref(w, wt.data(), f.data(), idx.data(), o1.data());
  cluster_wf_fwd_cpu(w, wt.data(), f.data(), idx.data(), o2.data());
  testing::expect_close(o2, o1, 1e-4, "wf");
  cluster_wf_bwd_ref(w, wt.data(), f.data(), idx.data(), go.data(), dw1.data(), df1.data());
  cluster_wf_bwd_cpu(w, wt.data(), f.data(), idx.data(), go.data(), dw2.data(), df2.data());
  testing::expect_close(dw2, dw1, 1e-3, "wf dw");
  testing::expect_close(df2, df1, 1e-3, "wf df");
}

TEST(ClusterCore, NeighboursCoverEveryToken) {
  const int B = 2, N = 37, S = 8, K = (N + S - 1) / S, k = 3;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.f, 10.f);
  std::vector<float> pos(B * N * 2), centroids(B * K * 2);
  for (auto& p : pos) p = u(rng);
  std::vector<int64_t> members(B * K * S), cluster_of(B * N), nearest(B * K * k),
      idx(B * N * k * S);
  std::vector<uint8_t> member_mask(B * K * S), mask(B * N * k * S);
  sfc_clusters_cpu({pos.data(), members.data(), member_mask.data(), cluster_of.data(),
                    centroids.data(), B, N, S});
  knn_clusters_cpu({centroids.data(), nearest.data(), B, K, k});
  gather_neighbors_cpu({members.data(), member_mask.data(), cluster_of.data(), nearest.data(),
                        idx.data(), mask.data(), B, N, K, S, k});
  for (int b = 0; b < B; ++b) {
    std::vector<int> seen(N, 0);
    for (int s = 0; s < K * S; ++s) {
      if (member_mask[b * K * S + s]) ++seen[members[b * K * S + s]];
    }
    for (int n = 0; n < N; ++n) EXPECT_EQ(seen[n], 1);
    for (int c = 0; c < K; ++c) EXPECT_EQ(nearest[(b * K + c) * k], c) << "own cluster first";
  }
  for (size_t i = 0; i < idx.size(); ++i) EXPECT_TRUE(idx[i] >= 0 && idx[i] < N);
}

}  // namespace
}  // namespace tessera::kernels
