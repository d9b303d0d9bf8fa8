// CUDA LSE merge: one warp per row; lanes stride over head_dim.
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/merge/lse_merge.h"

namespace tessera::kernels {

namespace {

constexpr int kWarpsPerBlock = 4;

__global__ void lse_merge_kernel(LseMergeView m) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= m.rows) return;
  float max_lse = -INFINITY;
  for (int64_t p = 0; p < m.num_parts; ++p) max_lse = fmaxf(max_lse, m.lses[p * m.rows + r]);
  float* o = m.out + r * m.head_dim;
  if (max_lse == -INFINITY) {
    for (int64_t i = lane; i < m.head_dim; i += 32) o[i] = 0.f;
    if (m.lse != nullptr && lane == 0) m.lse[r] = -INFINITY;
    return;
  }
  float denom = 0.f;
  for (int64_t p = 0; p < m.num_parts; ++p) denom += expf(m.lses[p * m.rows + r] - max_lse);
  const float inv = 1.f / denom;
  for (int64_t i = lane; i < m.head_dim; i += 32) {
    float acc = 0.f;
    for (int64_t p = 0; p < m.num_parts; ++p) {
      const float l = m.lses[p * m.rows + r];
      if (l == -INFINITY) continue;
      acc += expf(l - max_lse) * inv * m.outs[(p * m.rows + r) * m.head_dim + i];
    }
    o[i] = acc;
  }
  if (m.lse != nullptr && lane == 0) m.lse[r] = max_lse + logf(denom);
}

}  // namespace

int lse_merge_cuda(const LseMergeView& view, void* cuda_stream) {
  if (view.rows == 0) return 0;
  const auto grid = static_cast<unsigned>((view.rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  lse_merge_kernel<<<grid, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(cuda_stream)>>>(view);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
