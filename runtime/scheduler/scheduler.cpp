#include "runtime/scheduler/scheduler.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include "caches/block_pool.h"
#include "common/error.h"

namespace tessera::scheduler {

namespace {

// FNV-1a: a stable 64-bit key for the LoRA name and the cache salt ("" → 0, the base model).
uint64_t name_key(std::string_view s) {
  if (s.empty()) return 0;
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h == 0 ? 1 : h;
}

bool contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

void SchedulerConfig::validate() const {
  TESSERA_CHECK(max_num_seqs >= 1, "max_num_seqs must be >= 1, got ", max_num_seqs);
  TESSERA_CHECK(max_num_seqs <= (int64_t{1} << 24), "max_num_seqs must be <= 2^24, got ",
                max_num_seqs);
  TESSERA_CHECK(max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1, got ",
                max_num_batched_tokens);
  TESSERA_CHECK(max_num_batched_tokens <= (int64_t{1} << 30),
                "max_num_batched_tokens must be <= 2^30, got ", max_num_batched_tokens);
  TESSERA_CHECK(max_model_len >= 1, "max_model_len must be >= 1, got ", max_model_len);
  TESSERA_CHECK(long_prefill_token_threshold >= 0,
                "long_prefill_token_threshold must be >= 0, got ", long_prefill_token_threshold);
  if (!enable_chunked_prefill) {
    TESSERA_CHECK(max_num_batched_tokens >= max_model_len,
                  "max_num_batched_tokens must be >= max_model_len=", max_model_len,
                  " without chunked prefill (a longer prompt could never run), got ",
                  max_num_batched_tokens);
    TESSERA_CHECK(long_prefill_token_threshold == 0,
                  "long_prefill_token_threshold must be 0 without chunked prefill, got ",
                  long_prefill_token_threshold);
  }
  for (size_t i = 0; i < eos_token_ids.size(); ++i) {
    TESSERA_CHECK(eos_token_ids[i] >= 0, "eos_token_ids[", i, "] must be >= 0, got ",
                  eos_token_ids[i]);
  }
}

// Cache-line aligned with the request first: what update() touches of it (seq, computed tokens,
// output_ids, slot, status) shares one line.
struct alignas(64) Scheduler::Entry {
  Request req;
  caches::BlockHashExtra extra;
  int64_t num_prompt = 0;
  int64_t length_limit = 0;   // prompt + output reaching this ends it: min(P + max_tokens, max_len)
  bool in_kv = false;         // the KV manager holds the sequence (only while it holds a slot)
  bool stops_on_ids = false;  // has stop ids, or eos ids that count (ignore_eos off)
  // The most tokens computed in any admission so far: a request scoring its prompt has its
  // scores through there, and may read no more than that from the prefix cache (the engine
  // scores a prompt token from the logits of the step that computes the one before it).
  int64_t most_computed = 0;

