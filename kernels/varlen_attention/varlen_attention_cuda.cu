// CUDA varlen bidirectional attention. One block per (query token, query head): the keys of the
// query's visible interval are scored a tile at a time (one key per thread) and folded into an
// online softmax whose running output lives in shared memory.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/common/block_reduce.cuh"
#include "kernels/varlen_attention/varlen_attention.h"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 128;

__global__ void varlen_attention_kernel(VarlenAttentionView a) {
  extern __shared__ float smem[];  // q[head_dim] | acc[head_dim] | p[kThreads] | red[32]
  const int d = a.head_dim;
  float* q_s = smem;
  float* acc = q_s + d;
  float* p_s = acc + d;
  float* red = p_s + kThreads;

  const int h = blockIdx.x % a.num_q_heads;
  const int64_t row = blockIdx.x / a.num_q_heads;
  const int kh = h / (a.num_q_heads / a.num_kv_heads);
  // The sequence of this token: the last s with cu_seqlens[s] <= row.
  int lo = 0, hi = a.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.cu_seqlens[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  // Empty sequences share their start with the next one: step past them.
  while (lo + 1 < a.num_seqs && a.cu_seqlens[lo + 1] <= row) ++lo;
  const int64_t start = a.cu_seqlens[lo];
  const int64_t len = a.cu_seqlens[lo + 1] - start;
  int64_t first = 0, last = 0;
  varlen_visible(row - start, len, a.window, &first, &last);

  const float* q = a.q + row * a.q_stride[0] + h * a.q_stride[1];
  for (int i = threadIdx.x; i < d; i += kThreads) q_s[i] = q[i];
  for (int i = threadIdx.x; i < d; i += kThreads) acc[i] = 0.f;
  __syncthreads();

  float running_max = -FLT_MAX;
  float running_sum = 0.f;
  for (int64_t base = first; base <= last; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    float score = -FLT_MAX;
    if (j <= last) {
      const float* k = a.k + (start + j) * a.k_stride[0] + kh * a.k_stride[1];
      float dot = 0.f;
      for (int i = 0; i < d; ++i) dot += q_s[i] * k[i];
      score = dot * a.scale;
    }
    const float tile_max = block_max<kThreads>(score, red);
    const float new_max = fmaxf(running_max, tile_max);
    const float pr = score == -FLT_MAX ? 0.f : __expf(score - new_max);
    p_s[threadIdx.x] = pr;
    const float correction = running_max == -FLT_MAX ? 0.f : __expf(running_max - new_max);
    running_sum = running_sum * correction + block_sum<kThreads>(pr, red);
    running_max = new_max;
    const int tile = static_cast<int>(min(static_cast<int64_t>(kThreads), last - base + 1));
    for (int i = threadIdx.x; i < d; i += kThreads) {
      float sum = acc[i] * correction;
      for (int t = 0; t < tile; ++t) {
        const float* v = a.v + (start + base + t) * a.v_stride[0] + kh * a.v_stride[1];
        sum += p_s[t] * v[i];
      }
      acc[i] = sum;
    }
    __syncthreads();
  }

  float* o = a.out + (row * a.num_q_heads + h) * d;
  for (int i = threadIdx.x; i < d; i += kThreads) o[i] = acc[i] / running_sum;
  if (a.lse != nullptr && threadIdx.x == 0) {
    a.lse[row * a.num_q_heads + h] = running_max + logf(running_sum);
  }
}

}  // namespace

int varlen_attention_cuda(const VarlenAttentionView& view, void* cuda_stream) {
  const int64_t blocks = view.total * view.num_q_heads;
  if (blocks == 0) return 0;
  const size_t smem = (2 * view.head_dim + kThreads + 32) * sizeof(float);
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  varlen_attention_kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(view);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
