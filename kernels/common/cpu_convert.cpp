#include "kernels/common/cpu_convert.h"

#include <cstring>

#include "kernels/quant/kv_format.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TESSERA_X86 1
#endif

namespace tessera::kernels {

namespace {

void widen_bf16(const uint16_t* s, float* d, int64_t n) {
  // A shift per element: GCC vectorises this loop at every ISA level.
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    std::memcpy(d + i, &u, 4);
  }
}

void narrow_bf16(const float* s, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = kv_float_to_bf16(s[i]);
}

#ifdef TESSERA_X86
__attribute__((target("avx2,f16c"))) void widen_f16_f16c(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) d[i] = kv_half_to_float(s[i]);
}

__attribute__((target("avx2,f16c"))) void narrow_f16_f16c(const float* s, uint16_t* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
  for (; i < n; ++i) d[i] = kv_float_to_half(s[i]);
}

bool has_f16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  return yes;
}
#endif

}  // namespace

void widen_to_f32(DType dtype, const void* src, float* dst, int64_t n) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kBF16:
      widen_bf16(static_cast<const uint16_t*>(src), dst, n);
      return;
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
#ifdef TESSERA_X86
      if (has_f16c()) return widen_f16_f16c(s, dst, n);
#endif
      for (int64_t i = 0; i < n; ++i) dst[i] = kv_half_to_float(s[i]);
      return;
    }
    default:
      return;
  }
}

void narrow_from_f32(DType dtype, const float* src, void* dst, int64_t n) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kBF16:
      narrow_bf16(src, static_cast<uint16_t*>(dst), n);
      return;
    case DType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
#ifdef TESSERA_X86
      if (has_f16c()) return narrow_f16_f16c(src, d, n);
#endif
      for (int64_t i = 0; i < n; ++i) d[i] = kv_float_to_half(src[i]);
      return;
    }
    default:
      return;
  }
}

}  // namespace tessera::kernels
