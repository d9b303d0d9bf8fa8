#include "caches/kv_cache_manager.h"

#include <algorithm>

#include "common/error.h"

namespace tessera::caches {

std::vector<CacheGroup> group_layers(const std::vector<SpecPtr>& layer_specs) {
  std::vector<CacheGroup> groups;
  for (size_t l = 0; l < layer_specs.size(); ++l) {
    const SpecPtr& spec = layer_specs[l];
    TESSERA_CHECK(spec != nullptr, "layer_specs[", l, "] must not be null");
    if (spec->kind() == SpecKind::kEncoderOnly) continue;  // nothing to cache
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const CacheGroup& g) { return g.spec->equals(*spec); });
    if (it == groups.end()) {
      groups.push_back({spec, {static_cast<int64_t>(l)}});
    } else {
      it->layers.push_back(static_cast<int64_t>(l));
    }
  }
  return groups;
}

KVCacheManager::KVCacheManager(KVCacheManagerConfig config) : config_(std::move(config)) {
  TESSERA_CHECK(!config_.groups.empty(), "groups must not be empty");
  bool has_attention = false;
  for (size_t g = 0; g < config_.groups.size(); ++g) {
    const SpecPtr& spec = config_.groups[g].spec;
    TESSERA_CHECK(spec != nullptr, "groups[", g, "].spec must not be null");
    if (spec->is_state()) {
      has_state_ = true;
      continue;
    }
    TESSERA_CHECK(spec->uses_block_pool() && spec->kind() != SpecKind::kCrossAttention, "groups[",
                  g, "] has spec kind ", spec_kind_name(spec->kind()),
                  ", which the paged manager does not hold (cross attention and encoder-only ",
                  "layers use ContiguousKVCache)");
    if (!has_attention) block_size_ = spec->block_size();
    TESSERA_CHECK(spec->block_size() == block_size_, "groups[", g, "] has block_size ",
                  spec->block_size(), " but groups sharing the pool use ", block_size_);
    has_attention = true;
  }
  if (!has_attention) block_size_ = 1;
  TESSERA_CHECK(!has_attention || config_.num_blocks >= 2,
                "num_blocks must be >= 2 (block 0 is the null block), got ", config_.num_blocks);
  TESSERA_CHECK(!has_state_ || config_.num_state_slots >= 2,
                "num_state_slots must be >= 2 (slot 0 is the null slot), got ",
                config_.num_state_slots);
  pool_ = std::make_unique<BlockPool>(has_attention ? config_.num_blocks : 1);
  for (size_t g = 0; g < config_.groups.size(); ++g) {
    const SpecPtr& spec = config_.groups[g].spec;
    const auto gid = static_cast<int32_t>(g);
    if (spec->is_state()) {
      managers_.push_back(std::make_unique<StateManager>(spec, config_.num_state_slots, gid));
    } else {
      managers_.push_back(make_manager(spec, *pool_, gid, config_.enable_prefix_caching));
    }
  }
}

SeqHandle KVCacheManager::handle(SeqId seq) const {
  auto it = index_.find(seq);
  TESSERA_CHECK(it != index_.end(), "seq=", seq, " is not a live sequence");
  return SeqHandle{it->second};
}

SeqHandle KVCacheManager::add_place(SeqId seq) {
  int32_t h;
  if (!free_places_.empty()) {
    h = free_places_.back();
    free_places_.pop_back();
  } else {
    h = static_cast<int32_t>(seqs_.size());
    seqs_.emplace_back();
  }
  Sequence& s = seqs_[h];
  s.id = seq;
  s.num_tokens = 0;
  s.tail.clear();
  s.hashes.clear();
  s.num_computed = 0;
  s.extra = {};
  s.rows.resize(managers_.size());
  for (size_t g = 0; g < managers_.size(); ++g) s.rows[g] = managers_[g]->add(seq);
  index_.emplace(seq, h);
  return SeqHandle{h};
}

