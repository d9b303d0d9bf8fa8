#include <algorithm>
#include <cmath>

#include "common/dtype.h"
#include "kernels/paged/paged_kv_append.h"
#include "kernels/quant/kv_quant.h"

namespace tessera::kernels {

namespace {

// Writes one row through the independent conversions (common/dtype.h for fp16/bf16, exhaustive
// search for fp8), so the fast kernels' bit tricks are checked against something else.
void store_row_ref(const float* x, int n, KvDType t, void* dst, float* scale) {
  float s = 1.0f;
  if (kv_is_quantised(t)) {
    float amax = 0.0f;
    for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    s = kv_scale_from_amax(t, amax);
    *scale = s;
  }
  for (int i = 0; i < n; ++i) {
    switch (t) {
      case KvDType::kF32:
        static_cast<float*>(dst)[i] = x[i];
        break;
      case KvDType::kF16:
        static_cast<uint16_t*>(dst)[i] = float_to_half(x[i]);
        break;
      case KvDType::kBF16:
        static_cast<uint16_t*>(dst)[i] = float_to_bf16(x[i]);
        break;
      case KvDType::kI8:
        static_cast<int8_t*>(dst)[i] =
            static_cast<int8_t>(std::clamp(std::nearbyint(x[i] / s), -kInt8Max, kInt8Max));
        break;
      case KvDType::kF8E4M3:
        static_cast<uint8_t*>(dst)[i] = float_to_e4m3_ref(x[i] / s);
        break;
    }
  }
}

}  // namespace

void paged_kv_append_ref(const PagedKvAppendView& a) {
  const PagedKv& c = a.cache;
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int64_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    const int64_t block = slot / c.block_size;
    const int off = static_cast<int>(slot % c.block_size);
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const int64_t sidx = static_cast<int64_t>(off) * c.num_kv_heads + h;
      store_row_ref(a.key + t * a.key_stride[0] + h * a.key_stride[1], c.head_dim_k, c.dtype,
                    const_cast<void*>(c.k_row(block, off, h)),
                    c.k_scale ? c.k_scale + block * c.k_scale_block_stride + sidx : nullptr);
      store_row_ref(a.value + t * a.value_stride[0] + h * a.value_stride[1], c.head_dim_v, c.dtype,
                    const_cast<void*>(c.v_row(block, off, h)),
                    c.v_scale ? c.v_scale + block * c.v_scale_block_stride + sidx : nullptr);
    }
  }
}

}  // namespace tessera::kernels
