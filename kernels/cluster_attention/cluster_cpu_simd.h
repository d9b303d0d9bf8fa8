// Vectorisable helpers for the fast CPU cluster kernels: dot / axpy over head_dim, a polynomial
// exp that the compiler can vectorise, and TESSERA_CPU_CLONES, which compiles a hot function for
// AVX-512, AVX2 and baseline x86-64 and picks one at load time (the build itself targets
// baseline x86-64, so CI machines and users' machines all run).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
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

// exp_approx on 8 lanes.
TESSERA_CPU_INLINE v8f exp8(v8f x) {
  const v8f lo = v8f{} - 87.0f, hi = v8f{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v8f t = x * 1.44269504088896341f + 0.5f;
  v8i k = __builtin_convertvector(t, v8i);
  k += (__builtin_convertvector(k, v8f) > t);  // comparison lanes are -1 where true: floor
  const v8f kf = __builtin_convertvector(k, v8f);
  const v8f r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  v8f p = v8f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i bits = (k + 127) << 23;
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

template <int kD>
TESSERA_CPU_INLINE void axpyk(float w, const float* x, float* y, int64_t n) {
  if constexpr (kD > 0 && kD % 8 == 0) {
    for (int i = 0; i < kD; i += 8) store8(y + i, load8(y + i) + w * load8(x + i));
  } else {
    axpy(w, x, y, n);
  }
}

}  // namespace tessera::kernels::simd