  int64_t num_tokens() const { return num_prompt + static_cast<int64_t>(req.output_ids.size()); }
};

// What a step reads and writes of a running request, by slot in one flat array: a decode step
// touches this (and the request's output_ids) and nothing else of the request.
struct Scheduler::Slot {
  Entry* entry = nullptr;  // null: the slot is free
  int64_t seq = -1;
  int64_t num_computed = 0;  // = entry->req.num_computed_tokens
  int64_t num_tokens = 0;    // prompt + output
  int64_t num_prompt = 0;
  int64_t length_limit = 0;
  // Tokens the block tables can hold (whole blocks): allocating up to here takes nothing.
  int64_t capacity = 0;
  // The KV manager's view, which may lag the request's by less than a block (see sync_kv()):
  // computed tokens committed to it, and tokens (prompt + output) appended to it.
  int64_t kv_computed = 0;
  int64_t kv_block_end = 0;  // end of the block holding token kv_computed: a commit fills it
  int64_t kv_tokens = 0;
  caches::SeqHandle kv;      // the sequence's place in the KV manager (no lookups by id)
  int32_t last_token = -1;   // the newest output token (a decode row's input)
  bool new_row = false;      // its next row is the first in its slot
  bool tables_dirty = true;  // the block tables may differ from what the runner holds
  bool stops_on_ids = false;
  bool finished = false;  // set by update(), which then forgets it
};

bool Scheduler::WaitKey::operator<(const WaitKey& o) const {
  if (priority != o.priority) return priority < o.priority;
  if (arrival != o.arrival) return arrival < o.arrival;
  return seq < o.seq;
}

Scheduler::WaitKey Scheduler::key_of(const Entry& e) {
  return {e.req.priority, e.req.arrival_time, e.req.seq};
}

Scheduler::Scheduler(SchedulerConfig config, caches::KVCacheManager& kv)
    : config_(std::move(config)), kv_(kv) {
  config_.validate();
  TESSERA_CHECK(kv_.num_sequences() == 0, "the KV cache manager must start empty, it holds ",
                kv_.num_sequences(), " sequences");
  block_size_ = kv_.block_size();
  num_groups_ = kv_.num_groups();
  // One request of max_model_len must fit alone, or it could wait (or be preempted) forever.
  caches::CacheLimits limits;
  limits.max_model_len = config_.max_model_len;
  limits.max_num_batched_tokens = config_.max_num_batched_tokens;
  limits.batch_size = config_.max_num_seqs;
  int64_t pages = 0;
  for (const auto& g : kv_.config().groups) {
    if (g.spec->is_state()) continue;
    pages += g.spec->max_pages(limits);
  }
  for (int32_t g = 0; g < num_groups_; ++g) {
    const caches::SingleTypeManager& m = kv_.manager(g);
    const auto kind = m.spec().kind();
    if (kind == caches::SpecKind::kSlidingWindow || kind == caches::SpecKind::kChunkedLocal) {
      windowed_managers_.push_back(&m);
    }
  }
  windowed_ = !windowed_managers_.empty();
  const int64_t usable = kv_.pool().num_blocks() - 1;
  TESSERA_CHECK(pages <= usable, "the KV pool holds ", usable, " blocks but one request of ",
                "max_model_len=", config_.max_model_len, " may need ", pages,
                ": lower max_model_len or give the cache more memory");
  slots_.assign(config_.max_num_seqs, Slot{});
  sent_.assign(config_.max_num_seqs * num_groups_, Sent{});
  for (int32_t g = 0; g < num_groups_; ++g) {
    const auto kind = kv_.manager(g).spec().kind();
    group_windowed_.push_back(kind == caches::SpecKind::kSlidingWindow ||
                              kind == caches::SpecKind::kChunkedLocal);
  }
  free_slots_.reserve(config_.max_num_seqs);
  for (int64_t s = 0; s < config_.max_num_seqs; ++s) free_slots_.push_back(static_cast<int32_t>(s));
  // Ascending order is already a min-heap.
  running_.reserve(config_.max_num_seqs);
}

Scheduler::~Scheduler() = default;

int64_t Scheduler::max_blocks_per_seq() const {
  return caches::cdiv(config_.max_model_len, block_size_);
}

AddResult Scheduler::add_request(Request request) {
  auto refuse = [&](std::string error) {
    ++stats_.refused;
    return AddResult{false, std::move(error)};
  };
  if (request.id.empty()) return refuse("id must not be empty");
  if (by_id_.count(request.id)) {
    return refuse("id \"" + request.id + "\" is already in use by a live request");
  }
  if (request.prompt_ids.empty()) {
    return refuse("request \"" + request.id + "\": prompt must not be empty");
  }
  if (request.num_prompt_tokens() > config_.max_model_len) {
    return refuse(detail::str_cat("request \"", request.id, "\": prompt has ",
                                  request.num_prompt_tokens(),
                                  " tokens, more than max_model_len=", config_.max_model_len));
  }
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    if (request.prompt_ids[i] < 0) {
      return refuse(detail::str_cat("request \"", request.id, "\": prompt_ids[", i,
                                    "] must be >= 0, got ", request.prompt_ids[i]));
    }
  }
  if (!std::isfinite(request.arrival_time)) {
    return refuse(detail::str_cat("request \"", request.id, "\": arrival_time must be finite, got ",
                                  request.arrival_time));
  }
  try {
    request.params.validate();
  } catch (const Error& e) {
    return refuse("request \"" + request.id + "\": " + e.message());
  }
  auto entry = std::make_unique<Entry>();
  Entry& e = *entry;
  e.req = std::move(request);
  Request& r = e.req;
  r.seq = next_seq_++;
  r.output_ids.clear();
  r.num_computed_tokens = 0;
  r.num_cached_prompt_tokens = 0;
  r.num_preemptions = 0;
  r.slot = -1;
  r.status = RequestStatus::kWaiting;
  r.finish_reason = FinishReason::kNone;
  r.stop_token_id = -1;
  e.extra.lora_id = name_key(r.lora);
  e.extra.cache_salt = name_key(r.cache_salt);
  e.num_prompt = r.num_prompt_tokens();
  e.stops_on_ids =
      !r.params.stop_token_ids.empty() || (!r.params.ignore_eos && !config_.eos_token_ids.empty());
  e.length_limit = std::min(r.num_prompt_tokens() + r.params.max_tokens, config_.max_model_len);
  waiting_.emplace(key_of(e), &e);
  by_id_.emplace(r.id, std::move(entry));
  return {};
}

const Request* Scheduler::find(std::string_view id) const {
  auto it = by_id_.find(std::string(id));
  return it == by_id_.end() ? nullptr : &it->second->req;
}

const Request* Scheduler::running_at(int32_t slot) const {
  if (slot < 0 || slot >= static_cast<int32_t>(slots_.size()) || !slots_[slot].entry) {
    return nullptr;
  }
  return &slots_[slot].entry->req;
}

std::span<const int32_t> Scheduler::block_table(const Request& r, int32_t group) const {
  TESSERA_CHECK(kv_.has(r.seq), "request \"", r.id, "\" holds no KV blocks (status ",
                request_status_name(r.status), ")");
  return kv_.block_table(r.seq, group);
}

bool Scheduler::has_unfinished() const { return !by_id_.empty() || !pending_.empty(); }

SchedulerStats Scheduler::stats() const {
  SchedulerStats s = stats_;
  s.running = num_running();
  s.waiting = num_waiting();
  s.kv_blocks_total = kv_.pool().num_blocks() - 1;
  s.kv_blocks_used = kv_.num_used_blocks();
  return s;
}

// ---- bookkeeping ----

bool Scheduler::try_allocate(Slot& s, int64_t num_tokens, std::vector<caches::BlockCopy>& copies) {
  const int64_t target = s.num_computed + num_tokens;
  if (target <= s.capacity) return true;  // the tables already hold these tokens
  sync_kv(s);                             // allocate() counts from the manager's computed tokens
  if (!kv_.allocate(s.kv, num_tokens, &copies)) return false;
  s.capacity = caches::cdiv(target, block_size_) * block_size_;
  s.tables_dirty = true;
  return true;
}

int64_t Scheduler::sync_kv_view(Slot& s) {
  if (s.kv_tokens < s.num_tokens) {
    // The manager got prompt and output at admission, so what it lacks is newer output.
    const Request& r = s.entry->req;
    const int64_t from = s.kv_tokens - s.num_prompt;
    TESSERA_CHECK(from >= 0, "request \"", r.id, "\": the KV manager lacks prompt tokens");
    kv_.append_tokens(s.kv, std::span<const int32_t>(r.output_ids).subspan(from));
    s.kv_tokens = s.num_tokens;
  }
  const int64_t to_commit = s.num_computed - s.kv_computed;
  if (to_commit > 0) {
    s.kv_computed = s.num_computed;
    s.kv_block_end = (s.kv_computed / block_size_ + 1) * block_size_;
    if (windowed_) s.tables_dirty = true;  // blocks may have left a window
  }
  return to_commit;
}

void Scheduler::sync_kv(Slot& s) {
  if (const int64_t n = sync_kv_view(s); n > 0) kv_.commit(s.kv, n);
}

bool Scheduler::commit_due(const Slot& s) const {
  // A block filled up (the prefix cache registers it at commit) ...
  const int64_t from = s.kv_computed, to = s.num_computed;
  if (to >= s.kv_block_end) return true;
  if (!windowed_) return false;
  // ... or a block left a window / chunk (commit frees it).
  for (const caches::SingleTypeManager* m : windowed_managers_) {
    if (m->first_needed_token(to) / block_size_ != m->first_needed_token(from) / block_size_) {
      return true;
    }
  }
  return false;
}

void Scheduler::release_slot(Entry& e, bool preempted) {
  const int32_t slot = e.req.slot;
  if (slot < 0) return;
  slots_[slot] = Slot{};
  // A min-heap: the lowest free slot goes first, which keeps the persistent batch dense.
  free_slots_.push_back(slot);
  std::push_heap(free_slots_.begin(), free_slots_.end(), std::greater<>());
  released_.push_back({e.req.seq, slot, preempted, e.req.id});
  e.req.slot = -1;
}

void Scheduler::remove_running(Entry& e) {
  auto it = std::find(running_.begin(), running_.end(), e.req.slot);
  TESSERA_CHECK(e.req.slot >= 0 && it != running_.end(), "request \"", e.req.id,
                "\" is not running");
  running_.erase(it);
}

Scheduler::Entry* Scheduler::pick_victim() const {
  Entry* victim = nullptr;
  for (int32_t slot : running_) {
    Entry* e = slots_[slot].entry;
    if (!victim || key_of(*victim) < key_of(*e)) victim = e;
  }
  return victim;
}

void Scheduler::preempt(Entry& e) {
  Request& r = e.req;
  kv_.free(r.seq);
  e.in_kv = false;
  e.most_computed = std::max(e.most_computed, r.num_computed_tokens);
  r.num_computed_tokens = 0;
  ++r.num_preemptions;
  ++stats_.preemptions;
  remove_running(e);
  release_slot(e, /*preempted=*/true);
  r.status = RequestStatus::kPreempted;
  waiting_.emplace(key_of(e), &e);
}

RequestOutput Scheduler::final_output(const Entry& e) const {
  RequestOutput o;
  o.id = e.req.id;
  o.seq = e.req.seq;
  o.finished = true;
  o.finish_reason = e.req.finish_reason;
  o.stop_token_id = e.req.stop_token_id;
  o.prompt_tokens = e.req.num_prompt_tokens();
  o.completion_tokens = e.req.num_output_tokens();
  o.cached_prompt_tokens = e.req.num_cached_prompt_tokens;
  return o;
}

void Scheduler::forget(Entry& e) {
  Request& r = e.req;
  if (e.in_kv) kv_.free(r.seq);
  e.in_kv = false;
  if (r.status == RequestStatus::kWaiting || r.status == RequestStatus::kPreempted) {
    waiting_.erase(key_of(e));
  }
  release_slot(e, /*preempted=*/false);
  r.status = RequestStatus::kFinished;
  ++stats_.finished;
  by_id_.erase(r.id);  // destroys e
}

bool Scheduler::abort(std::string_view id, FinishReason reason) {
  auto it = by_id_.find(std::string(id));
  if (it == by_id_.end()) return false;
  Entry& e = *it->second;
  if (e.req.status == RequestStatus::kRunning) remove_running(e);
  e.req.finish_reason = reason == FinishReason::kNone ? FinishReason::kAbort : reason;
  pending_.push_back(final_output(e));
  if (e.req.finish_reason == FinishReason::kAbort) ++stats_.aborted;
  forget(e);
  return true;
}

// ---- schedule ----

void Scheduler::emit_row(StepPlan& plan, int64_t i, int32_t slot, int64_t num_tokens,
                         int64_t token_offset) {
  Slot& s = slots_[slot];
  const int64_t start = s.num_computed;
  const int64_t end = start + num_tokens;
  ScheduledSeq& row = plan.seqs[i];
  row.seq = s.seq;
  row.slot = slot;
  row.is_new = s.new_row;
  row.sample = end == s.num_tokens;
  row.sample_index = row.sample ? plan.num_sampled++ : -1;
  row.start_pos = start;
  row.num_tokens = static_cast<int32_t>(num_tokens);
  row.token_offset = token_offset;
  row.new_index = -1;
  if (row.is_new) {
    const Request& r = s.entry->req;
    row.new_index = static_cast<int32_t>(plan.new_seqs.size());
    plan.new_seqs.push_back({static_cast<int32_t>(i), r.id, r.lora});
  }
  // Tokens [start, end) of prompt ++ output; a decode is the newest output token.
  int32_t* out = plan.token_ids.data() + token_offset;
  const int64_t p = s.num_prompt;
  if (num_tokens == 1 && start >= p && end == s.num_tokens) {
    *out = s.last_token;  // a decode: the newest token
  } else {
    const Request& r = s.entry->req;
    if (start < p)
      out = std::copy(r.prompt_ids.data() + start, r.prompt_ids.data() + std::min(end, p), out);
    if (end > p) {
      std::copy(r.output_ids.data() + (std::max(start, p) - p), r.output_ids.data() + (end - p),
                out);
    }
  }

  BlockTableDelta* d = plan.tables.data() + i * num_groups_;
  Sent* sent = sent_.data() + static_cast<size_t>(slot) * num_groups_;
  if (!s.new_row && !s.tables_dirty) {
    // Nothing changed since the last row: keep everything (most decode steps).
    const auto offset = static_cast<int64_t>(plan.blocks.size());
    for (int32_t g = 0; g < num_groups_; ++g) d[g] = {sent[g].len, sent[g].nulls, 0, offset};
  } else {
    for (int32_t g = 0; g < num_groups_; ++g) {
      Sent& t = sent[g];
      if (s.new_row) t = {};
      auto table = kv_.block_table(s.kv, g);
      const auto len = static_cast<int32_t>(table.size());
      // Tables only grow, and entries only turn null from the front (blocks that left a window;
      // a prefix hit's table may start with nulls), so only windowed groups and new rows scan.
      int32_t nulls = std::min(t.nulls, len);
      if (group_windowed_[g] || s.new_row) {
        while (nulls < len && table[nulls] == caches::BlockPool::kNullBlock) ++nulls;
      }
      const int32_t keep = std::min(t.len, len);
      d[g] = {keep, nulls, len - keep, static_cast<int64_t>(plan.blocks.size())};
      plan.blocks.insert(plan.blocks.end(), table.begin() + keep, table.end());
      t = {len, nulls};
    }
  }
  s.new_row = false;
  s.tables_dirty = false;
}

const StepPlan& Scheduler::schedule() {
  TESSERA_CHECK(!outstanding_, "schedule() called while step ", step_,
                " is outstanding: call update() with its outcome first");
  StepPlan& plan = plan_;
  plan.seqs.clear();
  plan.new_seqs.clear();
  plan.token_ids.clear();
  plan.tables.clear();
  plan.blocks.clear();
  plan.copies.clear();
  plan.num_sampled = 0;
  plan.step = ++step_;
  plan.num_groups = num_groups_;
  outstanding_ = true;
  ++stats_.steps;

  int64_t budget = config_.max_num_batched_tokens;
  const int64_t threshold = config_.long_prefill_token_threshold;
  auto clip = [&](int64_t n) {
    if (threshold > 0) n = std::min(n, threshold);
    return std::min(n, budget);
  };
  scheduled_.clear();
  bool preempted = false;

  // 1. Running requests, in admission order.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    const int32_t slot = running_[i];
    Slot& s = slots_[slot];
    const int64_t n = clip(s.num_tokens - s.num_computed);
    TESSERA_CHECK(n > 0, "running request \"", s.entry->req.id, "\" has nothing to compute");
    bool self_preempted = false;
    while (!try_allocate(s, n, plan.copies)) {
      Entry* victim = pick_victim();
      const int32_t victim_slot = victim->req.slot;
      preempted = true;
      // A victim scheduled earlier in this step gives its tokens back.
      auto it = std::find_if(scheduled_.begin(), scheduled_.end(),
                             [&](const Scheduled& x) { return x.slot == victim_slot; });
      if (it != scheduled_.end()) {
        budget += it->num_tokens;
        scheduled_.erase(it);
      }
      const auto pos = static_cast<size_t>(
          std::find(running_.begin(), running_.end(), victim_slot) - running_.begin());
      preempt(*victim);
      if (victim_slot == slot) {
        self_preempted = true;
        break;
      }
      if (pos < i) --i;
    }
    if (self_preempted) continue;  // running_[i] is now the next request
    scheduled_.push_back({slot, n});
    budget -= n;
    ++i;
  }

