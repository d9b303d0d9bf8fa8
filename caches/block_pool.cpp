#include "caches/block_pool.h"

namespace tessera::caches {

BlockPool::BlockPool(int32_t num_blocks) : num_blocks_(num_blocks) {
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
  check_block(block);
  Node& n = nodes_[block];
  TESSERA_CHECK(n.ref > 0, "block ", block, " must be referenced to be cached");
  if (n.cached) return;  // already registered (e.g. reached through a prefix hit)
  auto [it, inserted] = index_.emplace(key, block);
  if (!inserted) return;  // another block holds the same content; this one stays uncached
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
  for (auto& [key, b] : index_) {
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
