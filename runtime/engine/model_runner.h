// The model runner of one rank: keeps the persistent batch (one block table per slot and KV cache
// group, rebuilt only from each StepPlan's deltas, vLLM's InputBatch), turns a plan into one
// ragged batch (tokens, positions, per-group block tables, sequence lengths, query offsets and
// slot mappings, built in one pass over the rows), runs the decoder over this rank's heads and its
// share of the paged KV cache, and returns the logits of the sampling rows only (their hidden
// states are gathered before the LM head). Every rank of a tensor-parallel group runs the same
// plans in the same order.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "caches/kv_cache_manager.h"
#include "caches/paged_kv_storage.h"
#include "runtime/models/decoder_model.h"
#include "runtime/models/layers/paged_attention_backend.h"
#include "runtime/scheduler/step_plan.h"

namespace tessera::engine {

struct RunnerStats {
  int64_t steps = 0;
  int64_t rows = 0;
  int64_t tokens = 0;  // tokens computed (prefill chunks, extends and decodes)
  // Per KV cache group: the most blocks one sequence held at once (null entries, released when
  // tokens left a window, not counted), over every step so far.
  std::vector<int64_t> max_live_blocks;
  models::SparseDecodeStats sparse;  // sparse decode (zeros when off)
};

// Which logits execute() returns.
enum class LogitsRows : uint8_t {
  kNone,     // none: the LM head is skipped (ranks other than the leader)
  kSampled,  // the last token of each sampling row, in sampling order
  kAll,      // every token of the step, in plan token order (prompt logprobs, tests)
};

class ModelRunner {
 public:
  // `groups` are the KV cache manager's groups (their specs count tokens per block as the
  // scheduler does: with DCP, storage block size x dcp ranks). `dcp` spans the ranks sharing
  // this rank's KV head (null or size 1: none). `model`, `storage` and `dcp` must outlive it.
  // `sparse` (when enabled): decode rows of sequences longer than its threshold attend, on
  // full-attention layers, to the tokens its selection picks; throws naming the option when the
  // model has no full-attention layer, under decode context parallel, or on a GPU.
  ModelRunner(const models::DecoderModel& model, caches::PagedKVStorage& storage,
              const std::vector<caches::CacheGroup>& groups, int64_t max_num_seqs,
              sharding::Communicator* dcp, const models::SparseDecodeConfig& sparse = {});

  // Applies the plan to the persistent batch and runs it. Returns logits float32 [rows, vocab]
  // of the rows `which` asks for (undefined for kNone). Collective over the tensor-parallel
  // group.
  // With kSampled, `extra_rows` (indices into the step's tokens, plan token order) append their
  // logits after the sampled rows' (prompt logprobs).
  torch::Tensor execute(const scheduler::StepPlan& plan, LogitsRows which,
                        const std::vector<int64_t>& extra_rows = {});

  const RunnerStats& stats() const { return stats_; }
  // The block table this rank holds for `slot` in `group` (tests).
  const std::vector<int32_t>& table(int32_t slot, int32_t group) const;

 private:
  struct GroupInfo {
    int64_t window = 0;  // sliding window in tokens, 0 = none
    int64_t chunk = 0;   // chunked-local attention, 0 = none
  };
  struct Slot {
    bool live = false;
    int64_t seq = -1;
    int32_t lora = -1;                         // DecoderModel adapter index, -1 = base
    std::vector<std::vector<int32_t>> tables;  // [group]
  };
  void apply(const scheduler::StepPlan& plan);
  void enable_sparse(const models::SparseDecodeConfig& sparse,
                     const std::vector<caches::CacheGroup>& groups);
  void build_group(const scheduler::StepPlan& plan, int32_t group,
                   models::PagedGroupBatch& out) const;
  void build_group_dcp(const scheduler::StepPlan& plan, int32_t group,
                       models::PagedGroupBatch& out) const;

  const models::DecoderModel& model_;
  caches::PagedKVStorage& storage_;
  std::vector<GroupInfo> groups_;
  int64_t block_size_ = 0;          // tokens per block as the plans count them
  int64_t storage_block_size_ = 0;  // slots per block on this rank
  models::DcpPlacement dcp_;
  models::PagedAttentionBackend attention_;
  int64_t sparse_threshold_ = 0;  // sparse decode past this many tokens
  std::vector<Slot> slots_;
  RunnerStats stats_;
};

}  // namespace tessera::engine
