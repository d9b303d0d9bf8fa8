// The CUDA varlen attention kernel against the fp64 CPU reference on the very same view (device
// copies of the inputs): windows, grouped heads, odd head dims, empty sequences. Compiled wherever
// nvcc exists; skips on machines without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/varlen_attention/varlen_attention.h"

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

struct Case {
  std::vector<int32_t> lens;
  int hq, hkv, d, window;
};

class VarlenAttentionCuda : public ::testing::TestWithParam<Case> {};

TEST_P(VarlenAttentionCuda, MatchesReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device";
  }
  const Case c = GetParam();
  std::vector<int32_t> cu{0};
  for (auto l : c.lens) cu.push_back(cu.back() + l);
  const int64_t total = cu.back();
  std::mt19937 rng(11);
  std::normal_distribution<float> dist;
  auto fill = [&](int64_t n) {
    std::vector<float> x(n);
    for (auto& e : x) e = dist(rng);
    return x;
  };
  auto q = fill(total * c.hq * c.d), k = fill(total * c.hkv * c.d), v = fill(total * c.hkv * c.d);
  std::vector<float> out_ref(total * c.hq * c.d), lse_ref(total * c.hq);
  VarlenAttentionView view;
  view.q = q.data();
  view.k = k.data();
  view.v = v.data();
  view.cu_seqlens = cu.data();
  view.out = out_ref.data();
  view.lse = lse_ref.data();
  view.q_stride[0] = c.hq * c.d;
  view.q_stride[1] = c.d;
  view.k_stride[0] = view.v_stride[0] = c.hkv * c.d;
  view.k_stride[1] = view.v_stride[1] = c.d;
  view.total = total;
  view.num_seqs = static_cast<int>(c.lens.size());
  view.num_q_heads = c.hq;
  view.num_kv_heads = c.hkv;
  view.head_dim = c.d;
  view.scale = 1.f / std::sqrt(static_cast<float>(c.d));
  view.window = c.window;
  varlen_attention_ref(view);

  std::vector<float> out_gpu(out_ref.size()), lse_gpu(lse_ref.size());
  float* dq = to_device(q);
  float* dk = to_device(k);
  float* dv = to_device(v);
  int32_t* dcu = to_device(cu);
  float* dout = to_device(out_gpu);
  float* dlse = to_device(lse_gpu);
  view.q = dq;
  view.k = dk;
  view.v = dv;
  view.cu_seqlens = dcu;
  view.out = dout;
  view.lse = dlse;
  ASSERT_EQ(varlen_attention_cuda(view, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaMemcpy(out_gpu.data(), dout, out_gpu.size() * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(lse_gpu.data(), dlse, lse_gpu.size() * sizeof(float), cudaMemcpyDeviceToHost);
  for (void* p : {static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv),
                  static_cast<void*>(dcu), static_cast<void*>(dout), static_cast<void*>(dlse)}) {
    cudaFree(p);
  }
  double worst = 0;
  for (size_t i = 0; i < out_ref.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(out_ref[i] - out_gpu[i])));
  }
  for (size_t i = 0; i < lse_ref.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::fabs(lse_ref[i] - lse_gpu[i])));
  }
  EXPECT_LT(worst, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, VarlenAttentionCuda,
                         ::testing::Values(Case{{5, 1, 17, 0, 33}, 4, 4, 32, -1},
                                           Case{{300, 3, 129}, 2, 2, 16, 64},
                                           Case{{70, 40}, 6, 2, 7, 0}, Case{{1}, 3, 1, 80, 5}));

}  // namespace
}  // namespace tessera::kernels
