#include "caches/single_type_manager.h"

#include <algorithm>

#include "caches/block_hash.h"
#include "common/error.h"

namespace tessera::caches {

SingleTypeManager::SingleTypeManager(SpecPtr spec, BlockPool& pool, int32_t group,
                                     bool prefix_caching)
    : spec_(std::move(spec)), pool_(pool), group_(group), prefix_caching_(prefix_caching) {
  TESSERA_CHECK(spec_ != nullptr, "spec must not be null");
  block_size_ = spec_->block_size();
}

SingleTypeManager::Row SingleTypeManager::row(SeqId seq) const {
  auto it = rows_.find(seq);
  return it == rows_.end() ? Row{} : Row{it->second};
}

SingleTypeManager::Row SingleTypeManager::add(SeqId seq) {
  TESSERA_CHECK(seq >= 0, "seq must be >= 0, got ", seq);
  TESSERA_CHECK(!has(seq), "sequence ", seq, " already has blocks in group ", group_);
  int32_t r;
  if (!free_rows_.empty()) {
    r = free_rows_.back();
    free_rows_.pop_back();
  } else {
    r = static_cast<int32_t>(tables_.size());
    tables_.emplace_back();
  }
  SeqBlocks& s = tables_[r];
  s.blocks.clear();
  s.num_cached = 0;
  s.seq = seq;
  rows_.emplace(seq, r);
  return Row{r};
}

std::span<const int32_t> SingleTypeManager::blocks(SeqId seq) const {
  const SeqBlocks* s = find(seq);
  return s ? std::span<const int32_t>(s->blocks) : std::span<const int32_t>();
}

SingleTypeManager::SeqBlocks& SingleTypeManager::get_or_add(SeqId seq) {
  const Row r = row(seq);
  return tables_[(r.valid() ? r : add(seq)).index];
}

const SingleTypeManager::SeqBlocks* SingleTypeManager::find(SeqId seq) const {
  auto it = rows_.find(seq);
  return it == rows_.end() ? nullptr : &tables_[it->second];
}

int32_t SingleTypeManager::lookup(uint64_t hash) const {
  return pool_.lookup(group_key(hash, group_));
}

int64_t SingleTypeManager::blocks_needed(const SeqBlocks* s, int64_t num_computed,
                                         int64_t num_tokens) const {
  const int64_t have = s ? static_cast<int64_t>(s->blocks.size()) : 0;
  int64_t need = std::max<int64_t>(0, cdiv(num_tokens, block_size_) - have);
  if (copy_on_write_due(s, num_computed)) ++need;
  return need;
}

bool SingleTypeManager::copy_on_write_due(const SeqBlocks* s, int64_t num_computed) const {
  const int64_t bs = block_size_;
  if (!s || num_computed % bs == 0 || num_computed / bs >= static_cast<int64_t>(s->blocks.size())) {
    return false;
  }
  const int32_t b = s->blocks[num_computed / bs];
  return b != BlockPool::kNullBlock && pool_.ref_count(b) > 1;
}

void SingleTypeManager::allocate(SeqId seq, int64_t num_computed, int64_t num_tokens,
                                 std::vector<BlockCopy>* copies) {
  grow(get_or_add(seq), num_computed, num_tokens, copies);
}

void SingleTypeManager::grow(SeqBlocks& s, int64_t num_computed, int64_t num_tokens,
                             std::vector<BlockCopy>* copies) {
  const int64_t bs = block_size_;
  const int64_t idx = num_computed / bs;
  if (copy_on_write_due(&s, num_computed)) {
    const int32_t b = s.blocks[idx];
    // Checked before the pool is touched, so a refused call leaks nothing.
    TESSERA_CHECK(copies != nullptr,
                  "copies must not be null when a shared block is written (fork)");
    const int32_t fresh = pool_.allocate();
    TESSERA_CHECK(fresh > 0, "block pool ran out during copy-on-write (caller must check room)");
    copies->push_back({group_, b, fresh});
    pool_.free(b);
    s.blocks[idx] = fresh;
  }
  const int64_t want = cdiv(num_tokens, bs);
  while (static_cast<int64_t>(s.blocks.size()) < want) {
    const int32_t b = pool_.allocate();
    TESSERA_CHECK(b > 0, "block pool ran out (caller must check room)");
    s.blocks.push_back(b);
  }
}

void SingleTypeManager::remove_skipped(SeqId seq, int64_t num_computed) {
  const Row r = row(seq);
  if (r.valid()) remove_skipped(r, num_computed);
}

void SingleTypeManager::remove_skipped(Row r, int64_t num_computed) {
  const int64_t first_token = first_needed_token(num_computed);
  if (first_token < block_size_) return;  // full attention, or nothing left a window yet
  auto& blocks = at(r).blocks;
  const int64_t first =
      std::min<int64_t>(first_token / block_size_, static_cast<int64_t>(blocks.size()));
  // Blocks before an already-null block were removed by an earlier call.
  for (int64_t i = first - 1; i >= 0 && blocks[i] != BlockPool::kNullBlock; --i) {
    pool_.free(blocks[i]);
    blocks[i] = BlockPool::kNullBlock;
  }
}

void SingleTypeManager::cache_blocks(SeqId seq, std::span<const uint64_t> hashes,
                                     int64_t num_full) {
  const Row r = row(seq);
  if (r.valid()) cache_blocks(r, hashes, num_full);
}

void SingleTypeManager::cache_blocks(Row r, std::span<const uint64_t> hashes, int64_t num_full) {
  if (!prefix_caching_) return;
  SeqBlocks& s = at(r);
  num_full = std::min<int64_t>(
      {num_full, static_cast<int64_t>(hashes.size()), static_cast<int64_t>(s.blocks.size())});
  for (int64_t i = s.num_cached; i < num_full; ++i) {
    if (s.blocks[i] != BlockPool::kNullBlock) {
      pool_.cache(s.blocks[i], group_key(hashes[i], group_));
    }
  }
  s.num_cached = std::max(s.num_cached, num_full);
}

void SingleTypeManager::attach(SeqId seq, const std::vector<int32_t>& hit) {
  TESSERA_CHECK(!has(seq), "sequence ", seq, " already has blocks in group ", group_);
  attach(add(seq), hit);
}

void SingleTypeManager::attach(Row r, std::span<const int32_t> hit) {
  SeqBlocks& s = at(r);
  TESSERA_CHECK(s.blocks.empty(), "sequence ", s.seq, " already has blocks in group ", group_);
  s.blocks.assign(hit.begin(), hit.end());
  s.num_cached = static_cast<int64_t>(hit.size());
  for (int32_t b : hit) {
    if (b != BlockPool::kNullBlock) pool_.ref(b);
  }
}

void SingleTypeManager::fork(SeqId parent, SeqId child, int64_t num_computed,
                             std::vector<BlockCopy>* copies) {
  TESSERA_CHECK(!has(child), "sequence ", child, " already has blocks in group ", group_);
  const Row c = add(child);
  const Row p = row(parent);
  try {
    fork_into(p.valid() ? &at(p) : nullptr, at(c), num_computed, copies);
  } catch (...) {
    free(c);  // a refused fork leaves no child behind
    throw;
  }
}

void SingleTypeManager::fork(Row parent, Row child, int64_t num_computed,
                             std::vector<BlockCopy>* copies) {
  fork_into(&at(parent), at(child), num_computed, copies);
}

void SingleTypeManager::fork_into(const SeqBlocks* p, SeqBlocks& c, int64_t num_computed,
                                  std::vector<BlockCopy>* /*copies*/) {
  if (!p) return;
  // Share only written blocks; blocks reserved beyond them are the parent's own.
  const int64_t n =
      std::min<int64_t>(cdiv(num_computed, block_size_), static_cast<int64_t>(p->blocks.size()));
  c.blocks.assign(p->blocks.begin(), p->blocks.begin() + n);
  c.num_cached = std::min(p->num_cached, n);
  for (int32_t b : c.blocks) {
    if (b != BlockPool::kNullBlock) pool_.ref(b);
  }
}

void SingleTypeManager::free(SeqId seq) {
  const Row r = row(seq);
  if (r.valid()) free(r);
}

void SingleTypeManager::free(Row r) {
  SeqBlocks& s = at(r);
  for (auto b = s.blocks.rbegin(); b != s.blocks.rend(); ++b) {
    if (*b != BlockPool::kNullBlock) pool_.free(*b);
  }
  rows_.erase(s.seq);
  s.blocks.clear();
  s.num_cached = 0;
  s.seq = -1;
  free_rows_.push_back(r.index);
}

void SingleTypeManager::for_each_table(
    const std::function<void(SeqId, std::span<const int32_t>)>& fn) const {
  for (const SeqBlocks& s : tables_) {
    if (s.seq >= 0) fn(s.seq, s.blocks);
  }
}

// ---- full attention ----

int64_t FullAttentionManager::find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                                               std::vector<int32_t>& out) const {
  out.clear();
  const int64_t n = std::min<int64_t>(max_blocks, static_cast<int64_t>(hashes.size()));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = lookup(hashes[i]);
    if (b < 0) break;
    out.push_back(b);
  }
  return static_cast<int64_t>(out.size());
}

