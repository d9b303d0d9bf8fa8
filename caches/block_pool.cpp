#include "caches/block_pool.h"

#include <algorithm>

namespace tessera::caches {

PrefixIndex::PrefixIndex(int32_t max_entries) : max_entries_(std::max<int64_t>(0, max_entries)) {
  // At most half full: expected probes stay below ~1.5 (hit) and ~2.5 (miss).
  int bits = 4;
  while ((int64_t{1} << bits) < 2 * max_entries_) ++bits;
  slots_.resize(size_t{1} << bits);
  mask_ = slots_.size() - 1;
  shift_ = 64 - bits;
}

bool PrefixIndex::insert(uint64_t key, int32_t block) {
  TESSERA_CHECK(block >= 0, "block must be >= 0, got ", block);
  size_t i = home(key);
  for (; slots_[i].block >= 0; i = (i + 1) & mask_) {
    if (slots_[i].key == key) return false;
  }
  TESSERA_CHECK(size_ < max_entries_, "prefix index is full (", max_entries_, " entries)");
  slots_[i] = {key, block};
  ++size_;
  return true;
}

void PrefixIndex::erase(uint64_t key) {
  size_t i = home(key);
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].block < 0) return;  // absent
    if (slots_[i].key == key) break;
  }
  // Backward shift: pull later entries of the probe run into the hole unless their home lies
  // cyclically in (hole, j], where they must stay to remain reachable.
  for (size_t j = i;;) {
    j = (j + 1) & mask_;
    if (slots_[j].block < 0) break;
    const size_t k = home(slots_[j].key);
    const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    slots_[i] = slots_[j];
    i = j;
  }
  slots_[i] = Slot{};
  --size_;
}

void PrefixIndex::clear() {
  std::fill(slots_.begin(), slots_.end(), Slot{});
  size_ = 0;
}

std::vector<std::pair<uint64_t, int32_t>> PrefixIndex::entries() const {
  std::vector<std::pair<uint64_t, int32_t>> out;
  out.reserve(static_cast<size_t>(size_));
  for (const Slot& s : slots_) {
    if (s.block >= 0) out.emplace_back(s.key, s.block);
  }
  return out;
}

BlockPool::BlockPool(int32_t num_blocks)
    : num_blocks_(num_blocks), index_(std::max<int32_t>(0, num_blocks - 1)) {
  TESSERA_CHECK(num_blocks >= 1, "num_blocks must be >= 1 (block 0 is the null block), got ",
                num_blocks);
  nodes_.resize(static_cast<size_t>(num_blocks) + 1);
  Node& s = nodes_[kSentinel()];
  s.prev = s.next = kSentinel();
  for (int32_t b = 1; b < num_blocks_; ++b) link_tail(b);
}

bool BlockPool::allocate(int32_t n, std::vector<int32_t>& out) {
  TESSERA_CHECK(n >= 0, "n must be >= 0, got ", n);
  if (n > num_free_) return false;
  for (int32_t i = 0; i < n; ++i) out.push_back(allocate());
  return true;
}

void BlockPool::ref(int32_t block) {
  check_block(block);
  Node& n = nodes_[block];
  if (n.ref++ == 0) unlink(block);
}

void BlockPool::cache(int32_t block, uint64_t key) {
  index_.prefetch(key);  // overlaps with the node's miss below
  check_block(block);
  Node& n = nodes_[block];
  TESSERA_CHECK(n.ref > 0, "block ", block, " must be referenced to be cached");
  if (n.cached) return;  // already registered (e.g. reached through a prefix hit)
  if (!index_.insert(key, block))
    return;  // another block holds the same content; this one stays uncached
  n.cached = true;
  n.key = key;
}

void BlockPool::evict(int32_t b) {
  Node& n = nodes_[b];
  index_.erase(n.key);
  n.cached = false;
  n.key = 0;
  ++evictions_;
}

void BlockPool::reset_prefix_cache() {
  for (const auto& [key, b] : index_.entries()) {
    nodes_[b].cached = false;
    nodes_[b].key = 0;
  }
  index_.clear();
}

std::vector<int32_t> BlockPool::free_list() const {
  std::vector<int32_t> out;
  for (int32_t b = nodes_[kSentinel()].next; b != kSentinel(); b = nodes_[b].next) {
    TESSERA_CHECK(out.size() <= static_cast<size_t>(num_blocks_), "free list has a cycle");
    out.push_back(b);
  }
  return out;
}

}  // namespace tessera::caches
