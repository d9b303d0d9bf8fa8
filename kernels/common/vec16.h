// 16 floats as one GCC vector (one AVX-512 register, two AVX ones, four SSE ones) and the few
// operations the CPU kernels build on. Functions are always inlined into their callers, which are
// compiled for several x86 levels (target_clones), so each clone gets the widest instructions.
#pragma once

// The vector helpers are always inlined, so the ABI note about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <cstdint>
#include <cstring>

// Compiles a function for several x86 levels (AVX2+FMA, AVX-512), picked at load time. Not under
// ThreadSanitizer: the clones' ifunc resolver runs while the dynamic loader relocates the program,
// before TSan's runtime is set up, and TSan instruments it (a crash at start-up).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(__SANITIZE_THREAD__)
#define TESSERA_CPU_TARGET_CLONES \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define TESSERA_CPU_TARGET_CLONES
#endif

namespace tessera::kernels::vec {

#define TESSERA_VEC_INLINE __attribute__((always_inline)) inline

typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));
typedef int32_t Int16v __attribute__((vector_size(64)));

TESSERA_VEC_INLINE Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TESSERA_VEC_INLINE void store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof(v)); }
TESSERA_VEC_INLINE Vec16 splat(float x) { return Vec16{} + x; }

TESSERA_VEC_INLINE float hsum(Vec16 v) {
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

TESSERA_VEC_INLINE float hmax(Vec16 v) {
  float m = v[0];
  for (int i = 1; i < 16; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// exp of 16 floats (Cephes' single-precision polynomial, within 2 ulp of expf over the range
// used). Below -87.3 (exp < FLT_MIN) the result is 0, -inf included; above 88 it is exp(88); NaN
// stays NaN.
TESSERA_VEC_INLINE Vec16 vexp(Vec16 x) {
  const Vec16 lo = splat(-87.33654f), hi = splat(88.0f);
  const Vec16 ok = (x == x) ? x : splat(0.0f);  // NaN lanes computed on 0, restored below
  Vec16 c = ok < lo ? lo : ok;
  c = c > hi ? hi : c;
  const Vec16 fx = c * 1.44269504088896341f + 0.5f;
  Vec16 fn = __builtin_convertvector(__builtin_convertvector(fx, Int16v), Vec16);
  fn = fn > fx ? fn - 1.0f : fn;  // floor
  const Vec16 r = c - fn * 0.693359375f + fn * 2.12194440e-4f;
  Vec16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const Int16v bits = (__builtin_convertvector(fn, Int16v) + 127) << 23;
  Vec16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  Vec16 e = p * scale;
  e = x < lo ? splat(0.0f) : e;
  return (x == x) ? e : x;
}

// Lane-wise (x's selected lanes) + (y's selected lanes), the two selections given as index masks
// over x ++ y: one level of reduce16's tree.
TESSERA_VEC_INLINE Vec16 fold(Vec16 x, Vec16 y, Int16v first, Int16v second) {
  return __builtin_shuffle(x, y, first) + __builtin_shuffle(x, y, second);
}

// The sums of 16 vectors, as one vector (lane j = the sum of a[j]'s lanes): a transpose-and-add
// tree, 30 shuffles and 15 adds for 16 sums instead of 16 horizontal sums. After level L each
// vector holds 16 / 2^L partial sums of each of 2^L inputs.
TESSERA_VEC_INLINE Vec16 reduce16(const Vec16* a) {
  const Int16v lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const Int16v hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const Int16v lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const Int16v hi4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const Int16v lo2 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const Int16v hi2 = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const Int16v ev = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const Int16v od = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  Vec16 b[8], c[4], d[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) b[i] = fold(a[2 * i], a[2 * i + 1], lo8, hi8);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) c[i] = fold(b[2 * i], b[2 * i + 1], lo4, hi4);
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) d[i] = fold(c[2 * i], c[2 * i + 1], lo2, hi2);
  return fold(d[0], d[1], ev, od);
}

}  // namespace tessera::kernels::vec
