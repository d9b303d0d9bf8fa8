// 16-lane float vectors (GCC vector extensions) for the sparse-decode CPU code: one AVX-512
// register, two AVX ones or four SSE ones, picked per function by TESSERA_CPU_TARGET_CLONES. Row
// dot products share each load of the common vector across several rows, so the inner loops are
// limited by loads, not by one accumulator's latency.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/common/vec16.h"

#define TESSERA_SPARSE_INLINE __attribute__((always_inline)) inline

namespace tessera::kernels::sparse_simd {

using vec::hsum;
using vec::load16;
using vec::store16;
using vec::Vec16;

// out[r] = rows_r . x for R rows (row r at rows + r * ld): x is loaded once for all of them.
template <int R>
TESSERA_SPARSE_INLINE void dot_rows(const float* rows, int64_t ld, const float* x, int d,
                                    float* out) {
  Vec16 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec16{};
  const int d16 = d & ~15;
  for (int i = 0; i < d16; i += 16) {
    const Vec16 xv = load16(x + i);
    for (int r = 0; r < R; ++r) acc[r] += load16(rows + r * ld + i) * xv;
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.0f;
    for (int i = d16; i < d; ++i) tail += rows[r * ld + i] * x[i];
    out[r] = hsum(acc[r]) + tail;
  }
}

// out[r] = rows_r . x for any number of rows, four at a time.
TESSERA_SPARSE_INLINE void dot_many(const float* rows, int64_t ld, int n, const float* x, int d,
                                    float* out) {
  int r = 0;
  for (; r + 4 <= n; r += 4) dot_rows<4>(rows + r * ld, ld, x, d, out + r);
  switch (n - r) {
    case 3:
      dot_rows<3>(rows + r * ld, ld, x, d, out + r);
      break;
    case 2:
      dot_rows<2>(rows + r * ld, ld, x, d, out + r);
      break;
    case 1:
      dot_rows<1>(rows + r * ld, ld, x, d, out + r);
      break;
  }
}

}  // namespace tessera::kernels::sparse_simd
