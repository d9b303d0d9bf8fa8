// Block-wide max and sum for CUDA kernels whose block is kThreads threads (a multiple of 32):
// a warp shuffle, then one value per warp through `red` (shared memory, kThreads / 32 floats).
// Every thread gets the result; both calls synchronise the block, so all threads must call them.
#pragma once

#include <cfloat>

namespace tessera::kernels {

template <int kThreads>
__device__ inline float block_max(float x, float* red) {
  static_assert(kThreads % 32 == 0, "block size must be whole warps");
  for (int off = 16; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float m = -FLT_MAX;
  for (int w = 0; w < kThreads / 32; ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  return m;
}

template <int kThreads>
__device__ inline float block_sum(float x, float* red) {
  static_assert(kThreads % 32 == 0, "block size must be whole warps");
  for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) s += red[w];
  __syncthreads();
  return s;
}

}  // namespace tessera::kernels
