// CUDA cluster attention kernels against the fp64 CPU reference on the same views (inputs built on
// the host, copied to the device). Skips without a CUDA device; labelled `gpu` in ctest.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/cluster_attention/cluster_neighbors.h"
#include "kernels/cluster_attention/cluster_primitives.h"
#include "tests/kernels/cluster_attention/cluster_test_data.h"

namespace tessera::kernels {
namespace {

using testing::FusedData;
using testing::FusedResult;

bool have_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_device()) GTEST_SKIP() << "no CUDA device"

// A device copy of a host vector, or storage of n elements filled with 0xff bytes (NaN floats, -1
// integers): every output is written over, so an element a kernel forgets to write (an empty row,
// a zero-size dimension) shows up instead of passing as a zero.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0) {
      EXPECT_EQ(cudaMalloc(&p_, n_ * sizeof(T)), cudaSuccess);
      cudaMemset(p_, 0xff, n_ * sizeof(T));
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    if (n_ > 0) cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return n_ > 0 ? p_ : nullptr; }
  std::vector<T> host() const {
    std::vector<T> v(n_);
    if (n_ > 0) cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Runs forward + backward on the device and returns the results on the host.
FusedResult run_cuda(const FusedData& d, bool deterministic) {
  DeviceBuffer<float> qkv(d.qkv), bias(d.bias), pos(d.pos), pe_w(d.pe_w), pe_b(d.pe_b),
      bk(d.blank_k), bv(d.blank_v), dout(d.dout);
  DeviceBuffer<int64_t> idx(d.idx);
  DeviceBuffer<uint8_t> mask(d.mask);
  FusedResult host(d);
  DeviceBuffer<float> out(host.out.size()), lse(host.lse.size()), dq(host.dq.size()),
      dk(host.dk.size()), dv(host.dv.size()), dbias(host.dbias.size()), dpe_w(host.dpe_w.size()),
      dpe_b(host.dpe_b.size()), dbk(host.dbk.size()), dbv(host.dbv.size());
  auto a = d.view(qkv.get(), idx.get(), bias.get(), pos.get(), pe_w.get(), pe_b.get(), mask.get(),
                  bk.get(), bv.get());
  a.out = out.get();
  a.lse = lse.get();
  EXPECT_EQ(cluster_attention_fwd_cuda(a, nullptr), 0);
  ClusterAttentionGrads g{dout.get(),  dq.get(),    dk.get(),  dv.get(), dbias.get(),
                          dpe_w.get(), dpe_b.get(), dbk.get(), dbv.get()};
  DeviceBuffer<char> ws(static_cast<size_t>(cluster_attention_bwd_workspace(a, deterministic)));
  EXPECT_EQ(cluster_attention_bwd_cuda(a, g, deterministic, ws.get(), nullptr), 0);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  host.out = out.host();
  host.lse = lse.host();
  host.dq = dq.host();
  host.dk = dk.host();
  host.dv = dv.host();
  host.dbias = dbias.host();
  host.dpe_w = dpe_w.host();
  host.dpe_b = dpe_b.host();
  host.dbk = dbk.host();
  host.dbv = dbv.host();
  return host;
}

TEST(ClusterCuda, FusedMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (const auto& spec : testing::fused_specs()) {
    SCOPED_TRACE(spec.name);
    FusedData d(spec);
    FusedResult ref = testing::run_reference(d);
    run_cuda(d, false).expect_close_to(ref, "cuda");
    run_cuda(d, true).expect_close_to(ref, "cuda deterministic");
  }
}

TEST(ClusterCuda, DeterministicBackwardIsBitwiseReproducible) {
  SKIP_WITHOUT_GPU();
  FusedData d(
      {.B = 4, .H = 2, .N = 96, .M = 32, .D = 32, .pe = true, .blank = true, .duplicates = true});
  FusedResult a = run_cuda(d, true), b = run_cuda(d, true);
  for (auto [x, y] : {std::pair{&a.dq, &b.dq},
                      {&a.dk, &b.dk},
                      {&a.dv, &b.dv},
                      {&a.dpe_w, &b.dpe_w},
                      {&a.dbk, &b.dbk},
                      {&a.dbv, &b.dbv}}) {
    ASSERT_EQ(x->size(), y->size());
    EXPECT_EQ(std::memcmp(x->data(), y->data(), x->size() * sizeof(float)), 0);
  }
}

TEST(ClusterCuda, PrimitivesMatchReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  auto randn = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = normal(rng);
    return v;
  };
  // head_dim 0: no dq / dk / dv / out, but attn and dattn [B, H, N, M] are zeros.
  for (ClusterDims d : {ClusterDims{1, 1, 64, 32, 8}, ClusterDims{3, 2, 13, 20, 24},
                        ClusterDims{2, 8, 256, 64, 32}, ClusterDims{2, 3, 9, 4, 0}}) {
    const size_t nd = size_t(d.batch) * d.heads * d.tokens * d.head_dim;
    const size_t nm = size_t(d.batch) * d.heads * d.tokens * d.neighbours;
    auto q = randn(nd), k = randn(nd), attn = randn(nm), gq = randn(nm), go = randn(nd);
    std::vector<int64_t> idx(size_t(d.batch) * d.tokens * d.neighbours);
    std::uniform_int_distribution<int64_t> pick(0, d.tokens - 1);
    for (auto& j : idx) j = pick(rng);
    DeviceBuffer<float> q_d(q), k_d(k), attn_d(attn), gq_d(gq), go_d(go), a_d(nm), da_d(nm),
        o_d(nd), dq_d(nd), dk_d(nd);
    DeviceBuffer<int64_t> idx_d(idx);
    std::vector<float> a1(nm), o1(nd), dq1(nd), dk1(nd);
    cluster_qk_fwd_ref(d, q.data(), k.data(), idx.data(), a1.data());
    EXPECT_EQ(cluster_qk_fwd_cuda(d, q_d.get(), k_d.get(), idx_d.get(), a_d.get(), nullptr), 0);
    testing::expect_close(a_d.host(), a1, 1e-4, "qk");
    cluster_qk_bwd_ref(d, q.data(), k.data(), idx.data(), gq.data(), dq1.data(), dk1.data());
    EXPECT_EQ(cluster_qk_bwd_cuda(d, q_d.get(), k_d.get(), idx_d.get(), gq_d.get(), dq_d.get(),
                                  dk_d.get(), nullptr),
              0);
    testing::expect_close(dq_d.host(), dq1, 1e-3, "qk dq");
    testing::expect_close(dk_d.host(), dk1, 1e-3, "qk dk");
    cluster_av_fwd_ref(d, attn.data(), k.data(), idx.data(), o1.data());
    EXPECT_EQ(cluster_av_fwd_cuda(d, attn_d.get(), k_d.get(), idx_d.get(), o_d.get(), nullptr), 0);
    testing::expect_close(o_d.host(), o1, 1e-4, "av");
    cluster_av_bwd_ref(d, attn.data(), k.data(), idx.data(), go.data(), a1.data(), dk1.data());
    // dattn into a fresh buffer, so that qk's attn left in a_d cannot pass for it.
    EXPECT_EQ(cluster_av_bwd_cuda(d, attn_d.get(), k_d.get(), idx_d.get(), go_d.get(), da_d.get(),
                                  dk_d.get(), nullptr),
              0);
    testing::expect_close(da_d.host(), a1, 1e-3, "av dattn");
    testing::expect_close(dk_d.host(), dk1, 1e-3, "av dv");
  }
  ClusterWfDims w{2, 5, 13, 20, 3, 7};
  const size_t nw = size_t(w.batch) * w.queries * w.neighbours * w.inner;
  const size_t nf = size_t(w.batch) * w.tokens * w.channels;
  const size_t no = size_t(w.batch) * w.queries * w.inner * w.channels;
  auto wt = randn(nw), f = randn(nf), go = randn(no);
  std::vector<int64_t> idx(size_t(w.batch) * w.queries * w.neighbours);
  std::uniform_int_distribution<int64_t> pick(0, w.tokens - 1);
  for (auto& j : idx) j = pick(rng);
  DeviceBuffer<float> w_d(wt), f_d(f), go_d(go), o_d(no), dw_d(nw), df_d(nf);
  DeviceBuffer<int64_t> idx_d(idx);
  std::vector<float> o1(no), dw1(nw), df1(nf);
  cluster_wf_fwd_ref(w, wt.data(), f.data(), idx.data(), o1.data());
  EXPECT_EQ(cluster_wf_fwd_cuda(w, w_d.get(), f_d.get(), idx_d.get(), o_d.get(), nullptr), 0);
  testing::expect_close(o_d.host(), o1, 1e-4, "wf");
  cluster_wf_bwd_ref(w, wt.data(), f.data(), idx.data(), go.data(), dw1.data(), df1.data());
  EXPECT_EQ(cluster_wf_bwd_cuda(w, w_d.get(), f_d.get(), idx_d.get(), go_d.get(), dw_d.get(),
                                df_d.get(), nullptr),
            0);
  testing::expect_close(dw_d.host(), dw1, 1e-3, "wf dw");
  testing::expect_close(df_d.host(), df1, 1e-3, "wf df");
}

