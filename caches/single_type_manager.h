// Per-spec cache managers: each keeps the block table of every sequence for one cache group and
// differs from the others only in small hooks (which tokens a query can no longer see, how a
// prefix-cache hit is found). Full attention keeps every block; sliding window and chunked local
// attention free blocks as they leave the window / chunk (the table slot then points at the null
// block); state caches (Mamba, gated delta) hold one slot per sequence. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "caches/block_pool.h"
#include "caches/kv_cache_spec.h"
#include "common/error.h"

namespace tessera::caches {

using SeqId = int64_t;

// A block that must be copied before it is written (copy-on-write after fork), or a state slot a
// forked sequence starts from. Storage applies it to every layer of `group`.
struct BlockCopy {
  int32_t group = 0;
  int32_t src = 0;
  int32_t dst = 0;
};

class SingleTypeManager {
 public:
  // A sequence's place in this manager: stable while it lives, reused after free(). The
  // KVCacheManager keeps one per (sequence, group) so that its per-step calls index tables
  // directly instead of looking sequence ids up. The SeqId overloads below look the row up first.
  struct Row {
    int32_t index = -1;
    bool valid() const { return index >= 0; }
  };

  SingleTypeManager(SpecPtr spec, BlockPool& pool, int32_t group, bool prefix_caching);
  virtual ~SingleTypeManager() = default;

  const KVCacheSpec& spec() const { return *spec_; }
  int32_t group() const { return group_; }
  BlockPool& pool() const { return pool_; }
  int64_t block_size() const { return block_size_; }

  bool has(SeqId seq) const { return rows_.count(seq) != 0; }
  // The row of a live sequence, or an invalid Row.
  Row row(SeqId seq) const;
  // A new sequence with an empty table; throws if it is already live.
  Row add(SeqId seq);
  // The sequence's block table (null blocks where tokens left the window); empty if unknown.
  std::span<const int32_t> blocks(SeqId seq) const;
  std::span<const int32_t> blocks(Row r) const { return at(r).blocks; }
  int64_t num_sequences() const { return static_cast<int64_t>(rows_.size()); }

  // Blocks allocate() would take from the pool to hold num_tokens tokens when num_computed are
  // already written (new blocks plus a copy-on-write of a shared, partly written block).
  int64_t num_blocks_needed(SeqId seq, int64_t num_computed, int64_t num_tokens) const {
    return blocks_needed(find(seq), num_computed, num_tokens);
  }
  int64_t num_blocks_needed(Row r, int64_t num_computed, int64_t num_tokens) const {
    return blocks_needed(&at(r), num_computed, num_tokens);
  }
  // Whether the next write (at num_computed) lands in a partly written block a fork still shares,
  // so allocate() must copy it and report the copy.
  bool needs_copy_on_write(SeqId seq, int64_t num_computed) const {
    return copy_on_write_due(find(seq), num_computed);
  }
  bool needs_copy_on_write(Row r, int64_t num_computed) const {
    return copy_on_write_due(&at(r), num_computed);
  }
  // Grows the table to num_tokens tokens (a SeqId not yet live starts empty); the caller has
  // checked that the pool has room.
  void allocate(SeqId seq, int64_t num_computed, int64_t num_tokens,
                std::vector<BlockCopy>* copies);
  void allocate(Row r, int64_t num_computed, int64_t num_tokens, std::vector<BlockCopy>* copies) {
    grow(at(r), num_computed, num_tokens, copies);
  }
  // The first token a query at position >= num_computed can still see.
  virtual int64_t first_needed_token(int64_t num_computed) const { return 0; }
  // Frees the blocks wholly before first_needed_token(num_computed).
  void remove_skipped(SeqId seq, int64_t num_computed);
  void remove_skipped(Row r, int64_t num_computed);
  // Registers the first num_full blocks (all full) in the prefix cache under `hashes`.
  void cache_blocks(SeqId seq, std::span<const uint64_t> hashes, int64_t num_full);
  void cache_blocks(Row r, std::span<const uint64_t> hashes, int64_t num_full);
  // The longest cached prefix of at most max_blocks blocks under `hashes`: fills `out` with its
  // blocks (null where the spec needs no data) and returns their number.
  virtual int64_t find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                                   std::vector<int32_t>& out) const = 0;
  // Makes `hit` (from find_longest_hit) the table of a new sequence, taking references.
  void attach(SeqId seq, const std::vector<int32_t>& hit);
  // The same for a row from add() whose table is still empty.
  void attach(Row r, std::span<const int32_t> hit);
  // Blocks a fork takes from this manager's pool.
  virtual int64_t num_blocks_for_fork() const { return 0; }
  // The child (not yet live) shares the parent's written blocks (one more reference each).
  void fork(SeqId parent, SeqId child, int64_t num_computed, std::vector<BlockCopy>* copies);
  // The same with rows (the child from add()); returns nothing new.
  void fork(Row parent, Row child, int64_t num_computed, std::vector<BlockCopy>* copies);
  // Returns every block of the sequence, last block first so that a prefix's tail is evicted
  // before its head.
  void free(SeqId seq);
  void free(Row r);
  // Visits every (sequence, table).
  void for_each_table(const std::function<void(SeqId, std::span<const int32_t>)>& fn) const;

