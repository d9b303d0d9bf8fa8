// One engine step as the scheduler plans it: which sequences run, which tokens each computes from
// which position, how each sequence's block tables changed, and which sequences left since the
// previous plan. Plain data: the leader encodes it to bytes and broadcasts it to its
// tensor-parallel group, each rank decodes it and runs the batched forward. decode() takes
// untrusted bytes: it checks every length and offset and throws tessera::Error naming the field
// and byte offset; it never reads out of bounds or allocates more than the input could describe.
// Torch-free.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "caches/single_type_manager.h"  // caches::BlockCopy

namespace tessera::scheduler {

// How the block table of one (slot, KV cache group) changes this step. The runner keeps one table
// per slot and group (a persistent batch, vLLM's InputBatch) and applies the delta with
// apply_block_table(): keep the first `keep` entries (drop the rest), append `num_blocks` ids from
// StepPlan::blocks, then set entries [0, null_prefix) to the null block (caches::BlockPool::
// kNullBlock = 0): blocks that left a sliding window / local chunk, freed and maybe reused by
// another sequence — a kernel must never read them. A row with is_new = true has keep = 0 and
// carries its whole table. After the delta a table covers at least start_pos + num_tokens
// positions (whole blocks, at most Scheduler::max_blocks_per_seq() entries): the KV of position p
// lives in block table[p / block_size] at offset p % block_size (the slot mapping), and a row's
// attention reads positions [0, start_pos + num_tokens) less what its group's window drops.
// State groups (Mamba) hold one entry, the sequence's state slot.
struct BlockTableDelta {
  int32_t keep = 0;
  int32_t null_prefix = 0;  // <= keep + num_blocks
  int32_t num_blocks = 0;
  int64_t block_offset = 0;  // where this delta's ids start in StepPlan::blocks (derived)
  bool operator==(const BlockTableDelta&) const = default;
};

// One row of the batch (plain data: the rows of a step are one flat array).
struct ScheduledSeq {
  int64_t seq = -1;  // the request's handle (Request::seq)
  // The row's persistent place, in [0, max_num_seqs): the same while the request runs; released
  // when it finishes, is aborted or preempted (ReleasedSeq), and then reusable by another request.
  int32_t slot = -1;
  // First row of this request in this slot (admitted, or re-admitted after preemption): reset the
  // slot's state; its block tables arrive whole; StepPlan::new_seqs[new_index] names it.
  bool is_new = false;
  // The last of these tokens is the request's newest: sample the next token from its logits.
  bool sample = false;
  int32_t sample_index = -1;  // k for the k-th sampling row of the plan, else -1
  int32_t num_tokens = 0;     // tokens to compute, positions [start_pos, start_pos + num_tokens)
  int64_t start_pos = 0;      // position of the first token = tokens already in the KV cache
  int64_t token_offset = 0;   // where they start in StepPlan::token_ids (derived)
  int32_t new_index = -1;     // with is_new: index into StepPlan::new_seqs (derived), else -1
  bool operator==(const ScheduledSeq&) const = default;
};

// What a rank learns once about a request, with its first row in a slot.
struct NewSeq {
  int32_t row = -1;        // its row in this plan
  std::string request_id;  // the caller's id (logs, errors)
  std::string lora;        // adapter name, "" = base model
  bool operator==(const NewSeq&) const = default;
};

// A sequence that left the running batch since the previous plan; apply these before the rows
// (a row may reuse a released slot).
struct ReleasedSeq {
  int64_t seq = -1;
  int32_t slot = -1;
  bool preempted = false;  // true: it will come back (as a new row, recomputed); false: finished
  std::string request_id;
  bool operator==(const ReleasedSeq&) const = default;
};

struct StepPlan {
  int64_t step = 0;        // 1, 2, ... in schedule() order; update() checks it
  int32_t num_groups = 0;  // KV cache groups (KVCacheManager::num_groups())
  int32_t num_sampled = 0;
  std::vector<ScheduledSeq> seqs;         // [rows]
  std::vector<NewSeq> new_seqs;           // one per row with is_new, in row order
  std::vector<int32_t> token_ids;         // [total tokens]: the rows' tokens, in row order
  std::vector<BlockTableDelta> tables;    // [rows * num_groups], row-major (row, group)
  std::vector<int32_t> blocks;            // the ids the deltas append, in (row, group) order
  std::vector<caches::BlockCopy> copies;  // copy src → dst in storage before this step's writes
  std::vector<ReleasedSeq> released;

  int64_t num_rows() const { return static_cast<int64_t>(seqs.size()); }
  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  bool empty() const { return seqs.empty(); }
  const BlockTableDelta& table(int64_t row, int32_t group) const {
    return tables[row * num_groups + group];
  }
  // The request id of a new row, "" for the others (which the runner knows by slot).
  std::string_view request_id(int64_t row) const {
    const int32_t k = seqs[row].new_index;
    return k < 0 ? std::string_view() : std::string_view(new_seqs[k].request_id);
  }
  std::span<const int32_t> tokens(int64_t row) const {
    const ScheduledSeq& s = seqs[row];
    return std::span<const int32_t>(token_ids).subspan(s.token_offset, s.num_tokens);
  }
  // Applies the delta of (row, group) to the runner's copy of that slot's table. Throws when
  // `table` is shorter than the delta keeps (the runner's state and the plan disagree).
  void apply_block_table(int64_t row, int32_t group, std::vector<int32_t>& table) const;

  // Little-endian bytes: a magic, a format version, then every field above except the derived
  // offsets and indices. decode() recomputes those and checks: magic, version, every count
  // against the bytes left, rows * num_groups deltas, sample flags against sample_index and
  // num_sampled, one new_seqs entry per new row, keep / null_prefix bounds, no trailing bytes.
  std::vector<uint8_t> encode() const;
  static StepPlan decode(std::span<const uint8_t> bytes);
  // What decode() cannot know: throws naming the field unless every slot (rows, released) lies in
  // [0, max_slots) and every block id (deltas, copies) in [0, num_blocks). A rank calls it with
  // its own sizes before touching its persistent batch or storage.
  void check_bounds(int64_t max_slots, int64_t num_blocks) const;

  bool operator==(const StepPlan& other) const;  // every field (for tests)
};

}  // namespace tessera::scheduler
