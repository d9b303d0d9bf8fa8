// CUDA sparse decode. One block per (sequence, query head, split): the split's entries are scored
// a tile at a time (one entry per thread, reading its page through the block table) and folded
// into an online softmax whose running output lives in shared memory. With several splits the
// partial states land in the workspace and kernels/merge combines them. The page format is a
// template parameter so the decode of each element compiles to straight-line code.
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/common/block_reduce.cuh"
#include "kernels/common/device_error.cuh"
#include "kernels/merge/lse_merge.h"
#include "kernels/sparse_decode/sparse_attention.h"

namespace tessera::kernels {

namespace {

constexpr int kThreads = 128;

template <KvDType T>
__global__ void sparse_decode_kernel(SparseDecodeView a, int splits, float* part_out,
                                     float* part_lse) {
  extern __shared__ float smem[];  // q[head_dim_k] | acc[head_dim_v] | p[kThreads] | red[32]
  const PagedKv& c = a.kv;
  float* q_s = smem;
  float* acc = q_s + c.head_dim_k;
  float* p_s = acc + c.head_dim_v;
  float* red = p_s + kThreads;
  __shared__ int64_t block_s[kThreads];
  __shared__ int slot_s[kThreads];
  __shared__ float vscale_s[kThreads];

  const int64_t row = blockIdx.x;  // seq * num_q_heads + h
  const int split = blockIdx.y;
  const int h = static_cast<int>(row % a.num_q_heads);
  const int seq = static_cast<int>(row / a.num_q_heads);
  const int kh = h / (a.num_q_heads / c.num_kv_heads);
  const int64_t list = static_cast<int64_t>(seq) * c.num_kv_heads + kh;
  const int32_t* idx = a.idx + list * a.max_entries;
  int64_t n = a.counts[list];
  const int32_t* table = a.block_tables + static_cast<int64_t>(seq) * a.max_blocks_per_seq;
  // Metadata checks (the CPU dispatch's, same messages): the first bad entry is recorded, and no
  // bad entry is read through. Sequence-wide ones in one block of the sequence, a list's count in
  // one block of its query group.
  const bool checks = a.error.record != nullptr && a.seq_lens != nullptr;
  const int64_t capacity = static_cast<int64_t>(a.max_blocks_per_seq) * c.block_size;
  int64_t readable = capacity;  // positions [0, readable) may be read
  int64_t len = capacity;
  if (checks) {
    len = a.seq_lens[seq];
    readable = len < 0 ? 0 : (len > capacity ? capacity : len);
    if (h == 0 && split == 0) {
      if (threadIdx.x == 0 && len < 0) {
        report_device_error(a.error, MetadataCheck::kSeqLenNegative, seq, 0, len, 0);
      }
      if (threadIdx.x == 0 && len > capacity) {
        report_device_error(a.error, MetadataCheck::kSeqLenLong, seq, 0, len, capacity);
      }
      const int64_t used = (readable + c.block_size - 1) / c.block_size;
      for (int64_t b = threadIdx.x; b < used; b += kThreads) {
        if (table[b] < 0 || table[b] >= c.num_blocks) {
          report_device_error(a.error, MetadataCheck::kBlockOutOfRange, seq, b, table[b],
                              c.num_blocks);
        }
      }
    }
    if (n < 0 || n > a.max_entries) {
      if (h % (a.num_q_heads / c.num_kv_heads) == 0 && split == 0 && threadIdx.x == 0) {
        report_device_error(a.error, MetadataCheck::kCountOutOfRange, seq, kh, n, a.max_entries);
      }
      n = n < 0 ? 0 : a.max_entries;
    }
  }
  const int64_t e_begin = n * split / splits, e_end = n * (split + 1) / splits;

  const float* q = a.q + seq * a.q_stride[0] + h * a.q_stride[1];
  for (int i = threadIdx.x; i < c.head_dim_k; i += kThreads) q_s[i] = q[i];
  for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) acc[i] = 0.f;
  __syncthreads();

