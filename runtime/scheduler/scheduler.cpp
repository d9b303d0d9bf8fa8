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

struct Scheduler::Entry {
  // Hot bookkeeping first (read every step), then the request (whose own per-step state leads).
  bool in_kv = false;         // the KV manager holds the sequence
  bool new_row = false;       // its next row is the first in its slot
  bool tables_dirty = true;   // the block tables may differ from what the runner holds
  bool stops_on_ids = false;  // has stop ids, or eos ids that count (ignore_eos off)
  int32_t last_token = -1;    // the newest output token (a decode row's input)
  int64_t num_prompt = 0;
  // Tokens the block tables can hold (whole blocks): allocating up to here takes nothing.
  int64_t capacity = 0;
  int64_t length_limit = 0;  // prompt + output reaching this ends it: min(P + max_tokens, max_len)
  // The KV manager's view, which may lag the request's by less than a block (see sync_kv()):
  // computed tokens committed to it, and tokens (prompt + output) appended to it.
  int64_t kv_computed = 0;
  int64_t kv_block_end = 0;  // end of the block holding token kv_computed: a commit fills it
  int64_t kv_tokens = 0;
  struct Sent {
    int32_t len = 0;    // table length the runner holds
    int32_t nulls = 0;  // leading null entries the runner holds
  };
  static constexpr int32_t kInlineGroups = 4;
  std::array<Sent, kInlineGroups> sent_inline;  // groups [0, 4)
  std::vector<Sent> sent_more;                  // groups [4, ...)
  Sent& sent(int32_t g) {
    return g < kInlineGroups ? sent_inline[g] : sent_more[g - kInlineGroups];
  }
  Request req;
  caches::BlockHashExtra extra;

