// The paged KV layout shared by caches/ (which allocates it) and the paged kernels (which append
// to and attend over it). Per attention layer, K and V are separate tensors of pages:
//   K [num_blocks, block_size, num_kv_heads, head_dim_k], V [..., head_dim_v];
// block 0 is the null block (never handed out; block-table padding points to it). Token t of a
// sequence lives in block_table[t / block_size] at slot t % block_size. Quantised formats add one
// float32 scale per (token, kv_head) for K and for V: [num_blocks, block_size, num_kv_heads].
#pragma once

#include <cstdint>

#include "kernels/quant/kv_format.h"

namespace tessera::kernels {

struct PagedKv {
  // Element pointers of the dtype below. Within a block the layout is contiguous
  // [block_size, num_kv_heads, head_dim]; blocks are *_block_stride elements apart (a K/V pair
  // interleaved in one allocation has a block stride of twice the block's size).
  void* k = nullptr;           // [num_blocks, block_size, num_kv_heads, head_dim_k]
  void* v = nullptr;           // [num_blocks, block_size, num_kv_heads, head_dim_v]
  float* k_scale = nullptr;    // [num_blocks, block_size, num_kv_heads]; quantised dtypes only
  float* v_scale = nullptr;    // [num_blocks, block_size, num_kv_heads]; quantised dtypes only
  int64_t k_block_stride = 0;  // in elements
  int64_t v_block_stride = 0;
  int64_t k_scale_block_stride = 0;
  int64_t v_scale_block_stride = 0;
  int64_t num_blocks = 0;
  int block_size = 0;
  int num_kv_heads = 0;
  int head_dim_k = 0;
  int head_dim_v = 0;
  KvDType dtype = KvDType::kF32;

  TESSERA_HD const void* k_row(int64_t block, int slot, int head) const {
    return static_cast<const char*>(k) +
           (block * k_block_stride +
            (static_cast<int64_t>(slot) * num_kv_heads + head) * head_dim_k) *
               kv_elem_bytes(dtype);
  }
  TESSERA_HD const void* v_row(int64_t block, int slot, int head) const {
    return static_cast<const char*>(v) +
           (block * v_block_stride +
            (static_cast<int64_t>(slot) * num_kv_heads + head) * head_dim_v) *
               kv_elem_bytes(dtype);
  }
  TESSERA_HD float k_scale_at(int64_t block, int slot, int head) const {
    return k_scale == nullptr ? 1.0f
                              : k_scale[block * k_scale_block_stride +
                                        static_cast<int64_t>(slot) * num_kv_heads + head];
  }
  TESSERA_HD float v_scale_at(int64_t block, int slot, int head) const {
    return v_scale == nullptr ? 1.0f
                              : v_scale[block * v_scale_block_stride +
                                        static_cast<int64_t>(slot) * num_kv_heads + head];
  }
};

}  // namespace tessera::kernels
