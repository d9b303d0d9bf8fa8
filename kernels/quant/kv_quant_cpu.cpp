#include <algorithm>
#include <cmath>

#include "kernels/quant/kv_quant.h"

namespace tessera::kernels {

namespace {

// e4m3 decode table, built once: a lookup beats the exponent arithmetic in the inner loop.
struct E4M3Table {
  float v[256];
  E4M3Table() {
    for (int c = 0; c < 256; ++c) v[c] = e4m3_to_float(static_cast<uint8_t>(c));
  }
};
const E4M3Table& e4m3_table() {
  static const E4M3Table t;
  return t;
}

}  // namespace

void kv_quantise_cpu(const KvQuantView& v) {
  const int d = v.head_dim;
#pragma omp parallel for schedule(static) if (v.rows * d > 32768)
  for (int64_t r = 0; r < v.rows; ++r) {
    const float* x = v.x + r * v.x_row_stride;
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = kv_scale_from_amax(v.dtype, amax);
    v.scale[r] = scale;
    if (v.dtype == KvDType::kI8) {
      int8_t* q = static_cast<int8_t*>(v.q) + r * d;
#pragma omp simd
      for (int i = 0; i < d; ++i) q[i] = quantise_int8(x[i], scale);
    } else {
      uint8_t* q = static_cast<uint8_t*>(v.q) + r * d;
      for (int i = 0; i < d; ++i) q[i] = float_to_e4m3(x[i] / scale);
    }
  }
}

void kv_dequantise_cpu(const KvDequantView& v) {
  const int d = v.head_dim;
  const float* table = e4m3_table().v;
#pragma omp parallel for schedule(static) if (v.rows * d > 32768)
  for (int64_t r = 0; r < v.rows; ++r) {
    const float scale = v.scale[r];
    float* x = v.x + r * d;
    if (v.dtype == KvDType::kI8) {
      const int8_t* q = static_cast<const int8_t*>(v.q) + r * d;
#pragma omp simd
      for (int i = 0; i < d; ++i) x[i] = scale * static_cast<float>(q[i]);
    } else {
      const uint8_t* q = static_cast<const uint8_t*>(v.q) + r * d;
      for (int i = 0; i < d; ++i) x[i] = scale * table[q[i]];
    }
  }
}

}  // namespace tessera::kernels
