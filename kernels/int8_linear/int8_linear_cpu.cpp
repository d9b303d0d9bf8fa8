#include <omp.h>

// The 16-wide vector helpers below are always inlined, so the ABI note about passing them is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/common/cpu_convert.h"
#include "kernels/int8_linear/int8_linear.h"
#include "kernels/quant/kv_format.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define TESSERA_X86 1
#else
#define TESSERA_X86 0
#endif

namespace tessera::kernels {

namespace {

// Not under ThreadSanitizer: the clones' ifunc resolver runs while the dynamic loader relocates
// the program, before TSan's runtime is set up, and TSan instruments it (a crash at start-up).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define TESSERA_CPU_CLONES \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define TESSERA_CPU_CLONES
#endif
#define TESSERA_ALWAYS_INLINE __attribute__((always_inline)) inline

// Work items: kDotBlock output channels x kDotRows rows of x. The channels' int8 rows stay in
// cache while the item's rows pass over them four at a time; each widened weight vector feeds four
// rows, each loaded x vector four channels.
constexpr int64_t kDotBlock = 16;
constexpr int64_t kDotRows = 64;

typedef int Idx8 __attribute__((vector_size(32)));
typedef int Idx16 __attribute__((vector_size(64)));

// One copy of the kernels per instruction set, each compiled for it and chosen at run time, each
// on its native register width: GCC lowers wider generic vectors poorly (stack round trips on
// AVX2), and turns a portable int8 -> float vector conversion into scalar ones, so the AVX2 and
// AVX-512 copies widen with intrinsics. Register blocks: 16 accumulators of AVX-512's 32
// registers; 8 of AVX2's 16; 4 for SSE2.
namespace generic {
typedef float Vec __attribute__((vector_size(16)));
constexpr int kLanes = 4;
constexpr int kGroupRows = 2;
constexpr int kGroupChannels = 2;
TESSERA_ALWAYS_INLINE Vec loadv(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TESSERA_ALWAYS_INLINE Vec widen(const int8_t* p) {
  return Vec{static_cast<float>(p[0]), static_cast<float>(p[1]), static_cast<float>(p[2]),
             static_cast<float>(p[3])};
}
TESSERA_ALWAYS_INLINE float hsum(Vec v) { return (v[0] + v[2]) + (v[1] + v[3]); }
#include "kernels/int8_linear/int8_linear_cpu_kernels.inc"
}  // namespace generic

#if TESSERA_X86
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
typedef float Vec __attribute__((vector_size(32)));
constexpr int kLanes = 8;
constexpr int kGroupRows = 4;
constexpr int kGroupChannels = 2;
TESSERA_ALWAYS_INLINE Vec loadv(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TESSERA_ALWAYS_INLINE Vec widen(const int8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
TESSERA_ALWAYS_INLINE float hsum(Vec v) {
  const Idx8 h4 = {4, 5, 6, 7, 0, 0, 0, 0};
  const Idx8 h2 = {2, 3, 0, 0, 0, 0, 0, 0};
  const Idx8 h1 = {1, 0, 0, 0, 0, 0, 0, 0};
  v += __builtin_shuffle(v, h4);
  v += __builtin_shuffle(v, h2);
  v += __builtin_shuffle(v, h1);
  return v[0];
}
#include "kernels/int8_linear/int8_linear_cpu_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace avx512 {
typedef float Vec __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kGroupRows = 4;
constexpr int kGroupChannels = 4;
TESSERA_ALWAYS_INLINE Vec loadv(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TESSERA_ALWAYS_INLINE Vec widen(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
TESSERA_ALWAYS_INLINE float hsum(Vec v) {
  const Idx16 h8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 0, 0, 0, 0, 0, 0, 0};
  const Idx16 h4 = {4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const Idx16 h2 = {2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const Idx16 h1 = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  v += __builtin_shuffle(v, h8);
  v += __builtin_shuffle(v, h4);
  v += __builtin_shuffle(v, h2);
  v += __builtin_shuffle(v, h1);
  return v[0];
}
#include "kernels/int8_linear/int8_linear_cpu_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

struct Kernels {
  void (*dot_block)(const Int8LinearView&, int64_t, int64_t, int64_t, int64_t);
};

// The best copy this CPU runs. TESSERA_CPU_ISA=generic|avx2 forces a lesser one (the tests run
// every copy on one machine this way).
const Kernels& kernels_for_this_cpu() {
  static const Kernels k = [] {
    const char* forced = std::getenv("TESSERA_CPU_ISA");
    const std::string isa = forced != nullptr ? forced : "";
    if (isa == "generic") return Kernels{generic::dot_block};
#if TESSERA_X86
    __builtin_cpu_init();
    if (isa != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      return Kernels{avx512::dot_block};
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Kernels{avx2::dot_block};
    }
#endif
    return Kernels{generic::dot_block};
  }();
  return k;
}

TESSERA_CPU_CLONES void quantise_row(const float* w, int64_t k, int8_t* q, float* scale) {
  float amax = 0.0f;
  for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(w[j]));
  const float s = kv_scale_from_amax(KvDType::kI8, amax);
  *scale = s;
  for (int64_t j = 0; j < k; ++j) q[j] = quantise_int8(w[j], s);
}

}  // namespace

void int8_quantise_cpu(const Int8QuantiseView& v) {
#pragma omp parallel
  {
    std::vector<float> row(v.dtype == DType::kF32 ? 0 : static_cast<size_t>(v.k));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < v.n; ++r) {
      const float* w;
      if (v.dtype == DType::kF32) {
        w = static_cast<const float*>(v.w) + r * v.k;
      } else {
        widen_to_f32(v.dtype, static_cast<const uint16_t*>(v.w) + r * v.k, row.data(), v.k);
        w = row.data();
      }
      quantise_row(w, v.k, v.q + r * v.k, v.scale + r);
    }
  }
}

void int8_linear_cpu(const Int8LinearView& v) {
  int8_linear_check(v);
  if (v.m == 0) return;
  const Kernels& kernels = kernels_for_this_cpu();
  const int64_t n_blocks = (v.n + kDotBlock - 1) / kDotBlock;
  const int64_t m_blocks = (v.m + kDotRows - 1) / kDotRows;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t mb = 0; mb < m_blocks; ++mb) {
    for (int64_t b = 0; b < n_blocks; ++b) {
      kernels.dot_block(v, mb * kDotRows, std::min<int64_t>(v.m, (mb + 1) * kDotRows),
                        b * kDotBlock, std::min<int64_t>(v.n, (b + 1) * kDotBlock));
    }
  }
}

}  // namespace tessera::kernels