  int64_t num_tokens() const { return num_prompt + static_cast<int64_t>(req.output_ids.size()); }
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
  slots_.assign(config_.max_num_seqs, nullptr);
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
  e.sent_more.assign(std::max(0, num_groups_ - Entry::kInlineGroups), {});
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
  if (slot < 0 || slot >= static_cast<int32_t>(slots_.size()) || !slots_[slot]) return nullptr;
  return &slots_[slot]->req;
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

bool Scheduler::try_allocate(Entry& e, int64_t num_tokens, std::vector<caches::BlockCopy>& copies) {
  const int64_t target = e.req.num_computed_tokens + num_tokens;
  if (target <= e.capacity) return true;  // the tables already hold these tokens
  sync_kv(e);                             // allocate() counts from the manager's computed tokens
  if (!kv_.allocate(e.req.seq, num_tokens, &copies)) return false;
  e.capacity = caches::cdiv(target, block_size_) * block_size_;
  e.tables_dirty = true;
  return true;
}

void Scheduler::sync_kv(Entry& e) {
  Request& r = e.req;
  for (int64_t t = e.kv_tokens; t < r.num_tokens(); ++t) kv_.append_token(r.seq, r.token_at(t));
  e.kv_tokens = r.num_tokens();
  if (r.num_computed_tokens > e.kv_computed) {
    kv_.commit(r.seq, r.num_computed_tokens - e.kv_computed);
    e.kv_computed = r.num_computed_tokens;
    e.kv_block_end = (e.kv_computed / block_size_ + 1) * block_size_;
    if (windowed_) e.tables_dirty = true;  // blocks may have left a window
  }
}

bool Scheduler::commit_due(const Entry& e) const {
  // A block filled up (the prefix cache registers it at commit) ...
  const int64_t from = e.kv_computed, to = e.req.num_computed_tokens;
  if (to >= e.kv_block_end) return true;
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
  slots_[slot] = nullptr;
  // A min-heap: the lowest free slot goes first, which keeps the persistent batch dense.
  free_slots_.push_back(slot);
  std::push_heap(free_slots_.begin(), free_slots_.end(), std::greater<>());
  released_.push_back({e.req.seq, slot, preempted, e.req.id});
  e.req.slot = -1;
}

void Scheduler::remove_running(Entry& e) {
  auto it = std::find(running_.begin(), running_.end(), &e);
  TESSERA_CHECK(it != running_.end(), "request \"", e.req.id, "\" is not running");
  running_.erase(it);
}

Scheduler::Entry* Scheduler::pick_victim() const {
  Entry* victim = nullptr;
  for (Entry* e : running_) {
    if (!victim || key_of(*victim) < key_of(*e)) victim = e;
  }
  return victim;
}

void Scheduler::preempt(Entry& e) {
  Request& r = e.req;
  kv_.free(r.seq);
  e.in_kv = false;
  e.capacity = 0;
  r.num_computed_tokens = 0;
  e.kv_computed = e.kv_tokens = 0;
  ++r.num_preemptions;
  ++stats_.preemptions;
  release_slot(e, /*preempted=*/true);
  remove_running(e);
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

void Scheduler::emit_row(StepPlan& plan, int64_t i, Entry& e, int64_t num_tokens,
                         int64_t token_offset) {
  Request& r = e.req;
  const int64_t start = r.num_computed_tokens;
  const int64_t end = start + num_tokens;
  ScheduledSeq& row = plan.seqs[i];
  row.seq = r.seq;
  row.slot = r.slot;
  row.is_new = e.new_row;
  row.sample = end == e.num_tokens();
  row.sample_index = row.sample ? plan.num_sampled++ : -1;
  row.start_pos = start;
  row.num_tokens = static_cast<int32_t>(num_tokens);
  row.token_offset = token_offset;
  row.new_index = -1;
  if (row.is_new) {
    row.new_index = static_cast<int32_t>(plan.new_seqs.size());
    plan.new_seqs.push_back({static_cast<int32_t>(i), r.id, r.lora});
  }
  // Tokens [start, end) of prompt ++ output; a decode is the newest output token.
  int32_t* out = plan.token_ids.data() + token_offset;
  const int64_t p = e.num_prompt;
  if (num_tokens == 1 && start >= p && end == e.num_tokens()) {
    *out = e.last_token;  // a decode: the newest token
  } else {
    if (start < p)
      out = std::copy(r.prompt_ids.data() + start, r.prompt_ids.data() + std::min(end, p), out);
    if (end > p) {
      std::copy(r.output_ids.data() + (std::max(start, p) - p), r.output_ids.data() + (end - p),
                out);
    }
  }

  BlockTableDelta* d = plan.tables.data() + i * num_groups_;
  if (!e.new_row && !e.tables_dirty) {
    // Nothing changed since the last row: keep everything (most decode steps).
    const auto offset = static_cast<int64_t>(plan.blocks.size());
    for (int32_t g = 0; g < num_groups_; ++g) {
      const Entry::Sent& t = e.sent(g);
      d[g] = {t.len, t.nulls, 0, offset};
    }
  } else {
    for (int32_t g = 0; g < num_groups_; ++g) {
      Entry::Sent& t = e.sent(g);
      if (e.new_row) t = {};
      auto table = kv_.block_table(r.seq, g);
      const auto len = static_cast<int32_t>(table.size());
      // Tables only grow, and entries only turn null from the front (blocks that left a window).
      int32_t nulls = std::min(t.nulls, len);
      while (nulls < len && table[nulls] == caches::BlockPool::kNullBlock) ++nulls;
      const int32_t keep = std::min(t.len, len);
      d[g] = {keep, nulls, len - keep, static_cast<int64_t>(plan.blocks.size())};
      plan.blocks.insert(plan.blocks.end(), table.begin() + keep, table.end());
      t = {len, nulls};
    }
  }
  e.new_row = false;
  e.tables_dirty = false;
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
    Entry* e = running_[i];
    const int64_t n = clip(e->num_tokens() - e->req.num_computed_tokens);
    TESSERA_CHECK(n > 0, "running request \"", e->req.id, "\" has nothing to compute");
    bool self_preempted = false;
    while (!try_allocate(*e, n, plan.copies)) {
      Entry* victim = pick_victim();
      preempted = true;
      // A victim scheduled earlier in this step gives its tokens back.
      auto it = std::find_if(scheduled_.begin(), scheduled_.end(),
                             [&](const Scheduled& s) { return s.entry == victim; });
      if (it != scheduled_.end()) {
        budget += it->num_tokens;
        scheduled_.erase(it);
      }
      const auto pos = static_cast<size_t>(std::find(running_.begin(), running_.end(), victim) -
                                           running_.begin());
      preempt(*victim);
      if (victim == e) {
        self_preempted = true;
        break;
      }
      if (pos < i) --i;
    }
    if (self_preempted) continue;  // running_[i] is now the next request
    scheduled_.push_back({e, n});
    budget -= n;
    ++i;
  }

  // 2. Waiting requests, unless this step preempted.
  std::vector<int32_t>& tokens = scratch_;
  while (!preempted && !waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < config_.max_num_seqs) {
    Entry& e = *waiting_.begin()->second;
    Request& r = e.req;
    int64_t hit = 0;
    if (!e.in_kv) {
      tokens.assign(r.prompt_ids.begin(), r.prompt_ids.end());
      tokens.insert(tokens.end(), r.output_ids.begin(), r.output_ids.end());
      hit = kv_.add_sequence(r.seq, tokens, e.extra);
      e.in_kv = true;
      r.num_computed_tokens = hit;
      e.kv_computed = hit;
      e.kv_block_end = (hit / block_size_ + 1) * block_size_;
      e.kv_tokens = r.num_tokens();
      e.capacity = hit;
    }
    const int64_t want = r.num_tokens() - r.num_computed_tokens;
    const int64_t n = clip(want);
    bool ok = config_.enable_chunked_prefill || n == want;
    if (ok) ok = try_allocate(e, n, plan.copies);
    if (!ok) {
      // Give the prefix hit back; the request stays first in line.
      kv_.free(r.seq);
      e.in_kv = false;
      e.capacity = 0;
      r.num_computed_tokens = 0;
      e.kv_computed = e.kv_tokens = 0;
      break;
    }
    waiting_.erase(waiting_.begin());
    stats_.prefix_queried_tokens += r.num_tokens();
    stats_.prefix_hit_tokens += hit;
    if (r.status == RequestStatus::kWaiting) r.num_cached_prompt_tokens = hit;
    r.status = RequestStatus::kRunning;
    std::pop_heap(free_slots_.begin(), free_slots_.end(), std::greater<>());
    r.slot = free_slots_.back();
    free_slots_.pop_back();
    slots_[r.slot] = &e;
    e.new_row = true;
    e.tables_dirty = true;
    running_.push_back(&e);
    scheduled_.push_back({&e, n});
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
    emit_row(plan, static_cast<int64_t>(i), *scheduled_[i].entry, scheduled_[i].num_tokens, offset);
    offset += scheduled_[i].num_tokens;
  }
  return plan;
}

// ---- update ----

bool Scheduler::check_stop(Entry& e) {
  Request& r = e.req;
  if (e.stops_on_ids && r.num_output_tokens() >= r.params.min_tokens) {
    const int32_t tok = r.output_ids.back();
    if (contains(r.params.stop_token_ids, tok) ||
        (!r.params.ignore_eos && contains(config_.eos_token_ids, tok))) {
      r.finish_reason = FinishReason::kStop;
      r.stop_token_id = tok;
      return true;
    }
  }
  if (e.num_tokens() >= e.length_limit) {  // max_tokens, or max_model_len
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
  for (const ScheduledSeq& row : plan.seqs) {
    if (row.slot < 0 || row.slot >= static_cast<int32_t>(slots_.size())) continue;
    Entry* e = slots_[row.slot];
    if (!e || e->req.seq != row.seq) continue;  // aborted since the plan was made
    Request& r = e->req;
    TESSERA_CHECK(r.num_computed_tokens == row.start_pos, "plan row of request \"", r.id,
                  "\" starts at ", row.start_pos, " but it has ", r.num_computed_tokens,
                  " computed tokens");
    r.num_computed_tokens += row.num_tokens;
    if (row.sample) {
      const int32_t tok = sampled.token_ids[row.sample_index];
      TESSERA_CHECK(tok >= 0, "sampled token of request \"", r.id, "\" must be >= 0, got ", tok);
      r.output_ids.push_back(tok);
      e->last_token = tok;
    }
    // The KV manager learns of the new tokens when it has something to do with them.
    if (commit_due(*e)) sync_kv(*e);
    if (!row.sample) continue;
    RequestOutput& o = next_output();
    o.id.assign(r.id);
    o.seq = r.seq;
    o.new_token_id = r.output_ids.back();
    o.sample_index = row.sample_index;
    o.prompt_tokens = r.num_prompt_tokens();
    o.completion_tokens = r.num_output_tokens();
    o.cached_prompt_tokens = r.num_cached_prompt_tokens;
    o.finished = check_stop(*e);
    o.finish_reason = r.finish_reason;
    o.stop_token_id = r.stop_token_id;
    if (o.finished) {
      any_finished = true;
      r.status = RequestStatus::kFinished;  // leaves running_ below, in one pass
    }
  }
  if (any_finished) {
    std::vector<Entry*> done;
    std::erase_if(running_, [&](Entry* e) {
      if (e->req.status != RequestStatus::kFinished) return false;
      done.push_back(e);
      return true;
    });
    for (Entry* e : done) forget(*e);
  }
  for (auto& p : pending_) next_output() = std::move(p);
  pending_.clear();
  outputs_.resize(n_out);
  return outputs_;
}

}  // namespace tessera::scheduler
