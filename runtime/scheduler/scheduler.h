// The continuous-batching scheduler (vLLM v1's shape): data in, data out, no model. Each step it
// gives every running request its next tokens first (decodes, or the next chunk of a prefill),
// then admits waiting requests while the token budget, max_num_seqs and the KV pool allow. KV
// blocks come from caches::KVCacheManager (hybrid full / sliding / chunked groups on one pool,
// prefix caching). When blocks run out it preempts by recompute and admits nobody that step.
// update() appends the sampled tokens and applies the stop rules. Torch-free; not thread-safe (one
// engine thread calls it).
//
// The loop:   while (s.has_unfinished()) {
//               StepPlan plan = s.schedule();         // broadcast plan.encode() to the TP group
//               SampledTokens out = run_model_and_sample(plan);
//               for (auto& o : s.update(plan, out)) deliver(o);
//             }
// schedule() and update() alternate strictly: one plan is outstanding at a time. add_request()
// and abort() may be called between any two calls.
//
// Rules (each one unit-tested in tests/runtime/scheduler/scheduler_test.cpp):
// - Budget: a step computes at most max_num_batched_tokens tokens over at most max_num_seqs rows.
//   A request's tokens to compute are num_tokens() - num_computed_tokens (a whole prompt, a
//   chunk of it, or the one newest token), clipped to long_prefill_token_threshold and to the
//   budget left.
// - Order: running requests first, in admission order; then waiting requests by (priority,
//   arrival_time, add order), lower first. A waiting request that cannot get blocks stops
//   admission for the step (no overtaking).
// - Prefix cache: at admission the longest cached prefix (whole blocks, keyed by the tokens, the
//   LoRA name and the cache salt) counts as computed; at most num_tokens - 1 tokens, so the last
//   token is always recomputed for its logits.
// - Preemption: when a running request cannot get blocks, the running request with the largest
//   (priority, arrival_time, add order) is preempted — blocks freed, num_computed_tokens = 0,
//   back to the waiting queue (whose order puts it before every later arrival of its priority) —
//   and retried until the request fits or is itself the victim. No request is admitted in a step
//   that preempted. Its generated tokens are kept and recomputed with the prompt.
// - Length: a prompt longer than max_model_len (or empty, or with invalid parameters) is refused
//   by add_request with one line naming field and value; the others go on. Generation is clipped
//   at max_model_len (vLLM): finish_reason length once prompt + output >= max_model_len, so a
//   prompt of exactly max_model_len gets one token. KV never holds more than max_model_len.
// - Stop (update, in this order): the token is in stop_token_ids, or is an eos id and not
//   ignore_eos → kStop, unless fewer than min_tokens are generated; then output = max_tokens or
//   prompt + output >= max_model_len → kLength. The stop token stays in output_ids.
// - Abort: at any time, waiting or running; blocks are freed at once; the finished output comes
//   with the next update(). A row of the outstanding plan whose request was aborted is ignored.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "caches/kv_cache_manager.h"
#include "runtime/scheduler/request.h"
#include "runtime/scheduler/step_plan.h"

namespace tessera::scheduler {

struct SchedulerConfig {
  int64_t max_num_seqs = 256;             // rows per step (and slots)
  int64_t max_num_batched_tokens = 8192;  // tokens per step
  int64_t max_model_len = 4096;           // prompt + output
  // At most this many tokens of one request per step (a long prompt then shares steps with
  // decodes); 0 = no limit beyond the budget. vLLM: long_prefill_token_threshold.
  int64_t long_prefill_token_threshold = 0;
  // false: a prompt (or a preempted request's recompute) is scheduled whole or waits.
  bool enable_chunked_prefill = true;
  // The model's end-of-sequence ids (config.json eos_token_id, generation_config.json): a
  // generated one finishes the request (unless ignore_eos or before min_tokens).
  std::vector<int32_t> eos_token_ids;

  // Throws naming field and value. max_num_batched_tokens >= 1, max_num_seqs >= 1,
  // max_model_len >= 1, long_prefill_token_threshold >= 0; without chunked prefill
  // max_num_batched_tokens >= max_model_len (else a long prompt could never run).
  void validate() const;
};

// The tokens the sampler drew for one plan.
struct SampledTokens {
  int64_t step = 0;                // the plan's step
  std::vector<int32_t> token_ids;  // [plan.num_sampled]: for the k-th row with sample = true
};

struct AddResult {
  bool ok = true;
  std::string error;  // when !ok: one line naming the field and the value
  explicit operator bool() const { return ok; }
};

struct SchedulerStats {
  int64_t running = 0;
  int64_t waiting = 0;  // preempted ones included
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t finished = 0;  // requests that left (any reason)
  int64_t aborted = 0;
  int64_t refused = 0;  // add_request errors
  // Prefix cache, counted at successful admissions (re-admissions after preemption included).
  int64_t prefix_queried_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  double prefix_hit_rate() const {
    return prefix_queried_tokens ? static_cast<double>(prefix_hit_tokens) / prefix_queried_tokens
                                 : 0.0;
  }
  int64_t kv_blocks_total = 0;  // pool blocks that can be handed out (null block excluded)
  int64_t kv_blocks_used = 0;   // referenced by some sequence
};

class Scheduler {
 public:
  // `kv` must outlive the scheduler and hold no sequences; the scheduler is its only user. Throws
  // if one request of max_model_len tokens could not fit in the pool (it would wait forever).
  Scheduler(SchedulerConfig config, caches::KVCacheManager& kv);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request (its status, outputs and counters are reset). Refused, with nothing queued:
  // an empty or duplicate id, an empty prompt or one longer than max_model_len, invalid sampling
  // parameters (SamplingParams::validate()).
  AddResult add_request(Request request);
  // Ends a waiting or running request now (its blocks go back to the pool); its final output,
  // with `reason` (kAbort, or kStop when the caller matched a stop string), comes with the next
  // update(). False when no live request has this id.
  bool abort(std::string_view id, FinishReason reason = FinishReason::kAbort);

