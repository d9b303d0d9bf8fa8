// CUDA paged attention. One block per (query token, query head): keys in the visible interval
// are scored a tile at a time (one key per thread, reading the page through the block table) and
// folded into an online softmax whose running output lives in shared memory. The cache format is
// a template parameter so the decode of each element compiles to straight-line code.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/common/block_reduce.cuh"
#include "kernels/common/device_error.cuh"
#include "kernels/paged/paged_attention.h"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 128;

// Whether the metadata of query row `row` (in sequence `seq`, from the binary search over
// q_starts) lets it be computed in bounds; if not, reports the failing check. Block 0 also checks
// the two ends of q_starts, as the CPU path does first.
__device__ bool row_metadata_ok(const PagedAttentionView& a, int64_t row, int seq) {
  const int64_t first = a.q_starts[0], last = a.q_starts[a.num_seqs];
  const bool ends_ok = first == 0 && last == a.total_q;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    if (first != 0) {
      report_device_error(a.error, MetadataCheck::kQStartsFirst, 0, 0, first, 0);
    } else if (last != a.total_q) {
      report_device_error(a.error, MetadataCheck::kQStartsLast, a.num_seqs, 0, last, a.total_q);
    }
  }
  if (!ends_ok || a.num_seqs == 0) return false;
  const int64_t q0 = a.q_starts[seq], q1 = a.q_starts[seq + 1];
  if (q0 > row || row >= q1) {
    // q_starts decreases somewhere (the search went astray): name the first such pair.
    if (threadIdx.x == 0) {
      for (int s = 0; s < a.num_seqs; ++s) {
        if (a.q_starts[s] > a.q_starts[s + 1]) {
          report_device_error(a.error, MetadataCheck::kQStartsDecreasing, s, 0, a.q_starts[s],
                              a.q_starts[s + 1]);
          break;
        }
      }
    }
    return false;
  }
  const int64_t len = a.seq_lens[seq], q_len = q1 - q0;
  const int64_t capacity = static_cast<int64_t>(a.max_blocks_per_seq) * a.kv.block_size;
  if (len < q_len) {
    if (threadIdx.x == 0)
      report_device_error(a.error, MetadataCheck::kSeqLenShort, seq, 0, len, q_len);
    return false;
  }
  if (len > capacity) {
    if (threadIdx.x == 0) {
      report_device_error(a.error, MetadataCheck::kSeqLenLong, seq, 0, len, capacity);
    }
    return false;
  }
  return true;
}

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
  float* o = a.out + (row * a.num_q_heads + h) * c.head_dim_v;
  // Metadata checks, the entries the CPU path checks before launching: a bad one is recorded
  // for the host (raised at the next op) and poisons this row with NaN; nothing out of bounds is
  // read. Every thread of the block sees the same values, so the early return is uniform.
  if (!row_metadata_ok(a, row, seq)) {
    for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) o[i] = NAN;
    if (a.lse != nullptr && threadIdx.x == 0) a.lse[row * a.num_q_heads + h] = NAN;
    return;
  }
  const int64_t len = a.seq_lens[seq];
  const int64_t q_len = a.q_starts[seq + 1] - a.q_starts[seq];
  const int64_t t = len - q_len + (row - a.q_starts[seq]);
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;
  bool bad_block = false;

  const float* q = a.q + row * a.q_stride[0] + h * a.q_stride[1];
  for (int i = threadIdx.x; i < c.head_dim_k; i += kThreads) q_s[i] = q[i];
  for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) acc[i] = 0.f;
  __syncthreads();

  float running_max = -FLT_MAX;
  float running_sum = 0.f;
  for (int64_t base = paged_first_visible(t, a.window, a.chunk); base <= t; base += kThreads) {
    const int64_t p = base + threadIdx.x;
    float score = -FLT_MAX;
    block_s[threadIdx.x] = 0;  // block 0 exists: a skipped key never points outside the cache
    vscale_s[threadIdx.x] = 1.f;
    if (p <= t) {
      const int64_t block = table[p / c.block_size];
      const int slot = static_cast<int>(p % c.block_size);
      if (block < 0 || block >= c.num_blocks) {
        report_device_error(a.error, MetadataCheck::kBlockOutOfRange, seq, p / c.block_size, block,
                            c.num_blocks);
        bad_block = true;  // score stays -FLT_MAX: weight 0, its value never read
      } else {
        block_s[threadIdx.x] = block;
        vscale_s[threadIdx.x] = c.v_scale_at(block, slot, kh);
        const void* k = c.k_row(block, slot, kh);
        const float ks = c.k_scale_at(block, slot, kh);
        float dot = 0.f;
        for (int i = 0; i < c.head_dim_k; ++i) dot += q_s[i] * kv_load(T, k, i, ks);
        score = dot * a.scale;
        if (a.softcap > 0.f) score = a.softcap * tanhf(score / a.softcap);
      }
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

  const bool empty = running_sum == 0.f;
  const bool poisoned = __syncthreads_or(bad_block) != 0;  // a key of this row had a bad block
  for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads)
    o[i] = poisoned ? NAN : empty ? 0.f : acc[i] / running_sum;
  if (a.lse != nullptr && threadIdx.x == 0) {
    a.lse[row * a.num_q_heads + h] = poisoned ? NAN
                                     : empty  ? -INFINITY
                                              : running_max + logf(running_sum);
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
