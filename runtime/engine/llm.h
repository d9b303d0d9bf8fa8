// Offline generation on one tensor-parallel group (vLLM's LLM.generate): a list of requests in,
// every request's tokens out, run to completion with continuous batching. Every rank of the group
// calls generate(); the leader's requests are served while the other ranks run its plans. With a
// tokenizer, each request's output is detokenized as it streams (IncrementalDecoder) and its stop
// strings are applied to that text (OutputProcessor): a match ends the request ("stop").
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/engine/engine_client.h"
#include "runtime/engine/engine_core.h"

namespace tessera::tokenizers {
class Tokenizer;
}

namespace tessera::engine {

struct CompletedRequest {
  std::string id;
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> output_ids;
  std::string finish_reason;  // "stop", "length", "abort", "error"
  std::string error;          // with "error": one line naming the request and the cause
  std::string text;           // the decoded output (with a tokenizer), cut at a stop string
  int32_t stop_index = -1;    // which stop string ended the request, -1 = none
  int64_t cached_prompt_tokens = 0;
  // With params.prompt_logprobs >= 0: each prompt token from the second on, scored.
  std::vector<PromptLogprob> prompt_logprobs;
  double first_token_s = 0;  // since generate() started; 0 without tokens
  double finished_s = 0;
};

struct GenerateSummary {
  double seconds = 0;
  int64_t requests = 0;
  int64_t failed = 0;  // finish_reason "error"
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  int64_t computed_tokens = 0;  // tokens the model ran (prefix-cache hits are not recomputed)
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;
  // Sparse decode on the leader rank (its KV heads; zeros when off): decode rows x full-attention
  // layers served sparsely, tokens and K/V bytes they read against what dense decode reads.
  models::SparseDecodeStats sparse;
  double output_tok_s() const { return seconds > 0 ? output_tokens / seconds : 0; }
};

struct Progress {
  int64_t finished = 0, total = 0, output_tokens = 0;
  double seconds = 0;
};

// Runs `requests` (leader; the other ranks pass {} and get {}) to completion. Results come in
// request order. `progress` runs on the leader after each step that finished a request. A failure
// on the leader ends the other ranks' serving with the same message (CollectiveError). Without a
// tokenizer, `text` stays empty and stop strings are refused (they need text).
std::vector<CompletedRequest> generate(EngineCore& core, std::vector<EngineRequest> requests,
                                       const std::function<void(const Progress&)>& progress = {},
                                       GenerateSummary* summary = nullptr,
                                       const tokenizers::Tokenizer* tokenizer = nullptr);

}  // namespace tessera::engine
