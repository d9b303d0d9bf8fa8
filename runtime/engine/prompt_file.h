// Prompts for offline generation: the CLI's --prompt / --prompt-ids, or a JSONL file with one
// request per line (`tessera generate --prompts FILE.jsonl`):
//   {"prompt": "text"}  or  {"prompt": [1, 2, 3]}  or  {"prompt_ids": [1, 2, 3]}
// plus, optionally, "id", "priority" and sampling fields named as in the OpenAI API / vLLM:
// max_tokens, min_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
// presence_penalty, frequency_penalty, seed, stop, stop_token_ids, ignore_eos, logprobs,
// include_stop_str_in_output, skip_special_tokens. A bad line fails alone: its PromptSpec
// carries the error (with the line number), the others run. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/scheduler/sampling_params.h"

namespace tessera::engine {

struct PromptSpec {
  std::string id;            // "" = the prompt's index
  std::string text;          // the prompt when !has_ids
  std::vector<int32_t> ids;  // the prompt when has_ids
  bool has_ids = false;
  scheduler::SamplingParams params;
  int32_t priority = 0;
  std::string lora;   // adapter name ("" = base model)
  std::string error;  // a bad input: refused with this one line, the others still run
};

// "1,2,3" (the CLI's --prompt-ids, --stop-token-ids): throws naming `flag` and the value when it
// is not a list of ids >= 0.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag);

// One JSONL line (`line_no` counts from 1). Never throws: a bad line comes back with `error`
// ("line 3: max_tokens must be >= 1, got 0").
PromptSpec parse_prompt_line(const std::string& line, int64_t line_no,
                             const scheduler::SamplingParams& defaults);

// Every non-blank line of `path`. Throws only when the file cannot be read.
std::vector<PromptSpec> read_prompt_file(const std::string& path,
                                         const scheduler::SamplingParams& defaults);

}  // namespace tessera::engine
