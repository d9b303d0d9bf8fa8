#include <algorithm>
#include <cmath>

#include "kernels/quant/kv_quant.h"

namespace tessera::kernels {

uint8_t float_to_e4m3_ref(float f) {
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  if (std::isnan(f)) return sign | 0x7f;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= kE4M3Max) return sign | 0x7e;
  int best = 0;
  double best_err = a;  // code 0 is +0
  for (int c = 1; c <= 0x7e; ++c) {
    const double err = std::fabs(static_cast<double>(e4m3_to_float(static_cast<uint8_t>(c))) - a);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return sign | static_cast<uint8_t>(best);
}

void kv_quantise_ref(const KvQuantView& v) {
  for (int64_t r = 0; r < v.rows; ++r) {
    const float* x = v.x + r * v.x_row_stride;
    float amax = 0.0f;
    for (int i = 0; i < v.head_dim; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = kv_scale_from_amax(v.dtype, amax);
    v.scale[r] = scale;
    if (v.dtype == KvDType::kI8) {
      int8_t* q = static_cast<int8_t*>(v.q) + r * v.head_dim;
      for (int i = 0; i < v.head_dim; ++i) {
        const float t = std::nearbyint(x[i] / scale);
        q[i] = static_cast<int8_t>(std::clamp(t, -kInt8Max, kInt8Max));
      }
    } else {
      uint8_t* q = static_cast<uint8_t*>(v.q) + r * v.head_dim;
      for (int i = 0; i < v.head_dim; ++i) q[i] = float_to_e4m3_ref(x[i] / scale);
    }
  }
}

void kv_dequantise_ref(const KvDequantView& v) {
  for (int64_t r = 0; r < v.rows; ++r) {
    const double scale = v.scale[r];
    float* x = v.x + r * v.head_dim;
    for (int i = 0; i < v.head_dim; ++i) {
      double d;
      if (v.dtype == KvDType::kI8) {
        d = static_cast<const int8_t*>(v.q)[r * v.head_dim + i];
      } else {
        d = e4m3_to_float(static_cast<const uint8_t*>(v.q)[r * v.head_dim + i]);
      }
      x[i] = static_cast<float>(scale * d);
    }
  }
}

}  // namespace tessera::kernels
