// Vectorisable helpers for the fast CPU cluster kernels: dot / axpy over head_dim, a polynomial
// exp that the compiler can vectorise, and TESSERA_CPU_CLONES, which compiles a hot function for
// AVX-512, AVX2 and baseline x86-64 and picks one at load time (the build itself targets
// baseline x86-64, so CI machines and users' machines all run).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

// Not under ThreadSanitizer: the clones' ifunc resolver runs while the dynamic loader relocates
// the program, before TSan's runtime is set up, and TSan instruments it (a crash at start-up).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(__SANITIZE_THREAD__)
#define TESSERA_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TESSERA_CPU_CLONES
#endif
// Helpers called from cloned functions must be inlined into each clone to get its instruction set.
#define TESSERA_CPU_INLINE inline __attribute__((always_inline))

namespace tessera::kernels::simd {

TESSERA_CPU_INLINE float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

TESSERA_CPU_INLINE void axpy(float w, const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
}

// exp(x) for x <= 0-ish softmax arguments: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2/2,
// and Cephes' degree-6 polynomial; relative error ~2e-7. Inputs below -87 give ~1e-38, not 0:
// callers map -inf (masked) to 0 themselves.
TESSERA_CPU_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // two plain selects: GCC vectorises these, not a nested one
  x = x > 88.0f ? 88.0f : x;
  const float t = x * 1.44269504088896341f + 0.5f;
  int32_t k = static_cast<int32_t>(t);
  k -= (static_cast<float>(k) > t) ? 1 : 0;  // floor
  const float kf = static_cast<float>(k);
  const float r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((k + 127) << 23);
}

// 8-wide float vectors (GCC vector extensions): one AVX register in the x86-64-v3/v4 clones, two
// SSE registers in the baseline one.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

TESSERA_CPU_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

TESSERA_CPU_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

TESSERA_CPU_INLINE float hsum8(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// exp_approx on 8 lanes, k rounded to nearest by the 1.5 * 2^23 trick (k = floor(t + 0.5) but
// for ties), whose sum also carries k in its low mantissa bits for the 2^k scale.
TESSERA_CPU_INLINE v8f exp8(v8f x) {
  const v8f lo = v8f{} - 87.0f, hi = v8f{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v8f shifted = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23 + round(x / ln 2)
  const v8f kf = shifted - 12582912.0f;
  const v8f r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  v8f p = v8f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // shifted's bits are 0x4B400000 + k; shifting left by 23 drops the 0x4B400000.
  v8i kbits;
  std::memcpy(&kbits, &shifted, sizeof(kbits));
  const v8i bits = (kbits + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// dot / axpy over a head_dim that is either the compile-time kD (a multiple of 8: unrolled 8-wide
// vectors) or, with kD = 0, the runtime n.
template <int kD>
TESSERA_CPU_INLINE float dotk(const float* a, const float* b, int64_t n) {
  if constexpr (kD > 0 && kD % 8 == 0) {
    v8f acc0 = {}, acc1 = {};
    int i = 0;
    for (; i + 16 <= kD; i += 16) {
      acc0 += load8(a + i) * load8(b + i);
      acc1 += load8(a + i + 8) * load8(b + i + 8);
    }
    if (i < kD) acc0 += load8(a + i) * load8(b + i);
    return hsum8(acc0 + acc1);
  } else {
    return dot(a, b, n);
  }
}

// Horizontal sums of eight vectors at once: r[i] = hsum8(a[i]). A tree of pairwise "hadd"s (two
// shuffles and an add each) shares the shuffles among the eight sums: 8 + 6 operations instead of
// the ~5 per vector of eight separate hsum8 calls.
TESSERA_CPU_INLINE v8f hadd8(v8f a, v8f b) {
  // [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7], as AVX's vhaddps.
  const v8i even = {0, 2, 8, 10, 4, 6, 12, 14}, odd = {1, 3, 9, 11, 5, 7, 13, 15};
  return __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd);
}

TESSERA_CPU_INLINE v8f hsum8x8(const v8f* a) {
  const v8f t0 = hadd8(a[0], a[1]), t1 = hadd8(a[2], a[3]);
  const v8f t2 = hadd8(a[4], a[5]), t3 = hadd8(a[6], a[7]);
  // u0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] with s = low-half sums, s' = high-half sums; u1 likewise
  // for vectors 4..7.
  const v8f u0 = hadd8(t0, t1), u1 = hadd8(t2, t3);
  const v8i lo = {0, 1, 2, 3, 8, 9, 10, 11}, hi = {4, 5, 6, 7, 12, 13, 14, 15};
  return __builtin_shuffle(u0, u1, lo) + __builtin_shuffle(u0, u1, hi);
}

// out[m] = x . rows[key[m]] for the eight m of one block: rows at base + key[m] * stride, kD (a
// multiple of 8) floats each; x already loaded as kD / 8 vectors.
template <int kD>
TESSERA_CPU_INLINE v8f dot8_rows(const v8f* x, const float* base, int64_t stride,
                                 const int64_t* key) {
  static_assert(kD > 0 && kD % 8 == 0);
  v8f acc[8];
  for (int u = 0; u < 8; ++u) {
    const float* r = base + key[u] * stride;
    acc[u] = x[0] * load8(r);
    for (int i = 1; i < kD / 8; ++i) acc[u] += x[i] * load8(r + 8 * i);
  }
  return hsum8x8(acc);
}

template <int kD>
TESSERA_CPU_INLINE void axpyk(float w, const float* x, float* y, int64_t n) {
  if constexpr (kD > 0 && kD % 8 == 0) {
    for (int i = 0; i < kD; i += 8) store8(y + i, load8(y + i) + w * load8(x + i));
  } else {
    axpy(w, x, y, n);
  }
}

}  // namespace tessera::kernels::simd
