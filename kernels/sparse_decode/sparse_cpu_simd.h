// 16-lane float vectors (GCC vector extensions) for the sparse-decode CPU code: one AVX-512
// register, two AVX ones or four SSE ones, picked per function by TESSERA_SPARSE_CLONES. Row dot
// products share each load of the common vector across several rows, so the inner loops are
// limited by loads, not by one accumulator's latency.
#pragma once

#include <cstdint>
#include <cstring>

// Not under ThreadSanitizer: the clones' ifunc resolver runs while the dynamic loader relocates
// the program, before TSan's runtime is set up, and TSan instruments it (a crash at start-up).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(__SANITIZE_THREAD__)
#define TESSERA_SPARSE_CLONES \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define TESSERA_SPARSE_CLONES
#endif
#define TESSERA_SPARSE_INLINE __attribute__((always_inline)) inline

namespace tessera::kernels::sparse_simd {

typedef float Vec16 __attribute__((vector_size(64)));

TESSERA_SPARSE_INLINE Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TESSERA_SPARSE_INLINE void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof(v)); }
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));

// Horizontal sum as a tree of vector halves (a plain loop over the lanes compiles to 16 dependent
// scalar adds).
TESSERA_SPARSE_INLINE float hsum(Vec16 v) {
  Vec8 a, b;
  std::memcpy(&a, &v, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
  const Vec8 s8 = a + b;
  Vec4 c, d;
  std::memcpy(&c, &s8, sizeof(c));
  std::memcpy(&d, reinterpret_cast<const char*>(&s8) + sizeof(c), sizeof(d));
  const Vec4 s4 = c + d;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

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
