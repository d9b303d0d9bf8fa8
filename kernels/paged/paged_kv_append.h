// Writes the K/V of new tokens into their page slots (vLLM's reshape_and_cache), converting to the
// cache's format: fp32 / fp16 / bf16 by rounding to nearest even, int8 / fp8 e4m3 with one scale
// per (token, kv_head) (kernels/quant/kv_format.h).
#pragma once

#include <cstdint>

#include "kernels/common/device_error.h"
#include "kernels/paged/paged_kv.h"

namespace tessera::kernels {

struct PagedKvAppendView {
  const float* key = nullptr;             // [num_tokens, num_kv_heads, head_dim_k], strides below
  const float* value = nullptr;           // [num_tokens, num_kv_heads, head_dim_v]
  const int64_t* slot_mapping = nullptr;  // [num_tokens]: block * block_size + slot; < 0 = skip
  PagedKv cache;                          // written
  int64_t key_stride[2] = {0, 0};         // elements between tokens, heads; head_dim contiguous
  int64_t value_stride[2] = {0, 0};
  int64_t num_tokens = 0;
  // CUDA: where a kernel records a slot beyond the cache (which it then skips); null = unchecked.
  DeviceErrorSlot error;
};

// Every implementation writes bit-identical pages.
void paged_kv_append_ref(const PagedKvAppendView& view);
void paged_kv_append_cpu(const PagedKvAppendView& view);
#ifdef TESSERA_WITH_CUDA
// One warp per (token, kv_head). Returns a cudaError_t value (0 on success).
int paged_kv_append_cuda(const PagedKvAppendView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
