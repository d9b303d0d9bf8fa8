// PROVISIONAL: the contract's scheduler::SamplingParams (CONTRACTS.md, owner: scheduler branch),
// used only while runtime/scheduler/sampling_params.h is not on main. engine_client.h picks the
// scheduler's header as soon as it exists; delete this file then. Fields, names and types follow
// the scheduler branch's header (as committed there) so serving's code does not change.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera::scheduler {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // HF semantics: prompt ∪ output, each id once
  float presence_penalty = 0.0f;    // OpenAI semantics: output tokens only
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;
  int64_t max_tokens = 16;
  int64_t min_tokens = 0;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;
  int32_t logprobs = -1;  // top-n, -1 = none
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;
};

}  // namespace tessera::scheduler