int64_t KVCacheManager::find_hit(const Sequence& s, int64_t max_blocks,
                                 std::vector<std::vector<int32_t>>& hits) const {
  // Leave at least one prompt token to compute (its logits start generation).
  int64_t len = std::min(
      {(s.num_tokens - 1) / block_size_, static_cast<int64_t>(s.hashes.size()), max_blocks});
  // Every group must accept the same hit length; shrink until all do (lengths only decrease).
  for (bool stable = false; !stable;) {
    stable = true;
    for (size_t g = 0; g < managers_.size(); ++g) {
      const int64_t n = managers_[g]->find_longest_hit(s.hashes, len, hits[g]);
      if (n < len) {
        len = n;
        stable = false;
      }
    }
  }
  return len;
}

int64_t KVCacheManager::add_sequence(SeqId seq, std::span<const int32_t> prompt,
                                     const BlockHashExtra& extra, int64_t max_hit_tokens) {
  TESSERA_CHECK(!has(seq), "seq=", seq, " is already live");
  TESSERA_CHECK(max_hit_tokens >= 0, "max_hit_tokens must be >= 0, got ", max_hit_tokens);
  Sequence& s = seqs_[add_place(seq).index];
  s.num_tokens = static_cast<int64_t>(prompt.size());
  s.extra = extra;
  int64_t hit_blocks = 0;
  hit_scratch_.resize(managers_.size());
  if (config_.enable_prefix_caching && !has_state_ && !prompt.empty()) {
    extend_block_hashes(s.hashes, prompt, block_size_, extra);
    // A sequence that may read nothing from the cache is no query (as vLLM counts).
    if (const int64_t max_blocks = max_hit_tokens / block_size_; max_blocks > 0) {
      hit_blocks = find_hit(s, max_blocks, hit_scratch_);
      ++stats_.requests;
      stats_.queried_tokens += static_cast<int64_t>(prompt.size());
      stats_.hit_tokens += hit_blocks * block_size_;
      if (hit_blocks > 0) ++stats_.hit_requests;
    }
  }
  if (keeps_tokens()) {
    const auto hashed = static_cast<size_t>(s.hashes.size() * block_size_);
    s.tail.assign(prompt.begin() + hashed, prompt.end());
  }
  s.num_computed = hit_blocks * block_size_;
  if (hit_blocks > 0) {
    for (size_t g = 0; g < managers_.size(); ++g) {
      managers_[g]->attach(s.rows[g], hit_scratch_[g]);
      managers_[g]->remove_skipped(s.rows[g], s.num_computed);
    }
  }
  return hit_blocks * block_size_;
}

void KVCacheManager::append_token(SeqId seq, int32_t token) {
  append_tokens(handle(seq), std::span<const int32_t>(&token, 1));
}

void KVCacheManager::append_tokens(SeqId seq, std::span<const int32_t> tokens) {
  append_tokens(handle(seq), tokens);
}

void KVCacheManager::append_tokens(SeqHandle h, std::span<const int32_t> tokens) {
  Sequence& s = at(h);
  s.num_tokens += static_cast<int64_t>(tokens.size());
  if (keeps_tokens()) s.tail.insert(s.tail.end(), tokens.begin(), tokens.end());
}

bool KVCacheManager::allocate(SeqId seq, int64_t num_new_tokens, std::vector<BlockCopy>* copies) {
  TESSERA_CHECK(num_new_tokens >= 0, "num_new_tokens must be >= 0, got ", num_new_tokens);
  return allocate(handle(seq), num_new_tokens, copies);
}

