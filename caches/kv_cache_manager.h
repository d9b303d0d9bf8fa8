// The paged KV cache manager of a model: one cache group per distinct layer spec (hybrid models
// mix full attention, sliding window, chunked local and state layers), attention groups sharing
// one block pool, state groups holding one slot per sequence. It allocates, forks
// (copy-on-write, for parallel sampling and beam search) and frees sequences, finds prefix-cache
// hits through chained block hashes, and counts hits and misses. Data in, data out: the model
// runner applies the returned block copies to storage. Torch-free.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "caches/block_hash.h"
#include "caches/block_pool.h"
#include "caches/kv_cache_spec.h"
#include "caches/single_type_manager.h"
#include "common/error.h"

namespace tessera::caches {

// Layers that share one spec and so one block table per sequence.
struct CacheGroup {
  SpecPtr spec;
  std::vector<int64_t> layers;
};

// Groups layer specs by equality, in order of first appearance; encoder-only layers (no cache)
// are left out.
std::vector<CacheGroup> group_layers(const std::vector<SpecPtr>& layer_specs);

struct KVCacheManagerConfig {
  std::vector<CacheGroup> groups;
  int32_t num_blocks = 0;       // shared attention pool, including the null block
  int32_t num_state_slots = 0;  // per state group, including the null slot
  bool enable_prefix_caching = true;
};

struct PrefixCacheStats {
  int64_t requests = 0;        // sequences looked up
  int64_t queried_tokens = 0;  // prompt tokens looked up
  int64_t hit_tokens = 0;      // of those, found in the cache
  int64_t hit_requests = 0;    // sequences with at least one cached block
  int64_t evictions = 0;       // cached blocks reused for other data
  int64_t miss_tokens() const { return queried_tokens - hit_tokens; }
  double hit_rate() const {
    return queried_tokens ? static_cast<double>(hit_tokens) / queried_tokens : 0.0;
  }
};

// A live sequence's place in the manager, from KVCacheManager::handle(): the handle overloads index
// the sequence directly (no lookup by id), for a caller that touches many sequences every step.
// Valid until the sequence is freed (the place is then reused).
struct SeqHandle {
  int32_t index = -1;
  bool valid() const { return index >= 0; }
};

class KVCacheManager {
 public:
  explicit KVCacheManager(KVCacheManagerConfig config);

  const KVCacheManagerConfig& config() const { return config_; }
  int32_t num_groups() const { return static_cast<int32_t>(managers_.size()); }
  int64_t block_size() const { return block_size_; }
  const BlockPool& pool() const { return *pool_; }
  // Blocks in use: referenced by some sequence (cached free blocks do not count).
  int32_t num_used_blocks() const { return pool_->num_blocks() - 1 - pool_->num_free(); }

  // Starts sequence `seq` with its prompt. Attaches the longest cached prefix (whole blocks, at
  // most prompt.size() - 1 tokens so that one token is left to compute, and at most
  // `max_hit_tokens`: 0 reads nothing from the cache) and returns its length in tokens, which
  // become the sequence's computed tokens. Allocates nothing else. The sequence's blocks are
  // registered in the prefix cache as they fill, whatever `max_hit_tokens`.
  int64_t add_sequence(SeqId seq, std::span<const int32_t> prompt, const BlockHashExtra& extra = {},
                       int64_t max_hit_tokens = std::numeric_limits<int64_t>::max());
  // The handle of a live sequence (throws naming it otherwise).
  SeqHandle handle(SeqId seq) const;
  // A generated token joins the sequence (its KV is written by a later allocate + commit).
  void append_token(SeqId seq, int32_t token);
  // Several tokens at once, in order (the same as append_token for each).
  void append_tokens(SeqId seq, std::span<const int32_t> tokens);
  void append_tokens(SeqHandle h, std::span<const int32_t> tokens);
  // Makes room for num_new_tokens more tokens after the computed ones, in every group, all or
  // nothing: false when the pool lacks blocks (nothing changed). Copies that must reach storage
  // before the write (copy-on-write after fork) are appended to `copies`.
  bool allocate(SeqId seq, int64_t num_new_tokens, std::vector<BlockCopy>* copies = nullptr);
  bool allocate(SeqHandle h, int64_t num_new_tokens, std::vector<BlockCopy>* copies = nullptr);
  // num_new_tokens tokens were written: registers newly full blocks in the prefix cache and frees
  // blocks that left a window.
  void commit(SeqId seq, int64_t num_new_tokens);
  void commit(SeqHandle h, int64_t num_new_tokens);
  // Several commits, each the same as commit(seq, num_new_tokens), in two passes: the first
  // checks, hashes the newly full blocks and starts loading the prefix-index slots they go to,
  // the second registers them. A decode step fills a block in about one sequence of every
  // block_size, each a few independent cache misses into tables far larger than the cache: one by
  // one each waits for its own, batched they overlap. A failed check throws with the commits
  // before it done.
  struct Commit {
    SeqHandle seq;
    int64_t num_new_tokens = 0;
  };
  void commit(std::span<const Commit> commits);
  // append_token + allocate(1) + commit(1): false (nothing changed) when the pool is full.
  bool append(SeqId seq, int32_t token, std::vector<BlockCopy>* copies = nullptr);
  // The child starts as a copy of the parent sharing its written blocks; false when a state
  // group has no free slot. Call allocate() before either writes again: that is where a shared,
  // partly written block is copied (copy-on-write).
  bool fork(SeqId parent, SeqId child, std::vector<BlockCopy>* copies);
  // Returns the sequence's blocks to the pool (cached ones stay findable until evicted).
  void free(SeqId seq);

