// A generation request as the scheduler holds it: what the caller asked for (id, prompt, sampling
// parameters, priority, LoRA adapter, cache salt) and the state the scheduler keeps (generated
// tokens, tokens whose KV is computed, status, slot). Also the per-request output of
// Scheduler::update(). Plain data, torch-free.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/scheduler/sampling_params.h"

namespace tessera::scheduler {

enum class RequestStatus : uint8_t {
  kWaiting,    // queued, never scheduled
  kRunning,    // holds a slot and KV blocks
  kPreempted,  // was running; its KV was freed and it waits to be recomputed
  kFinished,   // left the scheduler (see FinishReason)
};
std::string_view request_status_name(RequestStatus status);

enum class FinishReason : uint8_t {
  kNone,
  kStop,    // an eos id (unless ignore_eos), a stop id, or a stop string (OutputProcessor)
  kLength,  // max_tokens generated, or prompt + output reached max_model_len
  kAbort,   // Scheduler::abort()
  kError,   // for the engine (e.g. NaN logits); the scheduler refuses bad requests in add_request
};
// The OpenAI finish_reason: "stop", "length", "abort", "error" ("" for kNone).
std::string_view finish_reason_name(FinishReason reason);

struct Request {
  // ---- kept by the scheduler (read-only for others; first, as it is read every step) ----
  int64_t seq = -1;  // handle, unique over the scheduler's life; caches::SeqId
  // Tokens whose KV is in the cache (prompt first, then output); the next step computes from
  // here. Back to 0 on preemption (recompute).
  int64_t num_computed_tokens = 0;
  std::vector<int32_t> output_ids;  // generated so far, stop token included
  int32_t slot = -1;                // while running: stable index in [0, max_num_seqs)
  RequestStatus status = RequestStatus::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t stop_token_id = -1;            // the eos / stop id that finished it, else -1
  int64_t num_cached_prompt_tokens = 0;  // prefix-cache hit at first admission
  int64_t num_preemptions = 0;

  // ---- set by the caller (designated initializers may name any subset, in this order) ----
  std::string id;                   // unique among live requests; non-empty
  std::vector<int32_t> prompt_ids;  // non-empty, at most max_model_len tokens
  SamplingParams params;
  int32_t priority = 0;       // lower is served first; FCFS (arrival_time, then add order) within
  double arrival_time = 0.0;  // seconds on any clock the caller keeps monotonic; 0 = add order
  std::string lora;           // adapter name, "" = base model (a prefix-cache key)
  std::string cache_salt;     // tenant salt, "" = none (a prefix-cache key)

  int64_t num_prompt_tokens() const { return static_cast<int64_t>(prompt_ids.size()); }
  int64_t num_output_tokens() const { return static_cast<int64_t>(output_ids.size()); }
  // Prompt and output: the token history the model sees.
  int64_t num_tokens() const { return num_prompt_tokens() + num_output_tokens(); }
  int32_t token_at(int64_t pos) const {
    return pos < num_prompt_tokens() ? prompt_ids[pos] : output_ids[pos - num_prompt_tokens()];
  }
};

// What one update() tells the caller about one request: the tokens it gained this step (at most
// one today) and, once, that it finished. A request that finishes for any reason — stop, length,
// abort, error at admission — gets exactly one output with finished = true, after which the
// scheduler forgets it.
struct RequestOutput {
  std::string id;
  int64_t seq = -1;
  // The token this step added (at most one per step today), or -1 (a final output without one).
  int32_t new_token_id = -1;
  // Index of that token in the step's sampled tokens (SampledTokens::token_ids, = the sampler's
  // output row), so the engine can attach the sampler's logprobs; -1 without a new token.
  int32_t sample_index = -1;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t stop_token_id = -1;  // with kStop from an id
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // generated so far, this step's included
  int64_t cached_prompt_tokens = 0;
  bool has_new_token() const { return new_token_id >= 0; }
};

}  // namespace tessera::scheduler
