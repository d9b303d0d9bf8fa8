// Bidirectional attention over a packed ("unpadded") batch, as encoders need it: the sequences of a
// batch are concatenated along the token axis and cu_seqlens marks where each begins
// (flash-attention's varlen layout), so a batch of mixed lengths costs its real tokens only. Each
// query sees the keys of its own sequence — all of them, or those within a symmetric local window
// |i - j| <= window (ModernBERT's local layers: window = local_attention / 2) — with grouped-query
// heads and a log-sum-exp output. Causal attention over a KV cache is kernels/paged.
#pragma once

#include <cstdint>

#include "kernels/quant/kv_format.h"  // TESSERA_HD

namespace tessera::kernels {

struct VarlenAttentionView {
  const float* q =
      nullptr;  // [total, num_q_heads, head_dim], strides q_stride; head_dim contiguous
  const float* k = nullptr;  // [total, num_kv_heads, head_dim], strides k_stride
  const float* v = nullptr;  // [total, num_kv_heads, head_dim], strides v_stride
  // [num_seqs + 1]: sequence s holds tokens [cu_seqlens[s], cu_seqlens[s + 1]); 0 first,
  // non-decreasing, total last. Empty sequences are allowed.
  const int32_t* cu_seqlens = nullptr;
  float* out = nullptr;          // [total, num_q_heads, head_dim] contiguous
  float* lse = nullptr;          // [total, num_q_heads] contiguous, natural log; may be null
  int64_t q_stride[2] = {0, 0};  // elements between tokens, heads
  int64_t k_stride[2] = {0, 0};
  int64_t v_stride[2] = {0, 0};
  int64_t total = 0;
  int num_seqs = 0;
  int num_q_heads = 0;  // a multiple of num_kv_heads; query head h reads kv head h / group
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  // < 0: every key of the sequence; >= 0: keys with |i - j| <= window only.
  int window = -1;
};

// Throws tessera::Error naming the field and value when sizes or cu_seqlens are invalid. Reads
// cu_seqlens: a host pointer.
void varlen_attention_check(const VarlenAttentionView& view);

// CPU reference: fp64 accumulation, plain loops.
void varlen_attention_ref(const VarlenAttentionView& view);
// Fast CPU: work items (sequence, kv head, tile of queries) in parallel (OpenMP). Each item copies
// the keys its tile can see transposed ([head_dim, keys]) so that the scores of four queries
// against sixteen keys are sixteen-wide multiply-adds without horizontal sums; exact softmax over
// the visible keys (vectorised polynomial exp); values accumulated four queries at a time. Cloned
// for AVX2 / AVX-512.
void varlen_attention_cpu(const VarlenAttentionView& view);
#ifdef TESSERA_WITH_CUDA
// CUDA: one block per (query token, query head); keys of the visible interval scored a tile at a
// time (one key per thread) and folded into an online softmax. Returns a cudaError_t value (0 on
// success). cu_seqlens must be a device pointer here.
int varlen_attention_cuda(const VarlenAttentionView& view, void* cuda_stream);
#endif

// The keys query `i` of a sequence of `len` tokens sees: [first, last] (inclusive).
TESSERA_HD void varlen_visible(int64_t i, int64_t len, int window, int64_t* first, int64_t* last) {
  *first = 0;
  *last = len - 1;
  if (window >= 0) {
    *first = i - window > 0 ? i - window : 0;
    *last = i + window < len - 1 ? i + window : len - 1;
  }
}

}  // namespace tessera::kernels
