#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/paged/paged_kv_append.h"

namespace tessera::kernels {

namespace {

void store_row(const float* x, int n, KvDType t, void* dst, float* scale) {
  switch (t) {
    case KvDType::kF32:
      std::memcpy(dst, x, sizeof(float) * n);
      return;
    case KvDType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (int i = 0; i < n; ++i) d[i] = kv_float_to_half(x[i]);
      return;
    }
    case KvDType::kBF16: {
      auto* d = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int i = 0; i < n; ++i) d[i] = kv_float_to_bf16(x[i]);
      return;
    }
    case KvDType::kI8:
    case KvDType::kF8E4M3: {
      float amax = 0.0f;
#pragma omp simd reduction(max : amax)
      for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float s = kv_scale_from_amax(t, amax);
      *scale = s;
      if (t == KvDType::kI8) {
        auto* d = static_cast<int8_t*>(dst);
#pragma omp simd
        for (int i = 0; i < n; ++i) d[i] = quantise_int8(x[i], s);
      } else {
        auto* d = static_cast<uint8_t*>(dst);
        for (int i = 0; i < n; ++i) d[i] = float_to_e4m3(x[i] / s);
      }
      return;
    }
  }
}

}  // namespace

void paged_kv_append_cpu(const PagedKvAppendView& a) {
  const PagedKv& c = a.cache;
  const int64_t work = a.num_tokens * c.num_kv_heads * (c.head_dim_k + c.head_dim_v);
#pragma omp parallel for schedule(static) if (work > 65536)
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const int64_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    const int64_t block = slot / c.block_size;
    const int off = static_cast<int>(slot % c.block_size);
    for (int h = 0; h < c.num_kv_heads; ++h) {
      const int64_t sidx = static_cast<int64_t>(off) * c.num_kv_heads + h;
      store_row(a.key + t * a.key_stride[0] + h * a.key_stride[1], c.head_dim_k, c.dtype,
                const_cast<void*>(c.k_row(block, off, h)),
                c.k_scale ? c.k_scale + block * c.k_scale_block_stride + sidx : nullptr);
      store_row(a.value + t * a.value_stride[0] + h * a.value_stride[1], c.head_dim_v, c.dtype,
                const_cast<void*>(c.v_row(block, off, h)),
                c.v_scale ? c.v_scale + block * c.v_scale_block_stride + sidx : nullptr);
    }
  }
}

}  // namespace tessera::kernels
