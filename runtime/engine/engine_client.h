// The engine's face to serving (CONTRACTS.md): requests in, one output delta per request per
// engine step out. Torch-free and header-only so the HTTP layer, the router and the tests compile
// against it without the model code; the engine branch implements it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

// SamplingParams belongs to the scheduler (runtime/scheduler/). Until that header is on main,
// serving uses a provisional copy of the contract's fields (runtime/serving/provisional/).
#if __has_include("runtime/scheduler/sampling_params.h")
#include "runtime/scheduler/sampling_params.h"
#else
#include "runtime/serving/provisional/sampling_params.h"
#endif

namespace tessera::engine {

struct EngineRequest {
  std::string id;
  std::vector<int32_t> prompt_ids;
  scheduler::SamplingParams params;
  int priority = 0;
  std::string lora;        // "" = base model
  std::string cache_salt;  // "" = none; prefix-cache hits only between requests of one salt
};

struct TopLogprob {
  int32_t id;
  float logprob;
};

// One prompt token after the first, scored (params.prompt_logprobs >= 0).
struct PromptLogprob {
  int32_t id = 0;               // the prompt token
  float logprob = 0;            // its raw log-probability given the prompt tokens before it
  int32_t rank = 0;             // 1 + the number of tokens more likely there
  std::vector<TopLogprob> top;  // the prompt_logprobs most likely tokens, most likely first
};

struct RequestOutput {  // one per request per engine step (a delta)
  std::string id;
  // With a request's first output, when it asked for prompt_logprobs: one entry per prompt token
  // from the second on (the first has nothing before it).
  std::vector<PromptLogprob> prompt_logprobs;
  std::vector<int32_t> new_token_ids;
  std::vector<float> logprobs;  // of each new token (when asked)
  std::vector<std::vector<TopLogprob>> top_logprobs;
  bool finished = false;
  std::string finish_reason;  // "stop", "length", "abort", "error"
  std::string error;          // when finish_reason == "error"
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
};

struct EngineStats {
  int64_t running, waiting, kv_blocks_total, kv_blocks_used;
  double prefix_hit_rate;
  int64_t steps, preemptions;
};

class EngineClient {  // thread-safe; callbacks run on the engine thread
 public:
  virtual ~EngineClient() = default;
  virtual void add_request(EngineRequest, std::function<void(const RequestOutput&)> on_output) = 0;
  virtual void abort(const std::string& id) = 0;  // takes effect at the next step; blocks freed
  virtual EngineStats stats() const = 0;
  virtual int64_t max_model_len() const = 0;
};

}  // namespace tessera::engine
