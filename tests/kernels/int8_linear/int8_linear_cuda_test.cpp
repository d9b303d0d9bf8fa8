// The CUDA int8 quantiser and linear against the CPU reference on the very same views (device
// copies of the inputs), decode- and prefill-shaped, k a multiple of 4 and not. Compiled wherever
// nvcc exists; skips on machines without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/int8_linear/int8_linear.h"

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

template <typename T>
std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

struct Shape {
  int64_t m, n, k;
};

class Int8LinearCuda : public ::testing::TestWithParam<Shape> {};

TEST_P(Int8LinearCuda, MatchesReference) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    GTEST_SKIP() << "no CUDA device";
  }
  const Shape sh = GetParam();
  std::mt19937 rng(static_cast<unsigned>(sh.m * 31 + sh.k));
  std::normal_distribution<float> normal;
  std::vector<float> w(sh.n * sh.k), x(sh.m * sh.k), bias(sh.n);
  for (auto* v : {&w, &x, &bias}) {
    for (auto& e : *v) e = normal(rng);
  }
  // Quantiser: device == host reference, bit for bit.
  std::vector<int8_t> q_ref(w.size());
  std::vector<float> s_ref(sh.n);
  Int8QuantiseView hq{w.data(), q_ref.data(), s_ref.data(), sh.n, sh.k, DType::kF32};
  int8_quantise_ref(hq);
  auto* dw = to_device(w);
  auto* dq = to_device(std::vector<int8_t>(w.size()));
  auto* ds = to_device(std::vector<float>(sh.n));
  ASSERT_TRUE(dw && dq && ds);
  Int8QuantiseView dqv{dw, dq, ds, sh.n, sh.k, DType::kF32};
  ASSERT_EQ(int8_quantise_cuda(dqv, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(to_host(dq, w.size()), q_ref);
  EXPECT_EQ(to_host(ds, s_ref.size()), s_ref);
  // Linear.
  std::vector<float> y_ref(sh.m * sh.n);
  Int8LinearView hv;
  hv.x = x.data();
  hv.w = q_ref.data();
  hv.scale = s_ref.data();
  hv.bias = bias.data();
  hv.y = y_ref.data();
  hv.x_row_stride = sh.k;
  hv.y_row_stride = sh.n;
  hv.m = sh.m;
  hv.n = sh.n;
  hv.k = sh.k;
  int8_linear_ref(hv);
  auto* dx = to_device(x);
  auto* db = to_device(bias);
  auto* dy = to_device(std::vector<float>(y_ref.size(), NAN));
  ASSERT_TRUE(dx && db && dy);
  Int8LinearView dv = hv;
  dv.x = dx;
  dv.w = dq;
  dv.scale = ds;
  dv.bias = db;
  dv.y = dy;
  ASSERT_EQ(int8_linear_cuda(dv, nullptr), 0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto y = to_host(dy, y_ref.size());
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_NEAR(y[i], y_ref[i], 1e-4 * (std::fabs(y_ref[i]) + 1.0f)) << "element " << i;
  }
  for (void* p : {static_cast<void*>(dw), static_cast<void*>(dq), static_cast<void*>(ds),
                  static_cast<void*>(dx), static_cast<void*>(db), static_cast<void*>(dy)}) {
    cudaFree(p);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Int8LinearCuda,
                         ::testing::Values(Shape{1, 67, 256}, Shape{3, 64, 257},
                                           Shape{16, 130, 100}, Shape{70, 33, 515}));

}  // namespace
}  // namespace tessera::kernels