  // The next step's plan. The reference stays valid until the next schedule() (the scheduler
  // reuses its storage; copy it to keep it longer).
  const StepPlan& schedule();
  // Applies the outcome of the outstanding plan: its rows' tokens are now in the KV cache and
  // `sampled` holds one token per sampling row. Returns one output per request that gained a
  // token or finished (aborted ones included), in plan row order, aborts last; valid until the
  // next update().
  const std::vector<RequestOutput>& update(const StepPlan& plan, const SampledTokens& sampled);

  // Live requests, or finished outputs not yet returned by update().
  bool has_unfinished() const;
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  // A live request (waiting or running), or nullptr.
  const Request* find(std::string_view id) const;
  // The request in `slot`, or nullptr: what the leader's sampler reads for a plan row (params,
  // prompt_ids, output_ids).
  const Request* running_at(int32_t slot) const;
  // The current block table of a running request in `group` (what the deltas rebuild).
  std::span<const int32_t> block_table(const Request& r, int32_t group) const;

  SchedulerStats stats() const;
  const SchedulerConfig& config() const { return config_; }
  const caches::KVCacheManager& kv() const { return kv_; }
  // Entries a block table may reach: cdiv(max_model_len, block_size).
  int64_t max_blocks_per_seq() const;

 private:
  struct Entry;  // a live request plus the scheduler's bookkeeping (scheduler.cpp)
  struct Slot;   // a running request's per-step state, by slot (scheduler.cpp)
  struct Sent {
    int32_t len = 0;    // table length the runner holds
    int32_t nulls = 0;  // leading null entries the runner holds
  };
  struct WaitKey {
    int32_t priority;
    double arrival;
    int64_t seq;
    bool operator<(const WaitKey& o) const;
  };
  struct Scheduled {
    int32_t slot;
    int64_t num_tokens;
  };
  static WaitKey key_of(const Entry& e);
  bool try_allocate(Slot& s, int64_t num_tokens, std::vector<caches::BlockCopy>& copies);
  // Brings the KV manager up to the request: appends its new tokens and commits its computed
  // ones. update() calls it only when a commit would do something (commit_due): a block filled
  // (prefix-cache registration) or a block left a window; otherwise the manager lags by less
  // than a block, which nothing reads (allocate() syncs first; free() needs no sync).
  void sync_kv(Slot& s);
  // sync_kv() but the commit: appends the new tokens, moves the slot's view of the manager, and
  // returns the computed tokens to commit (update() commits a step's together, see
  // KVCacheManager::commit of a batch).
  int64_t sync_kv_view(Slot& s);
  bool commit_due(const Slot& s) const;
  Entry* pick_victim() const;
  void preempt(Entry& e);
  void release_slot(Entry& e, bool preempted);
  void remove_running(Entry& e);
  RequestOutput final_output(const Entry& e) const;
  void forget(Entry& e);  // frees KV and slot; erases the entry (e dangles afterwards)
  // Fills row i of the (pre-sized) plan.
  void emit_row(StepPlan& plan, int64_t i, int32_t slot, int64_t num_tokens, int64_t token_offset);
  bool check_stop(Slot& s);

  SchedulerConfig config_;
  caches::KVCacheManager& kv_;
  int64_t block_size_ = 1;
  int32_t num_groups_ = 0;
  bool windowed_ = false;  // some group frees blocks that leave a window / chunk
  std::vector<const caches::SingleTypeManager*> windowed_managers_;
  std::unordered_map<std::string, std::unique_ptr<Entry>> by_id_;
  std::map<WaitKey, Entry*> waiting_;   // (priority, arrival, add order)
  std::vector<int32_t> running_;        // slots, in admission order
  std::vector<Slot> slots_;             // [max_num_seqs]
  std::vector<Sent> sent_;              // [max_num_seqs * num_groups]: what the runner holds
  std::vector<bool> group_windowed_;    // [num_groups]: sliding window / chunked local
  std::vector<Entry*> done_;            // update()'s finished requests (storage reused)
  std::vector<int32_t> free_slots_;     // a min-heap of free slots
  std::vector<ReleasedSeq> released_;   // since the last plan
  std::vector<RequestOutput> pending_;  // finished outside update(), returned by the next one
  std::vector<Scheduled> scheduled_;    // this step's rows (kept to reuse its storage)
  StepPlan plan_;                       // schedule()'s result, storage reused
  std::vector<RequestOutput> outputs_;  // update()'s result, storage reused
  std::vector<int32_t> scratch_;
  std::vector<caches::KVCacheManager::Commit> commits_;  // update()'s deferred commits
  int64_t next_seq_ = 0;
  int64_t step_ = 0;
  bool outstanding_ = false;
  SchedulerStats stats_;
};

}  // namespace tessera::scheduler
