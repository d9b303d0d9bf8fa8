// Paged KV storage: the tensors a memory plan describes, on CPU or CUDA, in the layout the paged
// kernels read. Per attention layer separate K and V [num_blocks, block_size, num_kv_heads,
// head_size] (block 0 is the null block), plus float32 scales [num_blocks, block_size,
// num_kv_heads] for int8 / fp8 e4m3 (stored as uint8) KV; per state layer one tensor per state
// [num_state_slots, *shape]. Applies the block copies the manager returns (copy-on-write, forked
// states). The only paged cache code that sees torch; quantising writes belong to kernels/quant.
#pragma once

#include <torch/types.h>

#include <span>
#include <utility>
#include <vector>

#include "caches/memory_plan.h"

namespace tessera::caches {

torch::ScalarType torch_dtype(DType dtype);

struct PagedLayerKV {
  torch::Tensor k;        // [num_blocks, block_size, num_kv_heads, key_head_size]
  torch::Tensor v;        // [num_blocks, block_size, num_kv_heads, value_head_size]
  torch::Tensor k_scale;  // [num_blocks, block_size, num_kv_heads] float32; undefined unquantised
  torch::Tensor v_scale;  // [num_blocks, block_size, num_kv_heads] float32; undefined unquantised
};

class PagedKVStorage {
 public:
  // Allocates zeroed storage for `plan` on `device`. Layers sharing a storage slot (see
  // MemoryPlan::layer_slot) share tensors.
  PagedKVStorage(const MemoryPlan& plan, torch::Device device);

  const MemoryPlan& plan() const { return plan_; }
  bool has_kv(int64_t layer) const;
  const PagedLayerKV& kv(int64_t layer) const;  // attention layers with paged storage
  // State layers: one tensor per StateSpec::State, [num_state_slots, *shape].
  const std::vector<torch::Tensor>& state(int64_t layer) const;
  // Bytes of every distinct tensor (equals plan().total_bytes()).
  int64_t bytes() const;

  // Applies copies returned by KVCacheManager::allocate / fork to every layer of their group.
  void copy_blocks(std::span<const BlockCopy> copies);

  // Unquantised layers: writes k [n, num_kv_heads, key_head_size] and v [n, num_kv_heads,
  // value_head_size] to flat slots slot_mapping [n] int64 (block * block_size + offset).
  void write(int64_t layer, const torch::Tensor& k, const torch::Tensor& v,
             const torch::Tensor& slot_mapping);
  // Flat slots of positions [first, first + n) of a sequence with block table `table`.
  static torch::Tensor slot_mapping(std::span<const int32_t> table, int64_t block_size,
                                    int64_t first, int64_t n);
  // Reads positions [0, num_tokens) of a sequence into contiguous k [num_tokens, heads, dk],
  // v [num_tokens, heads, dv] and k_pos [num_tokens] int64 (position, or -1 where the block was
  // released to the null block: tokens that left the window).
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> gather(int64_t layer,
                                                                 std::span<const int32_t> table,
                                                                 int64_t num_tokens) const;

 private:
  MemoryPlan plan_;
  torch::Device device_;
  std::vector<PagedLayerKV> slots_;                 // [num_slots]
  std::vector<std::vector<torch::Tensor>> states_;  // [num_layers], empty for non-state layers
};

}  // namespace tessera::caches
