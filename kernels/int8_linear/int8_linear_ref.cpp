#include <cmath>

#include "common/error.h"
#include "kernels/int8_linear/int8_linear.h"
#include "kernels/quant/kv_format.h"

namespace tessera::kernels {

namespace {

float load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF16:
      return kv_half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16:
      return kv_bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

}  // namespace

void int8_linear_check(const Int8LinearView& v) {
  TESSERA_CHECK(v.m >= 0, "int8_linear: m must be >= 0, got ", v.m);
  TESSERA_CHECK(v.n > 0, "int8_linear: out_features must be positive, got ", v.n);
  TESSERA_CHECK(v.k > 0, "int8_linear: in_features must be positive, got ", v.k);
  TESSERA_CHECK(v.m <= 1 || v.x_row_stride >= v.k, "int8_linear: x_row_stride=", v.x_row_stride,
                " is smaller than in_features=", v.k);
  TESSERA_CHECK(v.m <= 1 || v.y_row_stride >= v.n, "int8_linear: y_row_stride=", v.y_row_stride,
                " is smaller than out_features=", v.n);
}

void int8_quantise_ref(const Int8QuantiseView& v) {
  for (int64_t r = 0; r < v.n; ++r) {
    float amax = 0.0f;
    for (int64_t j = 0; j < v.k; ++j)
      amax = std::fmax(amax, std::fabs(load(v.dtype, v.w, r * v.k + j)));
    const float scale = kv_scale_from_amax(KvDType::kI8, amax);
    v.scale[r] = scale;
    for (int64_t j = 0; j < v.k; ++j) {
      v.q[r * v.k + j] = quantise_int8(load(v.dtype, v.w, r * v.k + j), scale);
    }
  }
}

void int8_linear_ref(const Int8LinearView& v) {
  int8_linear_check(v);
  for (int64_t i = 0; i < v.m; ++i) {
    for (int64_t o = 0; o < v.n; ++o) {
      double sum = 0;
      for (int64_t j = 0; j < v.k; ++j) {
        sum += static_cast<double>(v.x[i * v.x_row_stride + j]) * v.w[o * v.k + j];
      }
      double out = sum * v.scale[o];
      if (v.bias != nullptr) out += v.bias[o];
      v.y[i * v.y_row_stride + o] = static_cast<float>(out);
    }
  }
}

}  // namespace tessera::kernels