// ---- sliding window ----

SlidingWindowManager::SlidingWindowManager(SpecPtr spec, BlockPool& pool, int32_t group,
                                           bool prefix_caching)
    : SingleTypeManager(spec, pool, group, prefix_caching),
      window_(static_cast<const SlidingWindowSpec&>(*spec).window()) {}

int64_t SlidingWindowManager::first_needed_token(int64_t num_computed) const {
  // The next query, at position num_computed, sees positions num_computed - window + 1 on.
  return std::max<int64_t>(0, num_computed - window_ + 1);
}

int64_t SlidingWindowManager::find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                                               std::vector<int32_t>& out) const {
  const int64_t n = std::min<int64_t>(max_blocks, static_cast<int64_t>(hashes.size()));
  // Window 1 needs no past token; still require the last block so that a hit means cached data.
  const int64_t needed = std::max<int64_t>(1, cdiv(window_ - 1, block_size()));
  out.assign(n, BlockPool::kNullBlock);
  int64_t run = 0;
  for (int64_t i = n - 1; i >= 0; --i) {
    const int32_t b = lookup(hashes[i]);
    if (b < 0) {
      run = 0;
      continue;
    }
    out[i] = b;
    if (++run >= needed) {
      out.resize(i + run);  // the hit ends with this run; blocks before it stay null
      return static_cast<int64_t>(out.size());
    }
  }
  // No full window cached: only a run from the very start counts (it then covers every token).
  out.resize(run);
  return run;
}

