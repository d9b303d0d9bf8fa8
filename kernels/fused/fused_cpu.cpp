#include "kernels/fused/fused_cpu.h"

#include <omp.h>

#include <cmath>

#include "kernels/common/vec16.h"

namespace tessera::kernels {

namespace {

using vec::hsum;
using vec::load16;
using vec::splat;
using vec::store16;
using vec::Vec16;
using vec::vexp;

// Below this many elements a call runs on the calling thread: a parallel region costs more.
constexpr int64_t kParallelElems = 1 << 16;

TESSERA_CPU_TARGET_CLONES void rms_norm_rows(const float* x, const float* w, float* out, int64_t r0,
                                             int64_t r1, int64_t n, float eps) {
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * n;
    float* o = out + r * n;
    Vec16 acc = Vec16{};
    for (int64_t j = 0; j < n16; j += 16) {
      const Vec16 v = load16(xr + j);
      acc += v * v;
    }
    float ss = hsum(acc);
    for (int64_t j = n16; j < n; ++j) ss += xr[j] * xr[j];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int64_t j = 0; j < n16; j += 16) store16(o + j, load16(xr + j) * inv * load16(w + j));
    for (int64_t j = n16; j < n; ++j) o[j] = xr[j] * inv * w[j];
  }
}

TESSERA_CPU_TARGET_CLONES void silu_mul_rows(const float* in, float* out, int64_t r0, int64_t r1,
                                             int64_t n) {
  const int64_t n16 = n & ~int64_t{15};
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = in + r * 2 * n;
    const float* u = g + n;
    float* o = out + r * n;
    for (int64_t j = 0; j < n16; j += 16) {
      const Vec16 gv = load16(g + j);
      store16(o + j, gv / (1.0f + vexp(-gv)) * load16(u + j));
    }
    for (int64_t j = n16; j < n; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
  }
}

// Runs f(r0, r1) over [0, rows), split among the OpenMP threads when rows * elems_per_row is
// large enough.
template <typename F>
void for_rows(int64_t rows, int64_t elems_per_row, F f) {
  if (rows * elems_per_row < kParallelElems) {
    f(int64_t{0}, rows);
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    f(rows * t / nt, rows * (t + 1) / nt);
  }
}

}  // namespace

void rms_norm_cpu(const float* x, const float* w, float* out, int64_t rows, int64_t n, float eps) {
  for_rows(rows, n, [&](int64_t r0, int64_t r1) { rms_norm_rows(x, w, out, r0, r1, n, eps); });
}

void silu_mul_cpu(const float* in, float* out, int64_t rows, int64_t n) {
  for_rows(rows, 3 * n, [&](int64_t r0, int64_t r1) { silu_mul_rows(in, out, r0, r1, n); });
}

}  // namespace tessera::kernels