TEST(ClusterCuda, NeighboursEqualCpu) {
  SKIP_WITHOUT_GPU();
  for (auto [B, N, S, k] :
       {std::tuple{2, 64, 8, 4}, {3, 61, 8, 3}, {1, 5, 8, 1}, {2, 1000, 8, 8}}) {
    const int K = (N + S - 1) / S;
    std::mt19937 rng(N);
    std::uniform_real_distribution<float> u(0.f, 100.f);
    std::vector<float> pos(size_t(B) * N * 2);
    for (auto& p : pos) p = u(rng);
    std::vector<int64_t> members(size_t(B) * K * S), cluster_of(size_t(B) * N),
        nearest(size_t(B) * K * k), idx(size_t(B) * N * k * S);
    std::vector<uint8_t> member_mask(members.size()), mask(idx.size());
    std::vector<float> centroids(size_t(B) * K * 2);
    sfc_clusters_cpu({pos.data(), members.data(), member_mask.data(), cluster_of.data(),
                      centroids.data(), B, N, S});
    knn_clusters_cpu({centroids.data(), nearest.data(), B, K, k});
    gather_neighbors_cpu({members.data(), member_mask.data(), cluster_of.data(), nearest.data(),
                          idx.data(), mask.data(), B, N, K, S, k});

    DeviceBuffer<float> pos_d(pos), cen_d(centroids.size());
    DeviceBuffer<int64_t> mem_d(members.size()), of_d(cluster_of.size()), near_d(nearest.size()),
        idx_d(idx.size());
    DeviceBuffer<uint8_t> mm_d(member_mask.size()), mask_d(mask.size());
    SfcClusterView s{pos_d.get(), mem_d.get(), mm_d.get(), of_d.get(), cen_d.get(), B, N, S};
    DeviceBuffer<char> ws(static_cast<size_t>(sfc_clusters_workspace(s)));
    EXPECT_EQ(sfc_clusters_cuda(s, ws.get(), nullptr), 0);
    EXPECT_EQ(knn_clusters_cuda({cen_d.get(), near_d.get(), B, K, k}, nullptr), 0);
    EXPECT_EQ(gather_neighbors_cuda({mem_d.get(), mm_d.get(), of_d.get(), near_d.get(), idx_d.get(),
                                     mask_d.get(), B, N, K, S, k},
                                    nullptr),
              0);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(mem_d.host(), members);
    EXPECT_EQ(mm_d.host(), member_mask);
    EXPECT_EQ(of_d.host(), cluster_of);
    EXPECT_EQ(cen_d.host(), centroids);
    EXPECT_EQ(near_d.host(), nearest);
    EXPECT_EQ(idx_d.host(), idx);
    EXPECT_EQ(mask_d.host(), mask);
  }
}

}  // namespace
}  // namespace tessera::kernels
