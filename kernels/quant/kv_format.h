// Element formats of a paged KV cache and their scalar conversions, shared by the reference, fast
// CPU and CUDA kernels (every function here compiles for host and device). Quantised formats
// (int8, fp8 e4m3) carry one float32 scale per (token, kv_head): x ~= scale * decode(q).
//   int8:  scale = amax / 127 (amax 0 -> 1), q = clamp(round_half_even(x / scale), -127, 127)
//   fp8:   scale = amax / 448 (amax 0 -> 1), q = e4m3(x / scale), round-to-nearest-even, saturating
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define TESSERA_HD __host__ __device__ __forceinline__
#else
#define TESSERA_HD inline
#endif

namespace tessera::kernels {

enum class KvDType : uint8_t { kF32, kF16, kBF16, kI8, kF8E4M3 };

TESSERA_HD int kv_elem_bytes(KvDType t) {
  return t == KvDType::kF32 ? 4 : (t == KvDType::kF16 || t == KvDType::kBF16) ? 2 : 1;
}
TESSERA_HD bool kv_is_quantised(KvDType t) { return t == KvDType::kI8 || t == KvDType::kF8E4M3; }

constexpr float kInt8Max = 127.0f;
constexpr float kE4M3Max = 448.0f;

TESSERA_HD uint32_t kv_float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
TESSERA_HD float kv_bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// IEEE binary16, exact widening.
TESSERA_HD float kv_half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return kv_bits_float(kv_float_bits(v) | sign);
  }
  if (exp == 31) return kv_bits_float(sign | 0x7f800000u | (man << 13));
  return kv_bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest even; overflow gives inf, NaN stays NaN.
TESSERA_HD uint16_t kv_float_to_half(float f) {
  const uint32_t u = kv_float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;        // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;       // >= 65520 rounds to inf
  if (a < 0x38800000u) {                             // below 2^-14: subnormal half, step 2^-24
    const float v = kv_bits_float(a) * 16777216.0f;  // exact: times 2^24
    return sign | static_cast<uint16_t>(rintf(v));
  }
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);  // round mantissa to 10 bits, ties to even
  return sign | static_cast<uint16_t>((r - 0x38000000u) >> 13);
}

TESSERA_HD float kv_bf16_to_float(uint16_t b) {
  return kv_bits_float(static_cast<uint32_t>(b) << 16);
}
TESSERA_HD uint16_t kv_float_to_bf16(float f) {
  const uint32_t u = kv_float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// OCP fp8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no inf; 0x7f / 0xff are NaN;
// largest finite 448, smallest subnormal 2^-9.
TESSERA_HD float e4m3_to_float(uint8_t c) {
  const float sign = (c & 0x80u) ? -1.0f : 1.0f;
  const int exp = (c >> 3) & 0xf;
  const int man = c & 0x7;
  if (exp == 15 && man == 7) return NAN;
  if (exp == 0) return sign * static_cast<float>(man) * 0.001953125f;  // man * 2^-9
  return sign * kv_bits_float(static_cast<uint32_t>(exp - 7 + 127) << 23) *
         (1.0f + static_cast<float>(man) * 0.125f);
}

// Round to nearest even, saturating to +-448 (inf too); NaN -> 0x7f with the sign.
TESSERA_HD uint8_t float_to_e4m3(float f) {
  const uint32_t u = kv_float_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7fu;
  if (a >= 0x43e00000u) return sign | 0x7eu;       // >= 448
  if (a < 0x3c800000u) {                           // below 2^-6: subnormal, step 2^-9
    const float v = kv_bits_float(a) * 512.0f;     // exact
    return sign | static_cast<uint8_t>(rintf(v));  // 8 carries into the smallest normal, 0x08
  }
  const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);  // round mantissa to 3 bits, ties to even
  return sign | static_cast<uint8_t>((r - (120u << 23)) >> 20);
}

TESSERA_HD int8_t quantise_int8(float x, float scale) {
  const float q = rintf(x / scale);
  return static_cast<int8_t>(fminf(fmaxf(q, -kInt8Max), kInt8Max));
}

// The scale of one row of a quantised format from its largest magnitude.
TESSERA_HD float kv_scale_from_amax(KvDType t, float amax) {
  if (!(amax > 0.0f)) return 1.0f;
  return amax / (t == KvDType::kI8 ? kInt8Max : kE4M3Max);
}

// Element i of a row of format T (scale ignored unless quantised).
TESSERA_HD float kv_load(KvDType t, const void* row, int i, float scale) {
  switch (t) {
    case KvDType::kF32:
      return static_cast<const float*>(row)[i];
    case KvDType::kF16:
      return kv_half_to_float(static_cast<const uint16_t*>(row)[i]);
    case KvDType::kBF16:
      return kv_bf16_to_float(static_cast<const uint16_t*>(row)[i]);
    case KvDType::kI8:
      return scale * static_cast<float>(static_cast<const int8_t*>(row)[i]);
    case KvDType::kF8E4M3:
      return scale * e4m3_to_float(static_cast<const uint8_t*>(row)[i]);
  }
  return 0.0f;
}

}  // namespace tessera::kernels
