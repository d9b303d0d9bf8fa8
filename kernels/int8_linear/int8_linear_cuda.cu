// CUDA int8 weight-only linear: one warp per output element (row of x, output channel), the int8
// row read four bytes at a time where k allows it, a warp reduction, then scale and bias. The
// quantiser: one warp per row of W (absmax by warp reduction, then the shared rounding rule).
#include <cuda_runtime.h>

#include "kernels/int8_linear/int8_linear.h"
#include "kernels/quant/kv_format.h"

namespace tessera::kernels {

namespace {

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float load_w(DType t, const void* p, int64_t i) {
  if (t == DType::kF16) return kv_half_to_float(static_cast<const uint16_t*>(p)[i]);
  if (t == DType::kBF16) return kv_bf16_to_float(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

__global__ void quantise_kernel(Int8QuantiseView v) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= v.n) return;
  float amax = 0.0f;
  for (int64_t j = lane; j < v.k; j += 32)
    amax = fmaxf(amax, fabsf(load_w(v.dtype, v.w, r * v.k + j)));
  for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  const float scale = kv_scale_from_amax(KvDType::kI8, amax);
  if (lane == 0) v.scale[r] = scale;
  for (int64_t j = lane; j < v.k; j += 32) {
    v.q[r * v.k + j] = quantise_int8(load_w(v.dtype, v.w, r * v.k + j), scale);
  }
}

__global__ void linear_kernel(Int8LinearView v) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int64_t i = blockIdx.y;
  const int lane = threadIdx.x % 32;
  if (o >= v.n) return;
  const float* x = v.x + i * v.x_row_stride;
  const int8_t* w = v.w + o * v.k;
  float sum = 0.0f;
  // Four weights per load when every row starts 4-byte aligned (k % 4 == 0).
  if (v.k % 4 == 0 && (reinterpret_cast<uintptr_t>(v.w) & 3) == 0) {
    const auto* w4 = reinterpret_cast<const char4*>(w);
    for (int64_t j = lane; j < v.k / 4; j += 32) {
      const char4 q = w4[j];
      sum += x[4 * j] * q.x + x[4 * j + 1] * q.y + x[4 * j + 2] * q.z + x[4 * j + 3] * q.w;
    }
  } else {
    for (int64_t j = lane; j < v.k; j += 32) sum += x[j] * static_cast<float>(w[j]);
  }
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) {
    v.y[i * v.y_row_stride + o] = sum * v.scale[o] + (v.bias != nullptr ? v.bias[o] : 0.0f);
  }
}

}  // namespace

int int8_quantise_cuda(const Int8QuantiseView& v, void* cuda_stream) {
  if (v.n == 0 || v.k == 0) return 0;
  const auto grid = static_cast<unsigned>((v.n + kWarpsPerBlock - 1) / kWarpsPerBlock);
  quantise_kernel<<<grid, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(cuda_stream)>>>(v);
  return static_cast<int>(cudaGetLastError());
}

int int8_linear_cuda(const Int8LinearView& v, void* cuda_stream) {
  if (v.m == 0) return 0;
  // Channels on x (up to 2^31 - 1 blocks), rows of x on y (at most 65535 per launch).
  const auto channel_blocks = static_cast<unsigned>((v.n + kWarpsPerBlock - 1) / kWarpsPerBlock);
  for (int64_t i0 = 0; i0 < v.m; i0 += 65535) {
    Int8LinearView part = v;
    part.x = v.x + i0 * v.x_row_stride;
    part.y = v.y + i0 * v.y_row_stride;
    part.m = v.m - i0 < 65535 ? v.m - i0 : 65535;
    const dim3 grid(channel_blocks, static_cast<unsigned>(part.m));
    linear_kernel<<<grid, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(cuda_stream)>>>(part);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

}  // namespace tessera::kernels
