// CUDA KV quantisation: one warp per row; the row's amax is a warp reduction.
#include <cuda_runtime.h>

#include "kernels/quant/kv_quant.h"

namespace tessera::kernels {

namespace {

constexpr int kWarpsPerBlock = 4;

__global__ void quantise_kernel(KvQuantView v) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= v.rows) return;
  const float* x = v.x + r * v.x_row_stride;
  float amax = 0.0f;
  for (int i = lane; i < v.head_dim; i += 32) amax = fmaxf(amax, fabsf(x[i]));
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float scale = kv_scale_from_amax(v.dtype, amax);
  if (lane == 0) v.scale[r] = scale;
  if (v.dtype == KvDType::kI8) {
    int8_t* q = static_cast<int8_t*>(v.q) + r * v.head_dim;
    for (int i = lane; i < v.head_dim; i += 32) q[i] = quantise_int8(x[i], scale);
  } else {
    uint8_t* q = static_cast<uint8_t*>(v.q) + r * v.head_dim;
    for (int i = lane; i < v.head_dim; i += 32) q[i] = float_to_e4m3(x[i] / scale);
  }
}

__global__ void dequantise_kernel(KvDequantView v) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= v.rows) return;
  const float scale = v.scale[r];
  const void* row = static_cast<const uint8_t*>(v.q) + r * v.head_dim;
  float* x = v.x + r * v.head_dim;
  for (int i = lane; i < v.head_dim; i += 32) x[i] = kv_load(v.dtype, row, i, scale);
}

unsigned grid_for(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

int kv_quantise_cuda(const KvQuantView& view, void* cuda_stream) {
  if (view.rows == 0) return 0;
  quantise_kernel<<<grid_for(view.rows), kWarpsPerBlock * 32, 0,
                    static_cast<cudaStream_t>(cuda_stream)>>>(view);
  return static_cast<int>(cudaGetLastError());
}

int kv_dequantise_cuda(const KvDequantView& view, void* cuda_stream) {
  if (view.rows == 0) return 0;
  dequantise_kernel<<<grid_for(view.rows), kWarpsPerBlock * 32, 0,
                      static_cast<cudaStream_t>(cuda_stream)>>>(view);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