  // 2. Waiting requests, unless this step preempted.
  std::vector<int32_t>& tokens = scratch_;
  while (!preempted && !waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < config_.max_num_seqs) {
    Entry& e = *waiting_.begin()->second;
    Request& r = e.req;
    // The lowest free slot; given back below if the request does not fit.
    std::pop_heap(free_slots_.begin(), free_slots_.end(), std::greater<>());
    const int32_t slot = free_slots_.back();
    free_slots_.pop_back();
    Slot& s = slots_[slot];
    s = Slot{};
    s.entry = &e;
    s.seq = r.seq;
    s.num_prompt = e.num_prompt;
    s.num_tokens = e.num_tokens();
    s.length_limit = e.length_limit;
    s.stops_on_ids = e.stops_on_ids;
    s.last_token = r.output_ids.empty() ? -1 : r.output_ids.back();
    tokens.assign(r.prompt_ids.begin(), r.prompt_ids.end());
    tokens.insert(tokens.end(), r.output_ids.begin(), r.output_ids.end());
    // A request scoring its prompt reads from the prefix cache only what it has scored: at first
    // nothing (as vLLM), after a preemption what it computed before.
    const int64_t hit = r.params.prompt_logprobs >= 0
                            ? kv_.add_sequence(r.seq, tokens, e.extra, e.most_computed)
                            : kv_.add_sequence(r.seq, tokens, e.extra);
    e.in_kv = true;
    s.kv = kv_.handle(r.seq);
    r.num_computed_tokens = hit;
    s.num_computed = hit;
    s.kv_computed = hit;
    s.kv_block_end = (hit / block_size_ + 1) * block_size_;
    s.kv_tokens = s.num_tokens;
    s.capacity = hit;
    const int64_t want = s.num_tokens - hit;
    const int64_t n = clip(want);
    bool ok = config_.enable_chunked_prefill || n == want;
    if (ok) ok = try_allocate(s, n, plan.copies);
    if (!ok) {
      // Give the prefix hit and the slot back; the request stays first in line.
      kv_.free(r.seq);
      e.in_kv = false;
      r.num_computed_tokens = 0;
      s = Slot{};
      free_slots_.push_back(slot);
      std::push_heap(free_slots_.begin(), free_slots_.end(), std::greater<>());
      break;
    }
    waiting_.erase(waiting_.begin());
    stats_.prefix_queried_tokens += s.num_tokens;
    stats_.prefix_hit_tokens += hit;
    if (r.status == RequestStatus::kWaiting) r.num_cached_prompt_tokens = hit;
    r.status = RequestStatus::kRunning;
    r.slot = slot;
    s.new_row = true;
    s.tables_dirty = true;
    running_.push_back(slot);
    scheduled_.push_back({slot, n});
    budget -= n;
  }