bool KVCacheManager::allocate(SeqHandle h, int64_t num_new_tokens, std::vector<BlockCopy>* copies) {
  TESSERA_CHECK(num_new_tokens >= 0, "num_new_tokens must be >= 0, got ", num_new_tokens);
  const Sequence& s = at(h);
  const int64_t target = s.num_computed + num_new_tokens;
  int64_t need_pool = 0;
  for (size_t g = 0; g < managers_.size(); ++g) {
    const SingleTypeManager& m = *managers_[g];
    const int64_t need = m.num_blocks_needed(s.rows[g], s.num_computed, target);
    if (m.spec().is_state()) {
      if (need > m.pool().num_free()) return false;
    } else {
      need_pool += need;
    }
  }
  if (need_pool > pool_->num_free()) return false;
  if (copies == nullptr) {
    // All-or-nothing: refuse before any group allocates.
    for (size_t g = 0; g < managers_.size(); ++g) {
      TESSERA_CHECK(!managers_[g]->needs_copy_on_write(s.rows[g], s.num_computed),
                    "copies must not be null: seq=", s.id, " writes into a block of group ", g,
                    " that a fork still shares");
    }
  }
  for (size_t g = 0; g < managers_.size(); ++g) {
    managers_[g]->allocate(s.rows[g], s.num_computed, target, copies);
  }
  return true;
}

void KVCacheManager::commit(SeqId seq, int64_t num_new_tokens) {
  TESSERA_CHECK(num_new_tokens >= 0, "num_new_tokens must be >= 0, got ", num_new_tokens);
  commit(handle(seq), num_new_tokens);
}

void KVCacheManager::commit(SeqHandle h, int64_t num_new_tokens) {
  Sequence& s = at(h);
  commit_count(s, num_new_tokens, nullptr);
  commit_register(s);
}

void KVCacheManager::commit(std::span<const Commit> commits) {
  const bool caching = keeps_tokens();
  for (const Commit& c : commits) {
    Sequence& s = at(c.seq);
    int64_t before = 0;
    commit_count(s, c.num_new_tokens, &before);
    if (!caching) continue;
    for (auto i = static_cast<size_t>(before); i < s.hashes.size(); ++i) {
      for (size_t g = 0; g < managers_.size(); ++g) {
        pool_->prefetch_key(group_key(s.hashes[i], static_cast<int32_t>(g)));
      }
    }
  }
  for (const Commit& c : commits) commit_register(at(c.seq));
}

void KVCacheManager::commit_count(Sequence& s, int64_t num_new_tokens, int64_t* hashed_before) {
  TESSERA_CHECK(num_new_tokens >= 0, "num_new_tokens must be >= 0, got ", num_new_tokens);
  const int64_t target = s.num_computed + num_new_tokens;
  for (size_t g = 0; g < managers_.size(); ++g) {
    const SingleTypeManager& m = *managers_[g];
    if (m.spec().is_state()) continue;
    const int64_t held = static_cast<int64_t>(m.blocks(s.rows[g]).size()) * block_size_;
    TESSERA_CHECK(target <= held, "commit of ", num_new_tokens, " tokens to seq=", s.id, " at ",
                  s.num_computed, " exceeds the ", held, " slots allocated in group ", g);
  }
  s.num_computed = target;
  const auto have = static_cast<int64_t>(s.hashes.size());
  if (hashed_before) *hashed_before = have;
  if (!keeps_tokens()) return;
  // Hashes only grow when a block fills, from the tail, which then drops the hashed tokens.
  const int64_t known = std::min<int64_t>(target, s.num_tokens);
  if (known / block_size_ > have) {
    for (int64_t i = have; i < known / block_size_; ++i) {
      const uint64_t parent = i == 0 ? 0 : s.hashes[i - 1];
      const auto block = std::span<const int32_t>(s.tail).subspan(
          static_cast<size_t>((i - have) * block_size_), static_cast<size_t>(block_size_));
      s.hashes.push_back(hash_block(parent, block, s.extra, i == 0));
    }
    s.tail.erase(s.tail.begin(), s.tail.begin() + (known / block_size_ - have) * block_size_);
  }
}

