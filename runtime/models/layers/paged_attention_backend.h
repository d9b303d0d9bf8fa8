// Attention over the paged KV cache (caches::PagedKVStorage) for a ragged batch: prefill chunks,
// extends and decodes of different sequences in one call per layer. Each layer writes its new
// K/V into page slots (kernels paged_kv_append) and attends with the paged kernel (fast CPU, or
// CUDA where the tensors are) using its cache group's block tables. With decode context parallel
// (DCP) the ranks sharing a KV head each store an interleaved share of its tokens: every rank
// attends with all query heads of that KV head over its share (partial output + log-sum-exp), and
// the partial states are merged exactly (kernels merge_attention_states).
#pragma once

#include <torch/types.h>

#include <memory>
#include <vector>

#include "caches/paged_kv_storage.h"
#include "runtime/models/decoder_model.h"
#include "runtime/models/layers/sparse_decode_attention.h"
#include "sharding/communicator.h"

namespace tessera::models {

// Which rank of a DCP group stores a token, and where in its local sequence: token p is stored by
// rank p % size at local index p / size, so every rank holds 1/size of any context and a block of
// block_size * size positions spans one block of block_size slots on each rank.
struct DcpPlacement {
  int rank = 0;
  int size = 1;
  bool owns(int64_t pos) const { return pos % size == rank; }
  int64_t local_index(int64_t pos) const { return pos / size; }
  // Tokens among positions [0, len) this rank stores.
  int64_t local_count(int64_t len) const { return len > rank ? (len - rank + size - 1) / size : 0; }
};

// One paged-kernel call: queries `q_index` (all rows, in order, when undefined) over sequences
// described as the kernel takes them.
struct PagedAttentionCall {
  torch::Tensor q_index;       // [n] int64 rows of this step's queries, or undefined
  torch::Tensor block_tables;  // [num_seqs, max_blocks] int32
  torch::Tensor seq_lens;      // [num_seqs] int32: stored tokens, the new ones included
  torch::Tensor q_starts;      // [num_seqs + 1] int32
  int64_t window = 0;          // sliding window in stored tokens, 0 = none
};

// What one KV cache group's layers need this step (built by the model runner).
struct PagedGroupBatch {
  torch::Tensor slot_mapping;  // [T] int64: page slot of each new token, -1 = not stored here
  int64_t chunk = 0;           // chunked-local attention, 0 = none
  std::vector<PagedAttentionCall> calls;  // queries no call covers see no keys on this rank
  SparseDecodeRows sparse;                // rows decoded sparsely (sparse decode on; no call
                                          // covers them)
};

struct PagedBatch {
  std::vector<PagedGroupBatch> groups;  // [num cache groups]
};

class PagedAttentionBackend : public AttentionBackend {
 public:
  // `layer_group[l]`: the cache group of layer l. `dcp` spans the ranks sharing this rank's KV
  // head (null or size 1: no DCP); `local_q_heads` is this rank's query-head count.
  PagedAttentionBackend(caches::PagedKVStorage& storage, std::vector<int32_t> layer_group,
                        double scale, int64_t local_q_heads, sharding::Communicator* dcp);

  // The batch of the next forward (must outlive it).
  void set_batch(const PagedBatch* batch) { batch_ = batch; }

  // Turns sparse decode on (the batches' SparseDecodeRows say which rows use it).
  void enable_sparse(std::unique_ptr<SparseDecodeAttention> sparse) { sparse_ = std::move(sparse); }
  SparseDecodeAttention* sparse() const { return sparse_.get(); }

  torch::Tensor attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                       const torch::Tensor& v) override;

 private:
  // out [T, heads, D] and lse [T, heads] of q over this rank's stored keys.
  std::pair<torch::Tensor, torch::Tensor> local_attention(const PagedGroupBatch& g,
                                                          const caches::PagedLayerKV& kv,
                                                          const torch::Tensor& q) const;

  caches::PagedKVStorage& storage_;
  std::vector<int32_t> layer_group_;
  double scale_;
  int64_t local_q_heads_;
  sharding::Communicator* dcp_;
  const PagedBatch* batch_ = nullptr;
  std::unique_ptr<SparseDecodeAttention> sparse_;
};

}  // namespace tessera::models
