#include <bit>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "kernels/common/device_error.h"
#include "kernels/lora/lora_sgmv.h"
#include "kernels/quant/kv_format.h"

namespace tessera::kernels {

namespace {

double load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF16:
      return kv_half_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16:
      return kv_bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kF64:
      return static_cast<const double*>(p)[i];
    default:
      return static_cast<const float*>(p)[i];
  }
}

void store(DType t, void* p, int64_t i, double v) {
  switch (t) {
    case DType::kF16:
      static_cast<uint16_t*>(p)[i] = kv_float_to_half(static_cast<float>(v));
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(p)[i] = kv_float_to_bf16(static_cast<float>(v));
      break;
    case DType::kF64:
      static_cast<double*>(p)[i] = v;
      break;
    default:
      static_cast<float*>(p)[i] = static_cast<float>(v);
  }
}

}  // namespace

void lora_sgmv_check(const LoraSgmvView& v) {
  TESSERA_CHECK(v.dtype == DType::kF32 || v.dtype == DType::kF16 || v.dtype == DType::kBF16 ||
                    v.dtype == DType::kF64,
                "lora: dtype must be float32, float16, bfloat16 or float64, got ",
                dtype_name(v.dtype));
  TESSERA_CHECK(v.num_rows >= 0, "lora: num_rows must be >= 0, got ", v.num_rows);
  TESSERA_CHECK(v.in_features > 0, "lora: in_features must be positive, got ", v.in_features);
  TESSERA_CHECK(v.out_features > 0, "lora: out_features must be positive, got ", v.out_features);
  TESSERA_CHECK(v.num_segments >= 0, "lora: num_segments must be >= 0, got ", v.num_segments);
  TESSERA_CHECK(v.num_adapters >= 0, "lora: num_adapters must be >= 0, got ", v.num_adapters);
  TESSERA_CHECK(v.r_max >= 0, "lora: r_max must be >= 0, got ", v.r_max);
  TESSERA_CHECK(v.x_row_stride >= v.in_features, "lora: x_row_stride=", v.x_row_stride,
                " is smaller than in_features=", v.in_features);
  TESSERA_CHECK(v.y_row_stride >= v.out_features, "lora: y_row_stride=", v.y_row_stride,
                " is smaller than out_features=", v.out_features);
  // The metadata, with the messages the CUDA kernel's device-side checks record.
  auto fail = [](MetadataCheck c, int64_t i, int64_t value, int64_t limit) {
    TESSERA_FAIL(metadata_error_message(c, i, 0, value, limit));
  };
  if (v.seg_indptr[0] != 0) fail(MetadataCheck::kSegIndptrFirst, 0, v.seg_indptr[0], 0);
  if (v.seg_indptr[v.num_segments] != v.num_rows) {
    fail(MetadataCheck::kSegIndptrLast, v.num_segments, v.seg_indptr[v.num_segments], v.num_rows);
  }
  for (int64_t s = 0; s < v.num_segments; ++s) {
    if (v.seg_indptr[s + 1] < v.seg_indptr[s]) {
      fail(MetadataCheck::kSegIndptrDecreasing, s, v.seg_indptr[s], v.seg_indptr[s + 1]);
    }
    const int32_t a = v.seg_adapter[s];
    if (a < -1 || a >= v.num_adapters) {
      fail(MetadataCheck::kSegAdapterOutOfRange, s, a, v.num_adapters);
    }
  }
  for (int64_t a = 0; a < v.num_adapters; ++a) {
    if (v.ranks[a] < 0 || v.ranks[a] > v.r_max) {
      fail(MetadataCheck::kRankOutOfRange, a, v.ranks[a], v.r_max);
    }
    if (!std::isfinite(v.scales[a])) {
      fail(MetadataCheck::kScaleNotFinite, a, std::bit_cast<uint32_t>(v.scales[a]), 0);
    }
  }
}

void lora_sgmv_ref(const LoraSgmvView& v) {
  lora_sgmv_check(v);
  std::vector<double> t(static_cast<size_t>(v.r_max));
  for (int64_t s = 0; s < v.num_segments; ++s) {
    const int32_t a = v.seg_adapter[s];
    if (a < 0) continue;
    const int64_t r = v.ranks[a];
    const int64_t a_base = a * v.r_max * v.in_features;
    const int64_t b_base = a * v.out_features * v.r_max;
    for (int64_t i = v.seg_indptr[s]; i < v.seg_indptr[s + 1]; ++i) {
      for (int64_t k = 0; k < r; ++k) {
        double sum = 0;
        for (int64_t j = 0; j < v.in_features; ++j) {
          sum += load(v.dtype, v.x, i * v.x_row_stride + j) *
                 load(v.dtype, v.a, a_base + k * v.in_features + j);
        }
        t[k] = sum;
      }
      for (int64_t o = 0; o < v.out_features; ++o) {
        double sum = 0;
        for (int64_t k = 0; k < r; ++k) sum += t[k] * load(v.dtype, v.b, b_base + o * v.r_max + k);
        const int64_t yi = i * v.y_row_stride + o;
        store(v.dtype, v.y, yi, load(v.dtype, v.y, yi) + static_cast<double>(v.scales[a]) * sum);
      }
    }
  }
}

}  // namespace tessera::kernels