void KVCacheManager::commit_register(Sequence& s) {
  if (keeps_tokens()) {
    const int64_t known = std::min<int64_t>(s.num_computed, s.num_tokens);
    for (size_t g = 0; g < managers_.size(); ++g) {
      managers_[g]->cache_blocks(s.rows[g], s.hashes, known / block_size_);
    }
  }
  for (size_t g = 0; g < managers_.size(); ++g) {
    managers_[g]->remove_skipped(s.rows[g], s.num_computed);
  }
}

bool KVCacheManager::append(SeqId seq, int32_t token, std::vector<BlockCopy>* copies) {
  const SeqHandle h = handle(seq);
  // Allocate first: a refused or failed allocation leaves the sequence as it was.
  if (!allocate(h, 1, copies)) return false;
  append_tokens(h, std::span<const int32_t>(&token, 1));
  commit(h, 1);
  return true;
}

bool KVCacheManager::fork(SeqId parent, SeqId child, std::vector<BlockCopy>* copies) {
  TESSERA_CHECK(!has(child), "child seq=", child, " is already live");
  const SeqHandle ph = handle(parent);
  for (const auto& m : managers_) {
    if (m->num_blocks_for_fork() > m->pool().num_free()) return false;
  }
  TESSERA_CHECK(copies != nullptr || !has_state_,
                "copies must not be null when forking seq=", parent, ": its state must be copied");
  const SeqHandle ch = add_place(child);  // may move seqs_: look the parent up after
  Sequence& c = seqs_[ch.index];
  const Sequence& p = seqs_[ph.index];
  c.num_tokens = p.num_tokens;
  c.tail = p.tail;
  c.hashes = p.hashes;
  c.num_computed = p.num_computed;
  c.extra = p.extra;
  for (size_t g = 0; g < managers_.size(); ++g) {
    managers_[g]->fork(p.rows[g], c.rows[g], p.num_computed, copies);
  }
  return true;
}

void KVCacheManager::free(SeqId seq) {
  const SeqHandle h = handle(seq);  // must be live
  Sequence& s = seqs_[h.index];
  for (size_t g = 0; g < managers_.size(); ++g) managers_[g]->free(s.rows[g]);
  index_.erase(seq);
  s.id = -1;
  s.tail.clear();
  s.hashes.clear();
  free_places_.push_back(h.index);
}

int64_t KVCacheManager::num_computed(SeqId seq) const { return get(seq).num_computed; }

int64_t KVCacheManager::num_tokens(SeqId seq) const { return get(seq).num_tokens; }

std::span<const int32_t> KVCacheManager::block_table(SeqId seq, int32_t group) const {
  TESSERA_CHECK(group >= 0 && group < num_groups(), "group must lie in [0, ", num_groups(),
                "), got ", group);
  return block_table(handle(seq), group);
}

std::span<const int32_t> KVCacheManager::block_table(SeqHandle h, int32_t group) const {
  TESSERA_CHECK(group >= 0 && group < num_groups(), "group must lie in [0, ", num_groups(),
                "), got ", group);
  const Sequence& s = at(h);
  return managers_[group]->blocks(s.rows[group]);
}

std::vector<int32_t> KVCacheManager::block_tables(int32_t group, std::span<const SeqId> seqs,
                                                  int64_t max_blocks) const {
  TESSERA_CHECK(max_blocks >= 0, "max_blocks must be >= 0, got ", max_blocks);
  std::vector<int32_t> out(seqs.size() * max_blocks, BlockPool::kNullBlock);
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto table = block_table(seqs[i], group);
    TESSERA_CHECK(static_cast<int64_t>(table.size()) <= max_blocks, "seq=", seqs[i], " holds ",
                  table.size(), " blocks, more than max_blocks=", max_blocks);
    std::copy(table.begin(), table.end(), out.begin() + i * max_blocks);
  }
  return out;
}

