// CUDA paged attention. One block per (query token, query head): keys in the visible interval
// are scored a tile at a time (one key per thread, reading the page through the block table) and
// folded into an online softmax whose running output lives in shared memory. The cache format is
// a template parameter so the decode of each element compiles to straight-line code.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/common/block_reduce.cuh"
#include "kernels/paged/paged_attention.h"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 128;

template <KvDType T>
__global__ void paged_attention_kernel(PagedAttentionView a) {
  extern __shared__ float smem[];  // q[head_dim_k] | acc[head_dim_v] | p[kThreads] | red[32]
  const PagedKv& c = a.kv;
  float* q_s = smem;
  float* acc = q_s + c.head_dim_k;
  float* p_s = acc + c.head_dim_v;
  float* red = p_s + kThreads;
  __shared__ int64_t block_s[kThreads];
  __shared__ float vscale_s[kThreads];

  const int h = blockIdx.x % a.num_q_heads;
  const int64_t row = blockIdx.x / a.num_q_heads;
  const int kh = h / (a.num_q_heads / c.num_kv_heads);
  // The sequence of this query row: the last s with q_starts[s] <= row.
  int lo = 0, hi = a.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (a.q_starts[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int seq = lo;
  const int64_t len = a.seq_lens[seq];
  const int64_t q_len = a.q_starts[seq + 1] - a.q_starts[seq];
  const int64_t t = len - q_len + (row - a.q_starts[seq]);
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;

  const float* q = a.q + row * a.q_stride[0] + h * a.q_stride[1];
  for (int i = threadIdx.x; i < c.head_dim_k; i += kThreads) q_s[i] = q[i];
  for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) acc[i] = 0.f;
  __syncthreads();

  float running_max = -FLT_MAX;
  float running_sum = 0.f;
  for (int64_t base = paged_first_visible(t, a.window, a.chunk); base <= t; base += kThreads) {
    const int64_t p = base + threadIdx.x;
    float score = -FLT_MAX;
    if (p <= t) {
      const int64_t block = table[p / c.block_size];
      const int slot = static_cast<int>(p % c.block_size);
      block_s[threadIdx.x] = block;
      vscale_s[threadIdx.x] = c.v_scale_at(block, slot, kh);
      const void* k = c.k_row(block, slot, kh);
      const float ks = c.k_scale_at(block, slot, kh);
      float dot = 0.f;
      for (int i = 0; i < c.head_dim_k; ++i) dot += q_s[i] * kv_load(T, k, i, ks);
      score = dot * a.scale;
      if (a.softcap > 0.f) score = a.softcap * tanhf(score / a.softcap);
    }
    const float tile_max = block_max<kThreads>(score, red);
    const float new_max = fmaxf(running_max, tile_max);
    const float pr = score == -FLT_MAX ? 0.f : __expf(score - new_max);
    p_s[threadIdx.x] = pr;
    const float correction = running_max == -FLT_MAX ? 0.f : __expf(running_max - new_max);
    running_sum = running_sum * correction + block_sum<kThreads>(pr, red);
    running_max = new_max;
    const int tile = static_cast<int>(min(static_cast<int64_t>(kThreads), t - base + 1));
    for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) {
      float sum = acc[i] * correction;
      for (int j = 0; j < tile; ++j) {
        const float pj = p_s[j];
        if (pj != 0.f) {
          const int slot = static_cast<int>((base + j) % c.block_size);
          sum += pj * kv_load(T, c.v_row(block_s[j], slot, kh), i, vscale_s[j]);
        }
      }
      acc[i] = sum;
    }
    __syncthreads();
  }

  float* o = a.out + (row * a.num_q_heads + h) * c.head_dim_v;
  const bool empty = running_sum == 0.f;
  for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads)
    o[i] = empty ? 0.f : acc[i] / running_sum;
  if (a.lse != nullptr && threadIdx.x == 0) {
    a.lse[row * a.num_q_heads + h] = empty ? -INFINITY : running_max + logf(running_sum);
  }
}

}  // namespace

int paged_attention_cuda(const PagedAttentionView& view, void* cuda_stream) {
  const int64_t blocks = view.total_q * view.num_q_heads;
  if (blocks == 0) return 0;
  const size_t smem = (view.kv.head_dim_k + view.kv.head_dim_v + kThreads + 32) * sizeof(float);
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  const auto grid = static_cast<unsigned>(blocks);
  switch (view.kv.dtype) {
    case KvDType::kF32:
      paged_attention_kernel<KvDType::kF32><<<grid, kThreads, smem, stream>>>(view);
      break;
    case KvDType::kF16:
      paged_attention_kernel<KvDType::kF16><<<grid, kThreads, smem, stream>>>(view);
      break;
    case KvDType::kBF16:
      paged_attention_kernel<KvDType::kBF16><<<grid, kThreads, smem, stream>>>(view);
      break;
    case KvDType::kI8:
      paged_attention_kernel<KvDType::kI8><<<grid, kThreads, smem, stream>>>(view);
      break;
    case KvDType::kF8E4M3:
      paged_attention_kernel<KvDType::kF8E4M3><<<grid, kThreads, smem, stream>>>(view);
      break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace tessera::kernels
