// Attention of queries over a contiguous KV buffer whose slots carry token positions (a per-layer
// KV cache, possibly a ring buffer for sliding-window layers). Causal by position, optional sliding
// window, grouped-query heads, log-sum-exp output. Torch-free: every implementation (reference,
// CPU, CUDA) takes this same view, and kernels/ops is the only place that sees torch::Tensor.
#pragma once

#include <cstdint>

namespace tessera::kernels {

struct AttentionView {
  const float* q = nullptr;        // [batch, q_len, num_q_heads, head_dim], strides below
  const float* k = nullptr;        // [batch, kv_len, num_kv_heads, head_dim]
  const float* v = nullptr;        // [batch, kv_len, num_kv_heads, head_dim]
  const int64_t* q_pos = nullptr;  // [batch, q_len] contiguous: position of each query token
  const int64_t* k_pos = nullptr;  // [batch, kv_len] contiguous: position in each slot, -1 = empty
  float* out = nullptr;            // [batch, q_len, num_q_heads, head_dim] contiguous
  float* lse = nullptr;  // [batch, num_q_heads, q_len] contiguous, natural log; may be null

  // Element strides of q / k / v for (batch, token, head); head_dim is contiguous.
  int64_t q_stride[3] = {0, 0, 0};
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};

  int batch = 0;
  int q_len = 0;
  int kv_len = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;  // divides num_q_heads; query head h reads kv head h / (Hq / Hkv)
  int head_dim = 0;
  float scale = 1.0f;
  // A key at position p is visible to a query at position t when 0 <= p <= t and, with a window
  // w > 0, t - p < w. A query that sees no key gets zeros and lse = -inf.
  int64_t window = 0;
};

// CPU reference: fp64 accumulation, plain loops, the yardstick for every other implementation.
void attention_ref(const AttentionView& view);

#ifdef TESSERA_WITH_CUDA
// CUDA: one block per (batch, query, head) with an online softmax over key tiles. Returns a
// cudaError_t value (0 on success); the dispatch layer turns it into an exception.
int attention_cuda(const AttentionView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
