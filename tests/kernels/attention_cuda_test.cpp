// The CUDA attention kernel against the fp64 CPU reference on the very same view (device copies of
// the inputs). Compiled wherever nvcc exists; skips on machines without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/attention/attention.h"

namespace tessera::kernels {
namespace {

template <typename T>
T* to_device(const std::vector<T>& host) {
  T* d = nullptr;
  if (cudaMalloc(reinterpret_cast<void**>(&d), std::max<size_t>(1, host.size()) * sizeof(T)) !=
      cudaSuccess)
    return nullptr;
  cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

struct Shape {
  int b, t, s, hq, hkv, d;
  int64_t window;
};

class AttentionCuda : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionCuda, MatchesReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device";
  }
  const Shape c = GetParam();
  std::mt19937 rng(c.b * 7 + c.s);
  std::normal_distribution<float> normal;
  std::vector<float> q(size_t(c.b) * c.t * c.hq * c.d), k(size_t(c.b) * c.s * c.hkv * c.d),
      v(k.size());
  for (auto* vec : {&q, &k, &v}) {
    for (auto& x : *vec) x = normal(rng);
  }
  std::vector<int64_t> qp(size_t(c.b) * c.t), kp(size_t(c.b) * c.s);
  for (int b = 0; b < c.b; ++b) {
    for (int i = 0; i < c.s; ++i) kp[b * c.s + i] = (i * 7 + b) % c.s;  // a permutation per row
    kp[b * c.s] = -1;                                                   // one empty slot
    for (int i = 0; i < c.t; ++i) qp[b * c.t + i] = c.s - c.t + i;
  }
  AttentionView view;
  view.batch = c.b;
  view.q_len = c.t;
  view.kv_len = c.s;
  view.num_q_heads = c.hq;
  view.num_kv_heads = c.hkv;
  view.head_dim = c.d;
  view.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  view.window = c.window;
  const int64_t qs[3] = {int64_t(c.t) * c.hq * c.d, int64_t(c.hq) * c.d, c.d};
  const int64_t ks[3] = {int64_t(c.s) * c.hkv * c.d, int64_t(c.hkv) * c.d, c.d};
  std::copy(qs, qs + 3, view.q_stride);
  std::copy(ks, ks + 3, view.k_stride);
  std::copy(ks, ks + 3, view.v_stride);

  std::vector<float> ref_out(q.size()), ref_lse(size_t(c.b) * c.hq * c.t);
  AttentionView host = view;
  host.q = q.data();
  host.k = k.data();
  host.v = v.data();
  host.q_pos = qp.data();
  host.k_pos = kp.data();
  host.out = ref_out.data();
  host.lse = ref_lse.data();
  attention_ref(host);

  AttentionView dev = view;
  float *dq = to_device(q), *dk = to_device(k), *dv = to_device(v);
  int64_t *dqp = to_device(qp), *dkp = to_device(kp);
  // Outputs start as NaN (not zeros, not the reference), so an element the kernel does not write,
  // such as the zeros and -inf of a query that sees no key, fails the comparison.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float *dout = to_device(std::vector<float>(q.size(), nan)),
        *dlse = to_device(std::vector<float>(ref_lse.size(), nan));
  ASSERT_TRUE(dq && dk && dv && dqp && dkp && dout && dlse);
  dev.q = dq;
  dev.k = dk;
  dev.v = dv;
  dev.q_pos = dqp;
  dev.k_pos = dkp;
  dev.out = dout;
  dev.lse = dlse;
  ASSERT_EQ(attention_cuda(dev, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out(q.size()), lse(ref_lse.size());
  cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], ref_out[i], 1e-4 + 1e-4 * std::abs(ref_out[i])) << "out[" << i << "]";
  }
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref_lse[i])) {
      EXPECT_EQ(lse[i], ref_lse[i]) << "lse[" << i << "]";
    } else {
      ASSERT_NEAR(lse[i], ref_lse[i], 1e-4 + 1e-4 * std::abs(ref_lse[i]));
    }
  }
  for (void* p : {static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv),
                  static_cast<void*>(dqp), static_cast<void*>(dkp), static_cast<void*>(dout),
                  static_cast<void*>(dlse)}) {
    cudaFree(p);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCuda,
                         ::testing::Values(Shape{1, 1, 1, 1, 1, 8, 0},
                                           Shape{2, 3, 200, 8, 2, 24, 0},
                                           Shape{3, 5, 300, 4, 4, 128, 33},
                                           Shape{1, 7, 129, 6, 3, 20, 1},
                                           // head_dim above the 128 threads: strided dim loops
                                           Shape{2, 4, 150, 4, 2, 200, 0}));

}  // namespace
}  // namespace tessera::kernels