PrefixCacheStats KVCacheManager::stats() const {
  PrefixCacheStats s = stats_;
  s.evictions = pool_->evictions();
  return s;
}

namespace {

void check_pool(const BlockPool& pool, const std::vector<const SingleTypeManager*>& users) {
  const int32_t n = pool.num_blocks();
  std::vector<int64_t> refs(n, 0);
  for (const auto* m : users) {
    m->for_each_table([&](SeqId seq, std::span<const int32_t> table) {
      for (int32_t b : table) {
        TESSERA_CHECK(b >= 0 && b < n, "seq=", seq, " group ", m->group(), " holds block ", b,
                      " outside [0, ", n, ")");
        if (b != BlockPool::kNullBlock) ++refs[b];
      }
    });
  }
  TESSERA_CHECK(pool.ref_count(BlockPool::kNullBlock) == 0, "null block has ",
                pool.ref_count(BlockPool::kNullBlock), " references");
  int64_t unreferenced = 0;
  int64_t cached = 0;
  for (int32_t b = 1; b < n; ++b) {
    TESSERA_CHECK(pool.ref_count(b) == refs[b], "block ", b, " has ref count ", pool.ref_count(b),
                  " but ", refs[b], " block-table references");
    if (refs[b] == 0) ++unreferenced;
    if (pool.is_cached(b)) ++cached;
  }
  const auto free_list = pool.free_list();
  TESSERA_CHECK(static_cast<int64_t>(free_list.size()) == pool.num_free(), "free list holds ",
                free_list.size(), " blocks but num_free=", pool.num_free());
  std::vector<bool> seen(n, false);
  for (int32_t b : free_list) {
    TESSERA_CHECK(b > 0 && b < n, "free list holds block ", b);
    TESSERA_CHECK(!seen[b], "block ", b, " is twice in the free list");
    seen[b] = true;
    TESSERA_CHECK(refs[b] == 0, "free block ", b, " is referenced ", refs[b], " times");
  }
  TESSERA_CHECK(unreferenced == static_cast<int64_t>(free_list.size()), unreferenced,
                " blocks are unreferenced but ", free_list.size(), " are free (leak)");
  TESSERA_CHECK(cached == pool.num_cached(), cached, " blocks are marked cached but the index has ",
                pool.num_cached());
  for (const auto& [key, b] : pool.index()) {
    TESSERA_CHECK(b > 0 && b < n && pool.is_cached(b) && pool.key_of(b) == key,
                  "prefix index entry points at block ", b, " which does not carry its key");
  }
}

}  // namespace

void KVCacheManager::check_invariants() const {
  std::vector<const SingleTypeManager*> pool_users;
  for (const auto& m : managers_) {
    if (m->spec().is_state()) {
      check_pool(m->pool(), {m.get()});
      TESSERA_CHECK(m->num_sequences() <= num_sequences(), "group ", m->group(), " holds ",
                    m->num_sequences(), " sequences, more than the ", num_sequences(), " live");
    } else {
      pool_users.push_back(m.get());
    }
  }
  check_pool(*pool_, pool_users);
  for (const Sequence& s : seqs_) {
    if (s.id < 0) continue;
    const SeqId seq = s.id;
    for (const auto* m : pool_users) {
      auto table = m->blocks(seq);
      const int64_t first = m->first_needed_token(s.num_computed) / block_size_;
      const int64_t written = cdiv(s.num_computed, block_size_);
      TESSERA_CHECK(static_cast<int64_t>(table.size()) >= written, "seq=", seq, " group ",
                    m->group(), " has ", table.size(), " blocks for ", s.num_computed,
                    " computed tokens");
      for (int64_t i = first; i < written; ++i) {
        TESSERA_CHECK(table[i] != BlockPool::kNullBlock, "seq=", seq, " group ", m->group(),
                      " lost block ", i, " that its window still needs");
      }
    }
  }
}

}  // namespace tessera::caches
