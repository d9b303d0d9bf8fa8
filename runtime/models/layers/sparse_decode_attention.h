// Sparse decode inside the engine's paged attention (runtime/models/layers/
// paged_attention_backend.h): per full-attention layer and runner slot, the selection index of
// kernels/sparse_decode/sparse_select.h over the sequence's pages (built incrementally as pages
// fill, read in place from the paged pool); a decode row of a long sequence attends to the tokens
// it selects (sinks, chosen clusters or pages, recent window) with the fused selection + attention
// kernel (kernels/sparse_decode/sparse_decode_step.h), reading only those tokens' K/V rows.
// Prefill rows give each new index its query samples (the metric clustering measures distances
// in). CPU only: the index and the selection are CPU code.
#pragma once

#include <torch/types.h>

#include <array>
#include <memory>
#include <vector>

#include "caches/paged_kv_storage.h"
#include "kernels/sparse_decode/sparse_select.h"
#include "runtime/models/layers/sparse_decode_config.h"

namespace tessera::models {

// The rows of one step and full-attention cache group that sparse decode serves (built by the
// model runner; dense paged attention serves the others).
struct SparseDecodeRows {
  torch::Tensor q_index;          // [n] int64 token rows decoded sparsely (CPU)
  torch::Tensor block_tables;     // [n, max_blocks] int32 (CPU)
  std::vector<int32_t> slots;     // [n] runner slot of each row
  std::vector<int64_t> seq_lens;  // [n] tokens stored, the new one included
  // Prefill rows: {slot, first token row, tokens}; they give a new index its query samples.
  std::vector<std::array<int64_t, 3>> prefills;
  bool empty() const { return slots.empty() && prefills.empty(); }
};

struct SparseDecodeStats {
  int64_t rows = 0;            // (decode row, layer) pairs served sparsely
  int64_t tokens_read = 0;     // tokens attended, summed over rows, layers and kv heads
  int64_t tokens_context = 0;  // tokens dense decode would have read for the same rows
  int64_t kv_bytes_read = 0;   // K and V bytes (scales included) of the attended tokens
  int64_t kv_bytes_dense = 0;  // the same for dense decode of those rows
};

class SparseDecodeAttention {
 public:
  // `num_layers` of the model (indexes exist only for the layers attend() is called for),
  // `max_slots` runner slots, heads of this rank, the softmax scale.
  SparseDecodeAttention(const SparseDecodeConfig& config, int64_t num_layers, int64_t max_slots,
                        int64_t local_q_heads, int64_t local_kv_heads, int64_t head_dim,
                        int64_t block_size, double scale);

  // A slot holds a new sequence (or none): its indexes are dropped.
  void reset_slot(int32_t slot);
  // q [T, local q heads, head_dim] float32 CPU; writes the sparse rows of out [T, heads, Dv].
  void attend(int64_t layer, const SparseDecodeRows& rows, const caches::PagedLayerKV& kv,
              const torch::Tensor& q, torch::Tensor& out);

  const SparseDecodeConfig& config() const { return config_; }
  const SparseDecodeStats& stats() const { return stats_; }
  // Selection metadata of the live indexes (centroids, radii, member lists or page vectors).
  int64_t metadata_bytes() const;

 private:
  kernels::SparseSequenceIndex& index(int64_t layer, int32_t slot);

  SparseDecodeConfig config_;
  kernels::SparseSelectConfig select_;
  int64_t local_kv_heads_;
  // [layer][slot], made on first use.
  std::vector<std::vector<std::unique_ptr<kernels::SparseSequenceIndex>>> index_;
  SparseDecodeStats stats_;
};

}  // namespace tessera::models