 protected:
  struct SeqBlocks {
    std::vector<int32_t> blocks;
    int64_t num_cached = 0;  // leading blocks already registered in the prefix cache
    SeqId seq = -1;          // -1: the row is free
  };
  // The hooks the specs differ in; `s` is null for a sequence this manager does not hold.
  virtual int64_t blocks_needed(const SeqBlocks* s, int64_t num_computed, int64_t num_tokens) const;
  virtual bool copy_on_write_due(const SeqBlocks* s, int64_t num_computed) const;
  virtual void grow(SeqBlocks& s, int64_t num_computed, int64_t num_tokens,
                    std::vector<BlockCopy>* copies);
  virtual void fork_into(const SeqBlocks* parent, SeqBlocks& child, int64_t num_computed,
                         std::vector<BlockCopy>* copies);

  SeqBlocks& at(Row r) {
    TESSERA_CHECK(
        r.index >= 0 && r.index < static_cast<int32_t>(tables_.size()) && tables_[r.index].seq >= 0,
        "row ", r.index, " of group ", group_, " holds no live sequence");
    return tables_[r.index];
  }
  const SeqBlocks& at(Row r) const { return const_cast<SingleTypeManager*>(this)->at(r); }
  const SeqBlocks* find(SeqId seq) const;
  SeqBlocks& get_or_add(SeqId seq);
  int32_t lookup(uint64_t hash) const;  // cached block or -1

  SpecPtr spec_;
  BlockPool& pool_;
  int32_t group_;
  bool prefix_caching_;
  int64_t block_size_;
  std::vector<SeqBlocks> tables_;            // by row; a free row keeps its vector's capacity
  std::vector<int32_t> free_rows_;           // rows to reuse, most recently freed last
  std::unordered_map<SeqId, int32_t> rows_;  // live sequence -> row (SeqId calls only)
};

class FullAttentionManager final : public SingleTypeManager {
 public:
  using SingleTypeManager::SingleTypeManager;
  // Every leading block that is cached.
  int64_t find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                           std::vector<int32_t>& out) const override;
};

class SlidingWindowManager final : public SingleTypeManager {
 public:
  SlidingWindowManager(SpecPtr spec, BlockPool& pool, int32_t group, bool prefix_caching);
  int64_t first_needed_token(int64_t num_computed) const override;
  // A hit ends where the last cdiv(window - 1, block_size) blocks are all cached; earlier
  // blocks are not needed and come back as null blocks.
  int64_t find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                           std::vector<int32_t>& out) const override;

 private:
  int64_t window_;
};

class ChunkedLocalManager final : public SingleTypeManager {
 public:
  ChunkedLocalManager(SpecPtr spec, BlockPool& pool, int32_t group, bool prefix_caching);
  int64_t first_needed_token(int64_t num_computed) const override;
  // Blocks before the chunk that holds the hit's end are null; from the chunk start on, the
  // cached blocks must be contiguous.
  int64_t find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                           std::vector<int32_t>& out) const override;

 private:
  int64_t chunk_;
};

// Mamba / gated-delta state: one slot per sequence from the manager's own slot pool, whatever
// the sequence's length. A fork gets a fresh slot initialised from the parent's (a BlockCopy).
// No prefix caching: a state summarises the whole prefix and is overwritten in place.
class StateManager final : public SingleTypeManager {
 public:
  StateManager(SpecPtr spec, int32_t num_slots, int32_t group);
  int64_t find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                           std::vector<int32_t>& out) const override;
  int64_t num_blocks_for_fork() const override { return 1; }

 protected:
  int64_t blocks_needed(const SeqBlocks* s, int64_t num_computed,
                        int64_t num_tokens) const override;
  bool copy_on_write_due(const SeqBlocks*, int64_t) const override { return false; }  // unshared
  void grow(SeqBlocks& s, int64_t num_computed, int64_t num_tokens,
            std::vector<BlockCopy>* copies) override;
  void fork_into(const SeqBlocks* parent, SeqBlocks& child, int64_t num_computed,
                 std::vector<BlockCopy>* copies) override;

 private:
  StateManager(SpecPtr spec, std::unique_ptr<BlockPool> slots, int32_t group);
  std::unique_ptr<BlockPool> slots_;  // pool_ refers to it
};

// The manager for `spec` (full, sliding window, chunked local; state specs use StateManager).
std::unique_ptr<SingleTypeManager> make_manager(SpecPtr spec, BlockPool& pool, int32_t group,
                                                bool prefix_caching);

}  // namespace tessera::caches
