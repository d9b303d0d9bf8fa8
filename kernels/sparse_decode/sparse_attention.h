// Sparse decode attention: the decode form of cluster attention. Each (sequence, KV head) has its
// own list of token positions, shared by the head's query group (GQA); the kernel reads those
// tokens straight from the paged pool through the block table (no gather copy) and returns the
// output with its log-sum-exp, so that attention over other token sets (sinks, a recent window,
// another rank's tokens) merges exactly with kernels/merge. Lists may hold tens of thousands of
// entries. The lists come from kernels/sparse_decode/sparse_select.h (cluster or Quest selection).
//
// Rules (the same in the reference, fast CPU and CUDA kernels, and tested):
//   * entry e of list (s, kh) names position p = idx[s, kh, e] of sequence s, read from block
//     block_tables[s][p / block_size], slot p % block_size; no causal mask (a decode query sees
//     every cached token). Positions must be in [0, seq_len): the torch dispatch checks them.
//   * an empty list (count 0) gives out = 0 and lse = -inf; merged with other parts it adds
//     nothing (kernels/merge drops -inf parts).
//   * a duplicated entry counts once per occurrence: its key's weight is doubled, exactly as if the
//     token were cached twice (score + log 2). Selectors emit disjoint lists.
//   * the order of entries does not matter (up to float rounding).
#pragma once

#include <cstdint>

#include "kernels/common/device_error.h"
#include "kernels/paged/paged_kv.h"

namespace tessera::kernels {

struct SparseDecodeView {
  const float* q = nullptr;               // [num_seqs, num_q_heads, head_dim_k], strides below
  PagedKv kv;                             // read only
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  const int32_t* idx = nullptr;           // [num_seqs, num_kv_heads, max_entries] positions
  const int32_t* counts = nullptr;        // [num_seqs, num_kv_heads]: entries used, <= max_entries
  float* out = nullptr;                   // [num_seqs, num_q_heads, head_dim_v] contiguous
  float* lse = nullptr;                   // [num_seqs, num_q_heads] contiguous; may be null
  int64_t q_stride[2] = {0, 0};           // elements between sequences, heads; head_dim contiguous
  int num_seqs = 0;
  int max_blocks_per_seq = 0;
  int num_q_heads = 0;  // a multiple of kv.num_kv_heads; query head h uses list h / group
  int max_entries = 0;
  float scale = 1.0f;
  // CUDA: seq_lens [num_seqs] (device) and the slot where the kernel records the first bad
  // entry of seq_lens, block_tables, counts or idx (the message the CPU dispatch raises), raised
  // at the next op on the device; with both set a bad entry is reported and never read through.
  const int32_t* seq_lens = nullptr;
  DeviceErrorSlot error;
  // Fast CPU: split each list into this many ranges, computed in parallel and merged by LSE. 0 =
  // automatic (split when there are fewer (sequence, kv head) lists than threads can use).
  int splits = 0;
};

// CPU reference: fp64 accumulation, plain loops.
void sparse_decode_ref(const SparseDecodeView& view);
// Fast CPU: (sequence, kv head, split) work items in parallel (OpenMP); each item reads an entry's
// K and V rows once for every query head of the group, online softmax over chunks of entries,
// head_dim loops vectorised (AVX-512 / AVX2 / baseline clones).
void sparse_decode_cpu(const SparseDecodeView& view);
// Fast CPU, one list (sequence seq, kv head kv_head) on the calling thread, unsplit: for callers
// that already run (sequence, kv head) pairs in parallel (sparse_decode_step_cpu).
void sparse_decode_cpu_list(const SparseDecodeView& view, int seq, int kv_head);
#ifdef TESSERA_WITH_CUDA
// CUDA: one block per (sequence, query head, split), online softmax over tiles of entries, splits
// merged by kernels/merge. `splits` > 1 needs a workspace of sparse_decode_cuda_workspace floats.
int64_t sparse_decode_cuda_workspace(const SparseDecodeView& view, int splits);
// Returns a cudaError_t value (0 on success).
int sparse_decode_cuda(const SparseDecodeView& view, int splits, float* workspace,
                       void* cuda_stream);
#endif

}  // namespace tessera::kernels