// ---- chunked local ----

ChunkedLocalManager::ChunkedLocalManager(SpecPtr spec, BlockPool& pool, int32_t group,
                                         bool prefix_caching)
    : SingleTypeManager(spec, pool, group, prefix_caching),
      chunk_(static_cast<const ChunkedLocalAttentionSpec&>(*spec).chunk_size()) {
  TESSERA_CHECK(chunk_ % block_size() == 0,
                "chunk_size must be a multiple of block_size=", block_size(), ", got ", chunk_);
}

int64_t ChunkedLocalManager::first_needed_token(int64_t num_computed) const {
  return num_computed / chunk_ * chunk_;
}

int64_t ChunkedLocalManager::find_longest_hit(std::span<const uint64_t> hashes, int64_t max_blocks,
                                              std::vector<int32_t>& out) const {
  const int64_t n = std::min<int64_t>(max_blocks, static_cast<int64_t>(hashes.size()));
  const int64_t start = std::min(n, n * block_size() / chunk_ * chunk_ / block_size());
  out.assign(start, BlockPool::kNullBlock);
  for (int64_t i = start; i < n; ++i) {
    const int32_t b = lookup(hashes[i]);
    if (b < 0) break;
    out.push_back(b);
  }
  return static_cast<int64_t>(out.size());
}

// ---- state ----

StateManager::StateManager(SpecPtr spec, int32_t num_slots, int32_t group)
    : StateManager(std::move(spec), std::make_unique<BlockPool>(num_slots), group) {}

StateManager::StateManager(SpecPtr spec, std::unique_ptr<BlockPool> slots, int32_t group)
    : SingleTypeManager(std::move(spec), *slots, group, /*prefix_caching=*/false),
      slots_(std::move(slots)) {
  TESSERA_CHECK(spec_->is_state(), "StateManager needs a state spec, got ",
                spec_kind_name(spec_->kind()));
}

int64_t StateManager::blocks_needed(const SeqBlocks* s, int64_t, int64_t) const {
  return s && !s->blocks.empty() ? 0 : 1;
}

void StateManager::grow(SeqBlocks& s, int64_t, int64_t, std::vector<BlockCopy>*) {
  if (!s.blocks.empty()) return;
  const int32_t slot = pool_.allocate();
  TESSERA_CHECK(slot > 0, "state slots ran out (caller must check room)");
  s.blocks.push_back(slot);
}

int64_t StateManager::find_longest_hit(std::span<const uint64_t>, int64_t,
                                       std::vector<int32_t>& out) const {
  out.clear();
  return 0;
}

void StateManager::fork_into(const SeqBlocks* p, SeqBlocks& c, int64_t,
                             std::vector<BlockCopy>* copies) {
  const bool copy = p && !p->blocks.empty();
  // Checked before anything changes, so a refused fork takes no slot.
  TESSERA_CHECK(!copy || copies != nullptr, "copies must not be null when a state is forked");
  if (!copy) return;
  const int32_t slot = pool_.allocate();
  TESSERA_CHECK(slot > 0, "state slots ran out (caller must check room)");
  copies->push_back({group_, p->blocks[0], slot});
  c.blocks.push_back(slot);
}

std::unique_ptr<SingleTypeManager> make_manager(SpecPtr spec, BlockPool& pool, int32_t group,
                                                bool prefix_caching) {
  switch (spec->kind()) {
    case SpecKind::kFullAttention:
      return std::make_unique<FullAttentionManager>(spec, pool, group, prefix_caching);
    case SpecKind::kSlidingWindow:
      return std::make_unique<SlidingWindowManager>(spec, pool, group, prefix_caching);
    case SpecKind::kChunkedLocal:
      return std::make_unique<ChunkedLocalManager>(spec, pool, group, prefix_caching);
    default:
      TESSERA_FAIL("no paged manager for spec kind ", spec_kind_name(spec->kind()),
                   " (state specs use StateManager; cross attention and encoder-only layers ",
                   "are not paged)");
  }
}

}  // namespace tessera::caches
