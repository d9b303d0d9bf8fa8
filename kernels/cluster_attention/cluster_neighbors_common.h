// Arithmetic shared by the CPU and CUDA neighbour builders, written once so both produce the same
// curve codes and distances bit for bit (no FMA contraction: products and sums rounded apart).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TESSERA_NB_HD __host__ __device__ __forceinline__
#else
#define TESSERA_NB_HD inline
#endif

namespace tessera::kernels::nb {

TESSERA_NB_HD uint64_t hilbert(uint32_t x, uint32_t y) {
  // Classic xy -> d walk over quadrants, from the top bit down (order 16).
  uint64_t d = 0;
  for (uint32_t s = 1u << 15; s > 0; s >>= 1) {
    const uint32_t rx = (x & s) ? 1u : 0u;
    const uint32_t ry = (y & s) ? 1u : 0u;
    d += static_cast<uint64_t>(s) * s * ((3u * rx) ^ ry);
    if (ry == 0) {  // rotate the quadrant so the curve stays continuous
      if (rx == 1) {
        x = (s - 1) - (x & (s - 1));
        y = (s - 1) - (y & (s - 1));
      }
      const uint32_t t = x;
      x = y;
      y = t;
    }
    x &= s - 1;
    y &= s - 1;
  }
  return d;
}

// Grid cell in [0, 65535] of coordinate v within [lo, hi].
TESSERA_NB_HD uint32_t quantise(float v, float lo, float hi) {
  const float span = hi - lo;
  if (!(span > 0.f)) return 0;
  float t = (v - lo) / span * 65535.f;
  t = t < 0.f ? 0.f : (t > 65535.f ? 65535.f : t);
  return static_cast<uint32_t>(t);
}

#if defined(__CUDACC__)
__device__ __forceinline__ float sq_dist(const float* a, const float* b) {
  const float dx = __fsub_rn(a[0], b[0]), dy = __fsub_rn(a[1], b[1]);
  return __fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy));
}
#else
// ISO C++ mode (no GNU extensions) keeps GCC from contracting this into an FMA.
inline float sq_dist(const float* a, const float* b) {
  const float dx = a[0] - b[0], dy = a[1] - b[1];
  return dx * dx + dy * dy;
}
#endif

// (d, j) < (e, i): nearer first, then the lower index.
TESSERA_NB_HD bool closer(float d, int64_t j, float e, int64_t i) {
  return d < e || (d == e && j < i);
}

}  // namespace tessera::kernels::nb
