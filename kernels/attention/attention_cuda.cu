// CUDA attention over a positioned KV buffer (see attention.h). One block per (batch, query, head);
// keys are scored a tile at a time (one key per thread) and folded into an online softmax whose
// running output lives in shared memory.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/attention/attention.h"
#include "kernels/common/block_reduce.cuh"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 128;

__global__ void attention_kernel(AttentionView a) {
  extern __shared__ float smem[];  // q[head_dim] | acc[head_dim] | p[kThreads] | red[32]
  float* q_s = smem;
  float* acc = q_s + a.head_dim;
  float* p_s = acc + a.head_dim;
  float* red = p_s + kThreads;

  const int h = blockIdx.x % a.num_q_heads;
  const int t = (blockIdx.x / a.num_q_heads) % a.q_len;
  const int b = blockIdx.x / (a.num_q_heads * a.q_len);
  const int kh = h / (a.num_q_heads / a.num_kv_heads);
  const long long qp = a.q_pos[static_cast<long long>(b) * a.q_len + t];

  const float* q = a.q + b * a.q_stride[0] + t * a.q_stride[1] + h * a.q_stride[2];
  for (int i = threadIdx.x; i < a.head_dim; i += kThreads) {
    q_s[i] = q[i];
    acc[i] = 0.f;
  }
  __syncthreads();

  float running_max = -FLT_MAX;
  float running_sum = 0.f;
  for (int base = 0; base < a.kv_len; base += kThreads) {
    const int s = base + threadIdx.x;
    float score = -FLT_MAX;
    if (s < a.kv_len) {
      const long long kp = a.k_pos[static_cast<long long>(b) * a.kv_len + s];
      if (kp >= 0 && kp <= qp && (a.window <= 0 || qp - kp < a.window)) {
        const float* k = a.k + b * a.k_stride[0] + s * a.k_stride[1] + kh * a.k_stride[2];
        float dot = 0.f;
        for (int i = 0; i < a.head_dim; ++i) dot += q_s[i] * k[i];
        score = dot * a.scale;
      }
    }
    const float tile_max = block_max<kThreads>(score, red);
    if (tile_max == -FLT_MAX) continue;  // nothing visible in this tile
    const float new_max = fmaxf(running_max, tile_max);
    const float p = score == -FLT_MAX ? 0.f : __expf(score - new_max);
    p_s[threadIdx.x] = p;
    const float correction = running_max == -FLT_MAX ? 0.f : __expf(running_max - new_max);
    running_sum = running_sum * correction + block_sum<kThreads>(p, red);
    running_max = new_max;
    const int tile = min(kThreads, a.kv_len - base);
    for (int i = threadIdx.x; i < a.head_dim; i += kThreads) {
      float sum = acc[i] * correction;
      for (int j = 0; j < tile; ++j) {
        const float pj = p_s[j];
        if (pj != 0.f) {
          sum += pj * a.v[b * a.v_stride[0] + (base + j) * a.v_stride[1] + kh * a.v_stride[2] + i];
        }
      }
      acc[i] = sum;
    }
    __syncthreads();
  }

  float* o = a.out + ((static_cast<long long>(b) * a.q_len + t) * a.num_q_heads + h) * a.head_dim;
  const bool empty = running_sum == 0.f;
  for (int i = threadIdx.x; i < a.head_dim; i += kThreads)
    o[i] = empty ? 0.f : acc[i] / running_sum;
  if (a.lse != nullptr && threadIdx.x == 0) {
    a.lse[(static_cast<long long>(b) * a.num_q_heads + h) * a.q_len + t] =
        empty ? -INFINITY : running_max + logf(running_sum);
  }
}

}  // namespace

int attention_cuda(const AttentionView& view, void* cuda_stream) {
  const long long blocks = static_cast<long long>(view.batch) * view.q_len * view.num_q_heads;
  if (blocks == 0) return 0;
  const size_t smem = (2 * view.head_dim + kThreads + 32) * sizeof(float);
  attention_kernel<<<static_cast<unsigned>(blocks), kThreads, smem,
                     static_cast<cudaStream_t>(cuda_stream)>>>(view);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