  float running_max = -FLT_MAX;
  float running_sum = 0.f;
  for (int64_t base = e_begin; base < e_end; base += kThreads) {
    const int64_t e = base + threadIdx.x;
    float score = -FLT_MAX;
    bool valid = e < e_end;
    int64_t p = 0, block = 0;
    if (valid) {
      p = idx[e];
      if (checks && (p < 0 || p >= len)) {
        report_device_error(a.error, MetadataCheck::kEntryOutOfRange, seq, kh, p, len,
                            static_cast<int32_t>(e));
      }
      valid = p >= 0 && p < readable;
      if (valid) block = table[p / c.block_size];
      // A bad table entry is recorded by the sequence's checks above.
      valid = valid && (!checks || (block >= 0 && block < c.num_blocks));
    }
    if (!valid) {
      block_s[threadIdx.x] = 0;
      slot_s[threadIdx.x] = -1;  // skipped below
      vscale_s[threadIdx.x] = 0.f;
    } else {
      const int slot = static_cast<int>(p % c.block_size);
      block_s[threadIdx.x] = block;
      slot_s[threadIdx.x] = slot;
      vscale_s[threadIdx.x] = c.v_scale_at(block, slot, kh);
      const void* k = c.k_row(block, slot, kh);
      const float ks = c.k_scale_at(block, slot, kh);
      float dot = 0.f;
      for (int i = 0; i < c.head_dim_k; ++i) dot += q_s[i] * kv_load(T, k, i, ks);
      score = dot * a.scale;
    }
    const float tile_max = block_max<kThreads>(score, red);
    const float new_max = fmaxf(running_max, tile_max);
    const float pr = valid ? __expf(score - new_max) : 0.f;
    p_s[threadIdx.x] = pr;
    const float correction = running_max == -FLT_MAX ? 0.f : __expf(running_max - new_max);
    running_sum = running_sum * correction + block_sum<kThreads>(pr, red);
    running_max = new_max;
    const int tile = static_cast<int>(min(static_cast<int64_t>(kThreads), e_end - base));
    for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) {
      float sum = acc[i] * correction;
      for (int j = 0; j < tile; ++j) {
        if (slot_s[j] < 0) continue;  // an entry that failed the checks (uniform across threads)
        sum += p_s[j] * kv_load(T, c.v_row(block_s[j], slot_s[j], kh), i, vscale_s[j]);
      }
      acc[i] = sum;
    }
    __syncthreads();
  }

  const bool empty = e_end <= e_begin;  // an empty range: zeros, lse = -inf
  float* o =
      splits > 1 ? part_out + (split * gridDim.x + row) * c.head_dim_v : a.out + row * c.head_dim_v;
  float* lse = splits > 1 ? part_lse + split * gridDim.x + row : (a.lse ? a.lse + row : nullptr);
  for (int i = threadIdx.x; i < c.head_dim_v; i += kThreads) {
    o[i] = empty ? 0.f : acc[i] / running_sum;
  }
  if (lse != nullptr && threadIdx.x == 0) {
    *lse = empty ? -INFINITY : running_max + logf(running_sum);
  }
}

}  // namespace

int64_t sparse_decode_cuda_workspace(const SparseDecodeView& view, int splits) {
  if (splits <= 1) return 0;
  const int64_t rows = static_cast<int64_t>(view.num_seqs) * view.num_q_heads;
  return static_cast<int64_t>(splits) * rows * (view.kv.head_dim_v + 1);
}

int sparse_decode_cuda(const SparseDecodeView& view, int splits, float* workspace,
                       void* cuda_stream) {
  const int64_t rows = static_cast<int64_t>(view.num_seqs) * view.num_q_heads;
  if (rows == 0) return 0;
  if (splits < 1) splits = 1;
  float* part_out = splits > 1 ? workspace : nullptr;
  float* part_lse = splits > 1 ? workspace + splits * rows * view.kv.head_dim_v : nullptr;
  const size_t smem = (view.kv.head_dim_k + view.kv.head_dim_v + kThreads + 32) * sizeof(float);
  const auto stream = static_cast<cudaStream_t>(cuda_stream);
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
  switch (view.kv.dtype) {
    case KvDType::kF32:
      sparse_decode_kernel<KvDType::kF32>
          <<<grid, kThreads, smem, stream>>>(view, splits, part_out, part_lse);
      break;
    case KvDType::kF16:
      sparse_decode_kernel<KvDType::kF16>
          <<<grid, kThreads, smem, stream>>>(view, splits, part_out, part_lse);
      break;
    case KvDType::kBF16:
      sparse_decode_kernel<KvDType::kBF16>
          <<<grid, kThreads, smem, stream>>>(view, splits, part_out, part_lse);
      break;
    case KvDType::kI8:
      sparse_decode_kernel<KvDType::kI8>
          <<<grid, kThreads, smem, stream>>>(view, splits, part_out, part_lse);
      break;
    case KvDType::kF8E4M3:
      sparse_decode_kernel<KvDType::kF8E4M3>
          <<<grid, kThreads, smem, stream>>>(view, splits, part_out, part_lse);
      break;
  }
  int rc = static_cast<int>(cudaGetLastError());
  if (rc != 0 || splits == 1) return rc;
  LseMergeView m;
  m.outs = part_out;
  m.lses = part_lse;
  m.out = view.out;
  m.lse = view.lse;
  m.num_parts = splits;
  m.rows = rows;
  m.head_dim = view.kv.head_dim_v;
  return lse_merge_cuda(m, cuda_stream);
}

}  // namespace tessera::kernels
