#include "kernels/ops/paged_kv_append_ops.h"

#include "kernels/common/device_error.h"
#include "kernels/ops/paged_kv_tensors.h"
#include "kernels/ops/route.h"
#include "kernels/paged/paged_kv_append.h"

namespace tessera::kernels {

namespace {

torch::Tensor as_rows(const torch::Tensor& x, const char* name, int64_t tokens, int64_t heads,
                      int64_t head_dim) {
  TESSERA_CHECK(x.dim() == 3, name, " must be 3-D [num_tokens, num_kv_heads, head_dim], got ",
                x.sizes());
  TESSERA_CHECK(x.size(0) == tokens && x.size(1) == heads && x.size(2) == head_dim, name,
                " must be [", tokens, ", ", heads, ", ", head_dim, "] to match the cache, got ",
                x.sizes());
  TESSERA_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kHalf ||
                    x.scalar_type() == torch::kBFloat16,
                name, " must be float32, float16 or bfloat16, got ", x.scalar_type());
  auto f = x.scalar_type() == torch::kFloat ? x : x.to(torch::kFloat);
  if (f.size(2) > 1 && f.stride(2) != 1) f = f.contiguous();
  return f;
}

}  // namespace

void paged_kv_append(const torch::Tensor& key, const torch::Tensor& value,
                     const torch::Tensor& slot_mapping, const torch::Tensor& k_cache,
                     const torch::Tensor& v_cache, const torch::Tensor& k_scale,
                     const torch::Tensor& v_scale, bool reference) {
  PagedKv kv = detail::paged_kv_from_tensors(k_cache, v_cache, k_scale, v_scale);
  TESSERA_CHECK(slot_mapping.dim() == 1 && (slot_mapping.scalar_type() == torch::kInt ||
                                            slot_mapping.scalar_type() == torch::kLong),
                "slot_mapping must be int32 or int64 [num_tokens], got ",
                slot_mapping.scalar_type(), " ", slot_mapping.sizes());
  const int64_t tokens = slot_mapping.size(0);
  auto k = as_rows(key, "key", tokens, kv.num_kv_heads, kv.head_dim_k);
  auto v = as_rows(value, "value", tokens, kv.num_kv_heads, kv.head_dim_v);
  for (const auto* t : {&key, &value, &slot_mapping}) {
    TESSERA_CHECK(t->device() == k_cache.device(), "all inputs must be on the cache's device ",
                  k_cache.device(), ", got ", t->device());
  }
  auto slots = slot_mapping.to(torch::kLong).contiguous();
  // Slots beyond the cache are refused: here for CPU tensors, on the device (same message,
  // raised at the next op; the kernel skips the token) for CUDA ones. Negative slots are padding.
  if (slots.device().is_cpu()) {
    const int64_t capacity = kv.num_blocks * kv.block_size;
    const auto* s = slots.data_ptr<int64_t>();
    for (int64_t t = 0; t < tokens; ++t) {
      if (s[t] >= capacity) {
        TESSERA_FAIL(metadata_error_message(MetadataCheck::kSlotOutOfRange, t, 0, s[t], capacity));
      }
    }
  }
  PagedKvAppendView view;
  view.key = k.data_ptr<float>();
  view.value = v.data_ptr<float>();
  view.slot_mapping = slots.data_ptr<int64_t>();
  view.cache = kv;
  view.key_stride[0] = k.stride(0);
  view.key_stride[1] = k.stride(1);
  view.value_stride[0] = v.stride(0);
  view.value_stride[1] = v.stride(1);
  view.num_tokens = tokens;
  route(
      "paged_kv_append", k_cache.device(), reference, [&] { paged_kv_append_ref(view); },
      [&] { paged_kv_append_cpu(view); }, TESSERA_CUDA_IMPL([&](void* stream) {
        view.error = device_error_slot(detail::cuda_index_of(k_cache.device()));
        return paged_kv_append_cuda(view, stream);
      }));
}

}  // namespace tessera::kernels
