// Checks shared by the paged-KV ops: turns the cache tensors of one layer (K, V pages and, for
// quantised formats, their scales) into the torch-free PagedKv view. Header-only so that it adds
// no translation unit; included only by kernels/ops/*.cpp.
#pragma once

#include <torch/types.h>

#include "common/error.h"
#include "kernels/paged/paged_kv.h"

namespace tessera::kernels::detail {

// The page format is the cache tensor's dtype; fp8 e4m3 pages are stored as uint8.
inline KvDType kv_dtype_of(const torch::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return KvDType::kF32;
    case torch::kHalf:
      return KvDType::kF16;
    case torch::kBFloat16:
      return KvDType::kBF16;
    case torch::kChar:
      return KvDType::kI8;
    case torch::kByte:
      return KvDType::kF8E4M3;
    default:
      TESSERA_FAIL(name, " must be float32, float16, bfloat16, int8 or uint8 (fp8 e4m3), got ",
                   t.scalar_type());
  }
}

inline void check_pages(const torch::Tensor& t, const char* name) {
  TESSERA_CHECK(t.dim() == 4, name,
                " must be 4-D [num_blocks, block_size, num_kv_heads, head_dim], got shape ",
                t.sizes());
  TESSERA_CHECK(
      t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3), name,
      " must be contiguous within a block, got strides ", t.strides());
}

inline void check_scales(const torch::Tensor& s, const torch::Tensor& pages, const char* name) {
  TESSERA_CHECK(s.defined(), name, " is required for a quantised (", pages.scalar_type(),
                ") cache");
  TESSERA_CHECK(s.scalar_type() == torch::kFloat, name, " must be float32, got ", s.scalar_type());
  TESSERA_CHECK(s.dim() == 3 && s.sizes() == pages.sizes().slice(0, 3), name,
                " must be [num_blocks, block_size, num_kv_heads] = ", pages.sizes().slice(0, 3),
                ", got ", s.sizes());
  TESSERA_CHECK(s.stride(2) == 1 && s.stride(1) == s.size(2), name,
                " must be contiguous within a block, got strides ", s.strides());
  TESSERA_CHECK(s.device() == pages.device(), name, " must be on the cache's device ",
                pages.device(), ", got ", s.device());
}

inline PagedKv paged_kv_from_tensors(const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                                     const torch::Tensor& k_scale, const torch::Tensor& v_scale) {
  check_pages(k_cache, "k_cache");
  check_pages(v_cache, "v_cache");
  TESSERA_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "k_cache dtype ",
                k_cache.scalar_type(), " differs from v_cache dtype ", v_cache.scalar_type());
  TESSERA_CHECK(k_cache.sizes().slice(0, 3) == v_cache.sizes().slice(0, 3),
                "k_cache and v_cache must agree on [num_blocks, block_size, num_kv_heads], got ",
                k_cache.sizes(), " and ", v_cache.sizes());
  TESSERA_CHECK(k_cache.device() == v_cache.device(), "k_cache is on ", k_cache.device(),
                " but v_cache on ", v_cache.device());
  TESSERA_CHECK(k_cache.size(1) > 0 && k_cache.size(2) > 0,
                "block_size and num_kv_heads must be positive, got k_cache shape ",
                k_cache.sizes());
  PagedKv kv;
  kv.dtype = kv_dtype_of(k_cache, "k_cache");
  kv.k = k_cache.data_ptr();
  kv.v = v_cache.data_ptr();
  kv.k_block_stride = k_cache.stride(0);
  kv.v_block_stride = v_cache.stride(0);
  kv.num_blocks = k_cache.size(0);
  kv.block_size = static_cast<int>(k_cache.size(1));
  kv.num_kv_heads = static_cast<int>(k_cache.size(2));
  kv.head_dim_k = static_cast<int>(k_cache.size(3));
  kv.head_dim_v = static_cast<int>(v_cache.size(3));
  if (kv_is_quantised(kv.dtype)) {
    check_scales(k_scale, k_cache, "k_scale");
    check_scales(v_scale, v_cache, "v_scale");
    kv.k_scale = k_scale.data_ptr<float>();
    kv.v_scale = v_scale.data_ptr<float>();
    kv.k_scale_block_stride = k_scale.stride(0);
    kv.v_scale_block_stride = v_scale.stride(0);
  }
  return kv;
}

}  // namespace tessera::kernels::detail
