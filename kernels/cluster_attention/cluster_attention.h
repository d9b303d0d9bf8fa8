// Fused cluster attention (AutoFocusFormer-style): every query token attends to M neighbour tokens
// picked by index (local mode) or to all N tokens (global mode), with optional additive bias or a
// fused relative-position bias, a mask, a blank key and attention dropout. Torch-free: the
// reference, fast CPU and CUDA implementations all take these views; kernels/ops is the only place
// that sees torch::Tensor.
#pragma once

#include <cstdint>

namespace tessera::kernels {

// Logits for query n of (b, h), neighbour slot m (0 <= m < M), key j = idx[b, n, m]:
//   s[m] = scale * q[b,h,n] . k[b,h,j] + bias[b,h,n,m] + pe(b,h,n,m)    (or -inf where masked)
//   pe   = pe_w[h] . (dx, dy, dist, dy/dist, dx/dist) + pe_b[h], (dx, dy) = pos[b,j] - pos[b,n],
//          the two ratios 0 where dist = 0
// With a blank token one extra logit s[M] = scale * q . blank_k[h] (never masked, no bias).
// P = softmax(s); dropout keeps each of the M (+1) weights with probability 1 - p (mask from
// dropout_keep(seed, ...), see cluster_dropout.h) and scales kept ones by 1 / (1 - p);
//   o = sum_m P'[m] v[b,h,j] (+ P'[M] blank_v[h]),  lse = log sum_m exp(s[m]) (dropout-free).
// A row with every logit -inf (fully masked, no blank) gives o = 0 and lse = -inf.
template <typename T>
struct ClusterAttentionViewT {
  const T* q = nullptr;           // [B, H, N, D], strides q_stride, head_dim contiguous
  const T* k = nullptr;           // [B, H, N, D], strides k_stride
  const T* v = nullptr;           // [B, H, N, D], strides v_stride
  const int64_t* idx = nullptr;   // [B, N, M] contiguous, values in [0, N); null = global mode
  const T* bias = nullptr;        // [B, H, N, M] contiguous; may be null
  const T* pos = nullptr;         // [B, N, 2] contiguous; with pe_w: fused position bias
  const T* pe_w = nullptr;        // [H, 5] contiguous; may be null
  const T* pe_b = nullptr;        // [H]; may be null (only read with pe_w)
  const uint8_t* mask = nullptr;  // [B, mask_heads, N, M] contiguous, nonzero = attend; may be null
  const T* blank_k = nullptr;     // [H, D] contiguous; null = no blank token
  const T* blank_v = nullptr;     // [H, D] contiguous; set together with blank_k
  T* out = nullptr;               // [B, H, N, D] contiguous
  T* lse = nullptr;               // [B, H, N] contiguous, natural log
  // [B, H, N, M + 1] contiguous, optional, fast CPU kernels only (the reference and CUDA ones
  // ignore it): the forward writes the softmax weights P (before dropout) here, and a backward
  // given them reads them instead of recomputing the logits: a third less backward work for
  // (M + 1) floats per row of memory.
  T* weights = nullptr;

  int64_t q_stride[3] = {0, 0, 0};  // element strides of (batch, head, token)
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};

  int batch = 0;
  int heads = 0;
  int tokens = 0;      // N
  int neighbours = 0;  // M (= N in global mode)
  int head_dim = 0;
  int mask_heads = 1;  // 1 (mask shared by every head) or H
  float scale = 1.0f;
  float dropout_p = 0.0f;  // in [0, 1); 0 = no dropout
  uint64_t seed = 0;
};

using ClusterAttentionView = ClusterAttentionViewT<float>;

// Gradients of the fused attention. Inputs are the forward view (its out / lse already computed)
// plus dout; outputs are written over (not accumulated into) the buffers below.
template <typename T>
struct ClusterAttentionGradsT {
  const T* dout = nullptr;  // [B, H, N, D] contiguous
  T* dq = nullptr;          // [B, H, N, D] contiguous
  T* dk = nullptr;          // [B, H, N, D] contiguous
  T* dv = nullptr;          // [B, H, N, D] contiguous
  T* dbias = nullptr;       // [B, H, N, M] contiguous; may be null
  T* dpe_w = nullptr;       // [H, 5]; may be null
  T* dpe_b = nullptr;       // [H]; may be null
  T* dblank_k = nullptr;    // [H, D]; may be null
  T* dblank_v = nullptr;    // [H, D]; may be null
};

using ClusterAttentionGrads = ClusterAttentionGradsT<float>;

// CPU reference: fp64 accumulation, plain loops. The float64 overloads (float64 tensors in and
// out) exist for finite-difference gradient checks at full precision.
void cluster_attention_fwd_ref(const ClusterAttentionView& view);
void cluster_attention_bwd_ref(const ClusterAttentionView& view, const ClusterAttentionGrads& g);
void cluster_attention_fwd_ref(const ClusterAttentionViewT<double>& view);
void cluster_attention_bwd_ref(const ClusterAttentionViewT<double>& view,
                               const ClusterAttentionGradsT<double>& g);

// Fast CPU: OpenMP over rows, vectorisable inner loops, fp32 accumulation. The backward reduces
// dk / dv either per (batch, head) plane (default, when there are enough planes for the threads)
// or per key through an inverse index (deterministic = true, or few planes). Both are bitwise
// reproducible on the CPU; the inverse-index form also spreads one plane across threads.
void cluster_attention_fwd_cpu(const ClusterAttentionView& view);
void cluster_attention_bwd_cpu(const ClusterAttentionView& view, const ClusterAttentionGrads& g,
                               bool deterministic);

// Whether every one of the n values of idx lies in [0, range): one vectorised pass, for the
// dispatch layer's check of a CPU index (a few microseconds where at::aminmax takes tens).
bool cluster_index_in_range_cpu(const int64_t* idx, int64_t n, int64_t range);

// Inverse index of idx: for batch b and key j, the flattened slots n * M + m with idx[b,n,m] = j,
// in increasing order: entries[offsets[b*(N+1)+j] .. offsets[b*(N+1)+j+1]).
//   offsets [B, N + 1] int64, entries [B * N * M] int64 (slot numbers within the batch).
void cluster_inverse_index_cpu(const int64_t* idx, int batch, int tokens, int neighbours,
                               int64_t* offsets, int64_t* entries);

#ifdef TESSERA_WITH_CUDA
// CUDA. Return a cudaError_t value (0 on success); the dispatch layer turns it into an exception.
// The default backward accumulates dk / dv with atomics; deterministic = true reduces per key
// through an inverse index built on the device (workspace: see cluster_attention_bwd_workspace).
int cluster_attention_fwd_cuda(const ClusterAttentionView& view, void* cuda_stream);
// Bytes of device scratch the backward needs (0 for the atomic variant).
int64_t cluster_attention_bwd_workspace(const ClusterAttentionView& view, bool deterministic);
int cluster_attention_bwd_cuda(const ClusterAttentionView& view, const ClusterAttentionGrads& g,
                               bool deterministic, void* workspace, void* cuda_stream);
#endif

}  // namespace tessera::kernels
