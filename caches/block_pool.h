// The pool of KV cache blocks shared by every attention group: a reserved null block, reference
// counts, an O(1) free list kept in LRU order (intrusive doubly linked list over a flat array, no
// allocation on the hot path) and the prefix-cache index (block key -> block, an open-addressing
// table sized once for every block, so caching and evicting never allocate). A freed block that
// holds a cached prefix stays findable until allocation reaches it at the head of the free list and
// evicts it, so the least recently freed cached blocks go first. Torch-free.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/error.h"

namespace tessera::caches {

// Map from 64-bit block keys to block ids for at most `max_entries` entries: linear probing over a
// power-of-two table at most half full, deletion by backward shift (no tombstones), so lookups stay
// short however many inserts and erases come. Allocates only in the constructor.
class PrefixIndex {
 public:
  explicit PrefixIndex(int32_t max_entries);
  // The block under `key`, or -1.
  int32_t find(uint64_t key) const {
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.block < 0) return -1;
      if (s.key == key) return s.block;
    }
  }
  // False (and nothing changes) when `key` is already present.
  bool insert(uint64_t key, int32_t block);
  // Starts loading the slot `key` hashes to (the table is large and accessed at random).
  void prefetch(uint64_t key) const { __builtin_prefetch(&slots_[home(key)]); }
  void erase(uint64_t key);
  void clear();
  int64_t size() const { return size_; }
  // Every (key, block), in table order.
  std::vector<std::pair<uint64_t, int32_t>> entries() const;

 private:
  struct Slot {
    uint64_t key = 0;
    int32_t block = -1;  // -1: empty
  };
  // Fibonacci hashing: any key pattern (small integers, multiples of a power of two) spreads.
  size_t home(uint64_t key) const {
    return static_cast<size_t>((key * 0x9e3779b97f4a7c15ull) >> shift_);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 0;
  int64_t max_entries_ = 0;
  int64_t size_ = 0;
};

class BlockPool {
 public:
  // Block 0: never handed out; padding in block tables and blocks that left a window point to it.
  static constexpr int32_t kNullBlock = 0;

  // num_blocks includes the null block, so num_blocks - 1 blocks can be handed out.
  explicit BlockPool(int32_t num_blocks);

  int32_t num_blocks() const { return num_blocks_; }
  int32_t num_free() const { return num_free_; }  // includes cached blocks nobody references

  // Starts loading the prefix-index slot of `key` (see KVCacheManager::commit of a batch).
  void prefetch_key(uint64_t key) const { index_.prefetch(key); }
  // Pops the least recently freed block (evicting its prefix-cache entry) with one reference;
  // -1 when no block is free.
  int32_t allocate() {
    const int32_t b = nodes_[kSentinel()].next;
    if (b == kSentinel()) return -1;
    unlink(b);
    Node& n = nodes_[b];
    if (n.cached) [[unlikely]]
      evict(b);
    n.ref = 1;
    return b;
  }
  // Appends n blocks to `out`, all or nothing; false (and `out` unchanged) when fewer are free.
  bool allocate(int32_t n, std::vector<int32_t>& out);

  // Drops one reference; at zero the block joins the tail of the free list (most recently used).
  // Freeing a block nobody references throws: nothing is freed twice.
  void free(int32_t block) {
    check_block(block);
    Node& n = nodes_[block];
    TESSERA_CHECK(n.ref > 0, "block ", block, " freed with no reference left (double free)");
    if (--n.ref == 0) link_tail(block);
  }
  // Another holder (fork, prefix hit): a free block leaves the free list.
  void ref(int32_t block);
  int32_t ref_count(int32_t block) const { return nodes_.at(block).ref; }

  // ---- prefix cache ----
  // The block cached under `key`, or -1. The key already includes the group (see block_hash.h).
  int32_t lookup(uint64_t key) const { return index_.find(key); }
  // Registers a full, referenced block under `key`; a key that is already cached keeps its block.
  void cache(int32_t block, uint64_t key);
  bool is_cached(int32_t block) const { return nodes_.at(block).cached; }
  uint64_t key_of(int32_t block) const { return nodes_.at(block).key; }
  int64_t num_cached() const { return index_.size(); }
  int64_t evictions() const { return evictions_; }
  // Drops every cache entry (blocks stay where they are); e.g. after weights change.
  void reset_prefix_cache();

  // For invariant checks: the free list from LRU head to tail, and the whole index (key, block).
  std::vector<int32_t> free_list() const;
  std::vector<std::pair<uint64_t, int32_t>> index() const { return index_.entries(); }

 private:
  struct Node {
    int32_t prev = -1;  // free-list links; -1 while not free
    int32_t next = -1;
    int32_t ref = 0;
    bool cached = false;
    uint64_t key = 0;
  };
  int32_t kSentinel() const { return num_blocks_; }
  void check_block(int32_t block) const {
    TESSERA_CHECK(block > kNullBlock && block < num_blocks_, "block must lie in [1, ", num_blocks_,
                  "), got ", block);
  }
  void unlink(int32_t b) {
    Node& n = nodes_[b];
    nodes_[n.prev].next = n.next;
    nodes_[n.next].prev = n.prev;
    n.prev = n.next = -1;
    --num_free_;
  }
  void link_tail(int32_t b) {
    Node& s = nodes_[kSentinel()];
    Node& n = nodes_[b];
    n.prev = s.prev;
    n.next = kSentinel();
    nodes_[s.prev].next = b;
    s.prev = b;
    ++num_free_;
  }
  void evict(int32_t b);

  int32_t num_blocks_;
  int32_t num_free_ = 0;
  std::vector<Node> nodes_;  // num_blocks_ + 1: the last node is the free list's sentinel
  PrefixIndex index_;
  int64_t evictions_ = 0;
};

}  // namespace tessera::caches
