// Merge of partial attention states: P partial results of attention over disjoint key sets, each
// with its log-sum-exp, combine exactly into the attention over the union of the keys. Sequence-
// sharded KV caches use it across ranks; split-KV decode uses it across key blocks.
//   lse   = log(sum_p exp(lse_p))
//   out   = sum_p exp(lse_p - lse) * out_p
// A part with lse = -inf (it saw no key) contributes nothing; when every part is -inf the result
// is zeros with lse = -inf, never NaN.
#pragma once

#include <cstdint>

namespace tessera::kernels {

struct LseMergeView {
  const float* outs = nullptr;  // [num_parts, rows, head_dim] contiguous
  const float* lses = nullptr;  // [num_parts, rows] contiguous, natural log
  float* out = nullptr;         // [rows, head_dim]
  float* lse = nullptr;         // [rows], may be null
  int64_t num_parts = 0;
  int64_t rows = 0;  // e.g. batch * heads * q_len flattened
  int64_t head_dim = 0;
};

// CPU reference: fp64 accumulation.
void lse_merge_ref(const LseMergeView& view);
// Fast CPU: rows in parallel (OpenMP), fp32 accumulation vectorised over head_dim.
void lse_merge_cpu(const LseMergeView& view);
#ifdef TESSERA_WITH_CUDA
// CUDA: one warp per row. Returns a cudaError_t value (0 on success).
int lse_merge_cuda(const LseMergeView& view, void* cuda_stream);
#endif

}  // namespace tessera::kernels