  bool has(SeqId seq) const { return index_.count(seq) != 0; }
  int64_t num_sequences() const { return static_cast<int64_t>(index_.size()); }
  int64_t num_computed(SeqId seq) const;
  int64_t num_tokens(SeqId seq) const;
  std::span<const int32_t> block_table(SeqId seq, int32_t group) const;
  std::span<const int32_t> block_table(SeqHandle h, int32_t group) const;
  const SingleTypeManager& manager(int32_t group) const { return *managers_.at(group); }
  // Block tables of `seqs` for `group` as int32 [seqs.size(), max_blocks] (row-major), padded
  // with the null block: the layout the paged kernels read.
  std::vector<int32_t> block_tables(int32_t group, std::span<const SeqId> seqs,
                                    int64_t max_blocks) const;

  PrefixCacheStats stats() const;

  // Throws if any invariant is broken: every block is free or referenced, reference counts equal
  // block-table references, the free list holds exactly the unreferenced blocks once each, the
  // null block is never handed out, the prefix index points at blocks carrying its key.
  void check_invariants() const;

 private:
  using Row = SingleTypeManager::Row;
  struct Sequence {
    SeqId id = -1;  // -1: a free place (its vectors keep their capacity for the next sequence)
    int64_t num_tokens = 0;
    // Tokens from hashes.size() * block_size on: the ones no block hash covers yet (with prefix
    // caching only). Hashed tokens are dropped, so a decoding sequence holds less than a block
    // here instead of a copy of its whole history.
    std::vector<int32_t> tail;
    std::vector<uint64_t> hashes;  // chained hashes of the full blocks of the tokens
    int64_t num_computed = 0;
    BlockHashExtra extra;
    std::vector<Row> rows;  // [group]: the sequence's row in each manager
  };
  Sequence& get(SeqId seq) { return seqs_[handle(seq).index]; }
  const Sequence& get(SeqId seq) const { return seqs_[handle(seq).index]; }
  Sequence& at(SeqHandle h) {
    TESSERA_CHECK(
        h.index >= 0 && h.index < static_cast<int32_t>(seqs_.size()) && seqs_[h.index].id >= 0,
        "sequence handle ", h.index, " holds no live sequence");
    return seqs_[h.index];
  }
  const Sequence& at(SeqHandle h) const { return const_cast<KVCacheManager*>(this)->at(h); }
  SeqHandle add_place(SeqId seq);  // a fresh Sequence with a row in every manager
  // Prefix caching hashes blocks, which needs their tokens; otherwise only counts are kept.
  bool keeps_tokens() const { return config_.enable_prefix_caching && !has_state_; }
  int64_t find_hit(const Sequence& s, int64_t max_blocks,
                   std::vector<std::vector<int32_t>>& hits) const;
  // commit()'s two halves: checks room and moves the computed count, hashing newly full blocks
  // (their count before is returned in *hashed_before); then registers full blocks and frees what
  // left a window.
  void commit_count(Sequence& s, int64_t num_new_tokens, int64_t* hashed_before);
  void commit_register(Sequence& s);

  KVCacheManagerConfig config_;
  int64_t block_size_ = 0;
  bool has_state_ = false;
  std::unique_ptr<BlockPool> pool_;
  std::vector<std::unique_ptr<SingleTypeManager>> managers_;
  std::vector<Sequence> seqs_;                     // by handle
  std::vector<int32_t> free_places_;               // handles to reuse
  std::unordered_map<SeqId, int32_t> index_;       // live sequence -> handle
  std::vector<std::vector<int32_t>> hit_scratch_;  // add_sequence's per-group hits
  PrefixCacheStats stats_;
};

}  // namespace tessera::caches
