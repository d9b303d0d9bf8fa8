// CUDA KV append: one warp per (token, kv_head) row of K and of V.
#include <cuda_runtime.h>

#include "kernels/common/device_error.cuh"
#include "kernels/paged/paged_kv_append.h"

namespace tessera::kernels {

namespace {

constexpr int kWarpsPerBlock = 4;

__device__ void store_row(const float* x, int n, KvDType t, void* dst, float* scale, int lane) {
  float s = 1.0f;
  if (kv_is_quantised(t)) {
    float amax = 0.0f;
    for (int i = lane; i < n; i += 32) amax = fmaxf(amax, fabsf(x[i]));
    for (int off = 16; off > 0; off /= 2)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    s = kv_scale_from_amax(t, amax);
    if (lane == 0) *scale = s;
  }
  for (int i = lane; i < n; i += 32) {
    switch (t) {
      case KvDType::kF32:
        static_cast<float*>(dst)[i] = x[i];
        break;
      case KvDType::kF16:
        static_cast<uint16_t*>(dst)[i] = kv_float_to_half(x[i]);
        break;
      case KvDType::kBF16:
        static_cast<uint16_t*>(dst)[i] = kv_float_to_bf16(x[i]);
        break;
      case KvDType::kI8:
        static_cast<int8_t*>(dst)[i] = quantise_int8(x[i], s);
        break;
      case KvDType::kF8E4M3:
        static_cast<uint8_t*>(dst)[i] = float_to_e4m3(x[i] / s);
        break;
    }
  }
}

__global__ void append_kernel(PagedKvAppendView a) {
  const PagedKv& c = a.cache;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.num_tokens * c.num_kv_heads) return;
  const int64_t t = row / c.num_kv_heads;
  const int h = static_cast<int>(row % c.num_kv_heads);
  const int64_t slot = a.slot_mapping[t];
  if (slot < 0) return;  // padding
  if (slot >= c.num_blocks * c.block_size) {
    // The CPU path refuses this before writing anything; here the token is skipped and the error
    // recorded for the host (raised at the next op on this device).
    if (h == 0 && lane == 0) {
      report_device_error(a.error, MetadataCheck::kSlotOutOfRange, t, 0, slot,
                          c.num_blocks * c.block_size);
    }
    return;
  }
  const int64_t block = slot / c.block_size;
  const int off = static_cast<int>(slot % c.block_size);
  const int64_t sidx = static_cast<int64_t>(off) * c.num_kv_heads + h;
  store_row(a.key + t * a.key_stride[0] + h * a.key_stride[1], c.head_dim_k, c.dtype,
            const_cast<void*>(c.k_row(block, off, h)),
            c.k_scale ? c.k_scale + block * c.k_scale_block_stride + sidx : nullptr, lane);
  store_row(a.value + t * a.value_stride[0] + h * a.value_stride[1], c.head_dim_v, c.dtype,
            const_cast<void*>(c.v_row(block, off, h)),
            c.v_scale ? c.v_scale + block * c.v_scale_block_stride + sidx : nullptr, lane);
}

}  // namespace

int paged_kv_append_cuda(const PagedKvAppendView& view, void* cuda_stream) {
  const int64_t rows = view.num_tokens * view.cache.num_kv_heads;
  if (rows == 0) return 0;
  const auto grid = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  append_kernel<<<grid, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(cuda_stream)>>>(view);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
