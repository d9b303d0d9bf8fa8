// Attention of new query tokens over a paged KV cache (kernels/paged/paged_kv.h): prefill, extend
// and decode in one varlen form. Causal by position, optional sliding window and chunked-local
// masks, grouped-query heads, log-sum-exp output (for merging partial states across ranks or KV
// splits with kernels/merge). KV pages may be fp32, fp16, bf16, int8 or fp8 e4m3.
#pragma once

#include <cstdint>

#include "kernels/common/device_error.h"
#include "kernels/paged/paged_kv.h"

namespace tessera::kernels {

struct PagedAttentionView {
  const float* q = nullptr;               // [total_q, num_q_heads, head_dim_k], strides below
  PagedKv kv;                             // read only
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* seq_lens = nullptr;      // [num_seqs]: KV tokens, the new ones included
  // [num_seqs + 1]: cumulative query counts. The q_len = q_starts[s+1] - q_starts[s] queries of
  // sequence s are its last q_len tokens: query i sits at position seq_len - q_len + i. Decode is
  // q_starts = 0, 1, ..., num_seqs.
  const int32_t* q_starts = nullptr;
  float* out = nullptr;          // [total_q, num_q_heads, head_dim_v] contiguous
  float* lse = nullptr;          // [total_q, num_q_heads] contiguous, natural log; may be null
  int64_t q_stride[2] = {0, 0};  // elements between query tokens, heads; head_dim contiguous
  int64_t total_q = 0;
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  int num_q_heads = 0;  // a multiple of kv.num_kv_heads; query head h reads kv head h / group
  float scale = 1.0f;
  // > 0: each score (q.k * scale) becomes softcap * tanh(score / softcap) before the softmax
  // (Gemma 2's attention logit soft-capping); lse is of the capped scores.
  float softcap = 0.0f;
  // A key at position p is visible to the query at position t when p <= t and
  //   window > 0: t - p < window                (sliding window)
  //   chunk  > 0: p / chunk == t / chunk        (chunked-local attention)
  // A query that sees no key gets zeros and lse = -inf.
  int window = 0;
  int chunk = 0;
  // Fast CPU only: split each sequence's keys into this many ranges, computed in parallel and
  // merged by log-sum-exp (kernels/merge). 0 = automatic (split when a small batch of long
  // sequences would leave threads idle).
  int kv_splits = 0;
  // CUDA: where a kernel records block tables, lengths or query offsets that it found out of
  // range (it then skips them, never reading out of bounds); null = unchecked. The CPU kernels
  // trust metadata that the ops layer has checked.
  DeviceErrorSlot error;
};

// First key position a query at position t may see (the masks are all intervals ending at t).
TESSERA_HD int64_t paged_first_visible(int64_t t, int window, int chunk) {
  int64_t lo = 0;
  if (window > 0) lo = t - window + 1 > lo ? t - window + 1 : lo;
  if (chunk > 0) lo = (t / chunk) * chunk > lo ? (t / chunk) * chunk : lo;
  return lo;
}

// CPU reference: fp64 accumulation, plain loops.
void paged_attention_ref(const PagedAttentionView& view);
// Fast CPU: work items (sequence, kv head, query tile) in parallel (OpenMP); each item reads its
// keys once for all query heads of the group, with an online softmax over key chunks.
void paged_attention_cpu(const PagedAttentionView& view);
#ifdef TESSERA_WITH_CUDA
// CUDA: one block per (query token, query head), online softmax over key tiles. Returns a
// cudaError_t value (0 on success).
int paged_attention_cuda(const PagedAttentionView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
