// Torch-facing KV append into pages (see kernels/paged/paged_kv_append.h).
#pragma once

#include <torch/types.h>

namespace tessera::kernels {

// Writes key [T, Hkv, Dk] and value [T, Hkv, Dv] (float32 / float16 / bfloat16, head_dim
// contiguous) into the page slots slot_mapping [T] (int32 or int64: block * block_size + slot;
// negative = padding, skipped) of k_cache / v_cache (layout as in paged_attention_ops.h), in
// place. int8 / uint8 (fp8 e4m3) caches also get their per-(token, head) scales written into
// k_scale / v_scale. reference = true runs the CPU reference (CPU only).
void paged_kv_append(const torch::Tensor& key, const torch::Tensor& value,
                     const torch::Tensor& slot_mapping, const torch::Tensor& k_cache,
                     const torch::Tensor& v_cache, const torch::Tensor& k_scale = {},
                     const torch::Tensor& v_scale = {}, bool reference = false);

}  // namespace tessera::kernels
