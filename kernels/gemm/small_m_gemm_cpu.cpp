#include "kernels/gemm/small_m_gemm_cpu.h"

#include <omp.h>

#include <algorithm>

#include "kernels/common/vec16.h"

namespace tessera::kernels {

namespace {

using vec::load16;
using vec::store16;
using vec::Vec16;

constexpr int kPanel = 32;  // columns of C per register tile (two vectors)
constexpr int kRows = 8;    // rows of C per register tile
constexpr int kAhead = 12;  // rows of B prefetched ahead

// C[r0 .. r0+R, n0 .. n0+32) for R rows: 2R vector accumulators, one broadcast of A per row and
// two vector loads of B per k.
template <int R>
__attribute__((always_inline)) inline void tile32(const float* a, int64_t lda, const float* b,
                                                  int64_t ldb, const float* bias, float* c,
                                                  int64_t ldc, int64_t k) {
  Vec16 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec16{};
  for (int64_t p = 0; p < k; ++p) {
    // The rows of B are far apart (a whole weight row): the hardware prefetcher does not follow,
    // so the rows a few steps ahead are requested here (they come from memory for the first tile
    // of a panel, from cache for the others).
    __builtin_prefetch(b + (p + kAhead) * ldb, 0, 3);
    __builtin_prefetch(b + (p + kAhead) * ldb + 16, 0, 3);
    const Vec16 b0 = load16(b + p * ldb), b1 = load16(b + p * ldb + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float x = a[r * lda + p];
      acc[r][0] += x * b0;
      acc[r][1] += x * b1;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (bias != nullptr) {
      acc[r][0] += load16(bias);
      acc[r][1] += load16(bias + 16);
    }
    store16(c + r * ldc, acc[r][0]);
    store16(c + r * ldc + 16, acc[r][1]);
  }
}

// The same for a column tail narrower than 32: plain loops (k outermost per element keeps the
// sum order of the vector tiles).
void tail_cols(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias,
               float* c, int64_t ldc, int64_t m, int64_t cols, int64_t k) {
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      float s = 0.0f;
      for (int64_t p = 0; p < k; ++p) s += a[r * lda + p] * b[p * ldb + j];
      c[r * ldc + j] = bias != nullptr ? s + bias[j] : s;
    }
  }
}

TESSERA_CPU_TARGET_CLONES void panels(const float* a, int64_t lda, const float* b, int64_t ldb,
                                      const float* bias, float* c, int64_t ldc, int64_t m,
                                      int64_t k, int64_t p0, int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel;
    const float* bp = b + n0;
    const float* biasp = bias != nullptr ? bias + n0 : nullptr;
    int64_t r = 0;
    for (; r + kRows <= m; r += kRows) {
      tile32<kRows>(a + r * lda, lda, bp, ldb, biasp, c + r * ldc + n0, ldc, k);
    }
    switch (m - r) {
#define TESSERA_TILE_CASE(R)                                               \
  case R:                                                                  \
    tile32<R>(a + r * lda, lda, bp, ldb, biasp, c + r * ldc + n0, ldc, k); \
    break;
      TESSERA_TILE_CASE(7)
      TESSERA_TILE_CASE(6)
      TESSERA_TILE_CASE(5)
      TESSERA_TILE_CASE(4)
      TESSERA_TILE_CASE(3)
      TESSERA_TILE_CASE(2)
      TESSERA_TILE_CASE(1)
#undef TESSERA_TILE_CASE
      default:
        break;
    }
  }
}

}  // namespace

void small_m_gemm_cpu(const float* a, int64_t lda, const float* b, int64_t ldb, const float* bias,
                      float* c, int64_t ldc, int64_t m, int64_t n, int64_t k) {
  if (m <= 0 || n <= 0) return;
  const int64_t full = n / kPanel;
  const int64_t rest = n - full * kPanel;
  // Enough columns per thread to pay for a parallel region.
  const bool parallel = full >= 8 && m * n * k >= (int64_t{1} << 20);
#pragma omp parallel if (parallel)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    panels(a, lda, b, ldb, bias, c, ldc, m, k, full * t / nt, full * (t + 1) / nt);
  }
  if (rest > 0) {
    const int64_t n0 = full * kPanel;
    tail_cols(a, lda, b + n0, ldb, bias != nullptr ? bias + n0 : nullptr, c + n0, ldc, m, rest, k);
  }
}

}  // namespace tessera::kernels