  // 3. The plan.
  plan.released.swap(released_);
  released_.clear();
  int64_t total = 0;
  for (const Scheduled& s : scheduled_) total += s.num_tokens;
  plan.seqs.resize(scheduled_.size());
  plan.token_ids.resize(total);
  plan.tables.resize(scheduled_.size() * num_groups_);
  int64_t offset = 0;
  for (size_t i = 0; i < scheduled_.size(); ++i) {
    emit_row(plan, static_cast<int64_t>(i), scheduled_[i].slot, scheduled_[i].num_tokens, offset);
    offset += scheduled_[i].num_tokens;
  }
  return plan;
}

// ---- update ----

bool Scheduler::check_stop(Slot& s) {
  Request& r = s.entry->req;
  if (s.stops_on_ids && s.num_tokens - s.num_prompt >= r.params.min_tokens) {
    const int32_t tok = s.last_token;
    if (contains(r.params.stop_token_ids, tok) ||
        (!r.params.ignore_eos && contains(config_.eos_token_ids, tok))) {
      r.finish_reason = FinishReason::kStop;
      r.stop_token_id = tok;
      return true;
    }
  }
  if (s.num_tokens >= s.length_limit) {  // max_tokens, or max_model_len
    r.finish_reason = FinishReason::kLength;
    return true;
  }
  return false;
}

