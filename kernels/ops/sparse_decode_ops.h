// Torch-facing sparse decode (see kernels/sparse_decode/sparse_attention.h): checks tensors, builds
// the view and routes by device to the fast CPU, reference or CUDA implementation.
#pragma once

#include <torch/types.h>

#include <tuple>

namespace tessera::kernels {

struct SparseDecodeOptions {
  double scale = 1.0;
  bool reference = false;  // CPU only: run the fp64 reference instead of the fast kernel
  int64_t splits = 0;      // splits of each list merged by LSE; 0 = automatic
};

// Decode attention of one query per sequence over per-kv-head token lists of a paged cache.
//   q            [num_seqs, Hq, Dk] float32 / float16 / bfloat16 (head_dim contiguous)
//   k_cache      [num_blocks, block_size, Hkv, Dk], v_cache [..., Dv]: float32, float16,
//                bfloat16, int8 or uint8 (fp8 e4m3); contiguous within a block
//   block_tables [num_seqs, max_blocks_per_seq] int32
//   seq_lens     [num_seqs] int32: cached tokens per sequence (list entries must be below it)
//   idx          [num_seqs, Hkv, max_entries] int32 positions; entries past counts are ignored
//   counts       [num_seqs, Hkv] int32 in [0, max_entries]
//   k_scale, v_scale [num_blocks, block_size, Hkv] float32 for int8 / fp8 caches
// Returns (out [num_seqs, Hq, Dv] in q's dtype, lse [num_seqs, Hq] float32, natural log). An empty
// list gives zeros and lse = -inf; a duplicated entry counts twice. Metadata (lengths, block table
// entries, counts, positions) is checked: on CPU before the kernel runs, on CUDA by the kernel
// itself without a sync (kernels/common/device_error.h), the same message raised at the next op on
// the device; a bad entry is never read through.
std::tuple<torch::Tensor, torch::Tensor> sparse_paged_decode(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, const torch::Tensor& idx,
    const torch::Tensor& counts, const SparseDecodeOptions& options,
    const torch::Tensor& k_scale = {}, const torch::Tensor& v_scale = {});

}  // namespace tessera::kernels
