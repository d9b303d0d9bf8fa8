// Torch-facing paged attention (see kernels/paged/paged_attention.h): checks tensors, builds the
// view and routes by device to the fast CPU, reference or CUDA implementation.
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

struct PagedAttentionOptions {
  double scale = 1.0;
  int64_t window = 0;      // sliding window in tokens, 0 = none
  int64_t chunk = 0;       // chunked-local attention chunk in tokens, 0 = none
  bool reference = false;  // CPU only: run the fp64 reference instead of the fast kernel
  int64_t kv_splits = 0;   // fast CPU only: key-range splits merged by LSE; 0 = automatic
  double softcap = 0;      // > 0: scores become softcap * tanh(score / softcap) (Gemma 2)
};

// Varlen prefill / extend / decode.
//   q            [total_q, Hq, Dk] float32 / float16 / bfloat16 (head_dim contiguous)
//   k_cache      [num_blocks, block_size, Hkv, Dk], v_cache [..., Dv]: float32, float16,
//                bfloat16, int8 or uint8 (fp8 e4m3); contiguous within a block
//   block_tables [num_seqs, max_blocks_per_seq] int32
//   seq_lens     [num_seqs] int32: KV tokens per sequence, the new ones included
//   q_starts     [num_seqs + 1] int32: cumulative query counts; a sequence's queries are its last
//                q_len tokens
//   k_scale, v_scale [num_blocks, block_size, Hkv] float32 for int8 / fp8 caches (else undefined)
// Returns (out [total_q, Hq, Dv] in q's dtype, lse [total_q, Hq] float32, natural log).
std::tuple<torch::Tensor, torch::Tensor> paged_attention(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, const torch::Tensor& q_starts,
    const PagedAttentionOptions& options, const torch::Tensor& k_scale = {},
    const torch::Tensor& v_scale = {});

// Decode: one query per sequence, q [num_seqs, Hq, Dk]; otherwise as paged_attention.
std::tuple<torch::Tensor, torch::Tensor> paged_decode(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens,
    const PagedAttentionOptions& options, const torch::Tensor& k_scale = {},
    const torch::Tensor& v_scale = {});

}  // namespace tessera::kernels