const std::vector<RequestOutput>& Scheduler::update(const StepPlan& plan,
                                                    const SampledTokens& sampled) {
  TESSERA_CHECK(outstanding_, "update() called with no outstanding plan");
  TESSERA_CHECK(plan.step == step_, "update() got the plan of step ", plan.step, " but step ",
                step_, " is outstanding");
  TESSERA_CHECK(sampled.step == plan.step, "sampled tokens are for step ", sampled.step,
                " but the plan is step ", plan.step);
  TESSERA_CHECK(static_cast<int64_t>(sampled.token_ids.size()) == plan.num_sampled,
                "sampled tokens hold ", sampled.token_ids.size(), " ids but the plan samples ",
                plan.num_sampled, " rows");
  outstanding_ = false;

  // Outputs are written into last step's objects: their strings and vectors keep their capacity.
  size_t n_out = 0;
  auto next_output = [&]() -> RequestOutput& {
    if (n_out == outputs_.size()) outputs_.emplace_back();
    RequestOutput& o = outputs_[n_out++];
    return o;
  };
  bool any_finished = false;
  commits_.clear();
  const auto num_slots = static_cast<int32_t>(slots_.size());
  const ScheduledSeq* rows = plan.seqs.data();
  const auto num_rows = static_cast<int64_t>(plan.seqs.size());
  // Each row writes one token to its request's output_ids, a cache line of its own: fetch the
  // request a few rows ahead and the end of its output_ids a few rows after that.
  constexpr int64_t kAhead = 8;
  auto slot_entry = [&](int64_t i) -> const Entry* {
    const int32_t slot = i < num_rows ? rows[i].slot : -1;
    return slot >= 0 && slot < num_slots ? slots_[slot].entry : nullptr;
  };
  for (int64_t i = 0; i < num_rows; ++i) {
    if (const Entry* ahead = slot_entry(i + 2 * kAhead)) __builtin_prefetch(&ahead->req);
    if (const Entry* ahead = slot_entry(i + kAhead)) {
      __builtin_prefetch(ahead->req.output_ids.data() + ahead->req.output_ids.size(), 1);
    }
    const ScheduledSeq& row = rows[i];
    if (row.slot < 0 || row.slot >= num_slots) continue;
    Slot& s = slots_[row.slot];
    if (!s.entry || s.seq != row.seq) continue;  // aborted since the plan was made
    Request& r = s.entry->req;
    TESSERA_CHECK(s.num_computed == row.start_pos, "plan row of request \"", r.id, "\" starts at ",
                  row.start_pos, " but it has ", s.num_computed, " computed tokens");
    s.num_computed += row.num_tokens;
    r.num_computed_tokens = s.num_computed;
    if (row.sample) {
      const int32_t tok = sampled.token_ids[row.sample_index];
      TESSERA_CHECK(tok >= 0, "sampled token of request \"", r.id, "\" must be >= 0, got ", tok);
      r.output_ids.push_back(tok);
      s.last_token = tok;
      ++s.num_tokens;
    }
    // The KV manager learns of the new tokens when it has something to do with them.
    if (commit_due(s)) {
      if (const int64_t n = sync_kv_view(s); n > 0) commits_.push_back({s.kv, n});
    }
    if (!row.sample) continue;
    RequestOutput& o = next_output();
    // Every write of an output sets id and seq together, and seq is unique over the scheduler's
    // life: an output object that held this request last step already holds its id.
    if (o.seq != s.seq || o.id.empty()) o.id.assign(r.id);
    o.seq = s.seq;
    o.new_token_id = s.last_token;
    o.sample_index = row.sample_index;
    o.prompt_tokens = s.num_prompt;
    o.completion_tokens = s.num_tokens - s.num_prompt;
    o.cached_prompt_tokens = r.num_cached_prompt_tokens;
    o.finished = check_stop(s);
    o.finish_reason = r.finish_reason;
    o.stop_token_id = r.stop_token_id;
    if (o.finished) {
      any_finished = true;
      s.finished = true;
      r.status = RequestStatus::kFinished;  // leaves running_ below, in one pass
    }
  }
  // Before forget() below frees any of them.
  kv_.commit(std::span<const caches::KVCacheManager::Commit>(commits_));
  if (any_finished) {
    done_.clear();
    std::erase_if(running_, [&](int32_t slot) {
      if (!slots_[slot].finished) return false;
      done_.push_back(slots_[slot].entry);
      return true;
    });
    for (Entry* e : done_) forget(*e);
  }
  for (auto& p : pending_) next_output() = std::move(p);
  pending_.clear();
  outputs_.resize(n_out);
  return outputs_;
}

}  // namespace tessera::scheduler
