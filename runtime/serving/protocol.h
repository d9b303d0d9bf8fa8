// OpenAI request parsing and validation (completions, chat completions; vLLM's extras): every bad
// field is refused with a 400 that names the field and the value it had.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/engine/engine_client.h"
#include "runtime/serving/http_types.h"
#include "runtime/serving/tokenizer.h"

namespace tessera::serving {

// An error answered to the client as OpenAI's error JSON.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = "", Headers headers = {})
      : std::runtime_error(message),
        status_(status),
        param_(std::move(param)),
        headers_(std::move(headers)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const Headers& headers() const { return headers_; }
  HttpResponse response() const;

 private:
  int status_;
  std::string param_;
  Headers headers_;
};

// A 400 "<field> must be <what>, got <value>" (the value as JSON, cut to 100 characters).
[[noreturn]] void bad_field(const std::string& field, const std::string& what,
                            const nlohmann::json& value);

nlohmann::json parse_json_body(const std::string& body);  // 400 when not a JSON object

// body[field] as a boolean: `def` when absent or null, a 400 naming the field when not a boolean.
bool boolean_field(const nlohmann::json& body, const char* field, bool def);

struct PromptInput {
  bool is_ids = false;
  std::string text;
  std::vector<int32_t> ids;
};

struct GenerationRequest {
  bool chat = false;
  std::string model;                 // "" = the default model
  std::string lora;                  // set by the server from "model": "BASE:ADAPTER"
  std::vector<PromptInput> prompts;  // completions: one or more prompts
  nlohmann::json messages;           // chat
  bool add_generation_prompt = true;
  // vLLM's continue_final_message: the prompt ends inside the final message (its content the
  // start of the answer, as a prefill), not after its end-of-turn markup.
  bool continue_final_message = false;
  nlohmann::json template_extra = nlohmann::json::object();  // tools, chat_template_kwargs
  scheduler::SamplingParams params;  // max_tokens filled in once the prompt length is known
  std::optional<int32_t> max_tokens;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool continuous_usage_stats = false;
  bool echo = false;
  bool logprobs = false;
  int top_logprobs = 0;  // alternatives per position when logprobs
  bool skip_special_tokens = true;
  bool add_special_tokens = true;
  int priority = 0;
  std::string user;
  // vLLM's truncate_prompt_tokens: keep the last k tokens of each prompt (-1: the model's maximum
  // length); applied after tokenization, before the length checks.
  std::optional<int64_t> truncate_prompt_tokens;
  std::string cache_salt;  // vLLM's cache_salt: the prefix cache is shared only within a salt
  // vLLM's bad_words (non-empty after leading whitespace, at most kMaxBadWords): tokenized by
  // the handler into params.bad_words_ids (bad_words_token_ids below).
  std::vector<std::string> bad_words;
  // vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:<id>" (ids that do not
  // decode to text on their own stay identifiable); text_offset still counts the text.
  bool return_tokens_as_token_ids = false;
  // vLLM's prompt_logprobs was asked for (params.prompt_logprobs is then >= 0): the response
  // carries "prompt_logprobs" (per choice in completions, once in chat). Not with stream.
  bool prompt_logprobs = false;
  // Completions with echo and max_tokens 0 (lm-evaluation-harness' scoring request): the engine
  // runs one token, the answer is the prompt alone (with its logprobs when asked).
  bool echo_only = false;
  // Chat: tools were given (a non-empty list), and tool_choice "none" (no tool-call parsing).
  bool tools = false;
  bool tool_choice_none = false;
  // vLLM's guided_choice / structured_outputs.choice: the output is exactly one of these.
  std::vector<std::string> guided_choice;
  // OpenAI's response_format {"type": "json_object"} / structured_outputs {"json_object": true}:
  // the answer is one JSON object (json_guide.h).
  bool json_object = false;
  static constexpr size_t kMaxChoices = 1024;
  static constexpr size_t kMaxBadWords = 1024;
};

// vLLM's tokenization of bad_words (SamplingParams.update_from_tokenizer): each word without its
// leading whitespace, then " " + that word when it gives a different first token and the same
// number of tokens (the word in the middle of a text). Ids without special tokens added.
std::vector<std::vector<int32_t>> bad_words_token_ids(const ServingTokenizer& tok,
                                                      const std::vector<std::string>& words);

GenerationRequest parse_generation_request(const nlohmann::json& body, bool chat, int max_n);

// A chat request's prompt text, as /v1/chat/completions and /tokenize both build it: the template
// rendered with the request's tools and chat_template_kwargs, with or without the generation
// prompt, cut after the final message's content for continue_final_message. Throws ApiError 400
// naming "messages" (the template failed) or "continue_final_message".
std::string chat_prompt_text(const ServingTokenizer& tok, const GenerationRequest& r);

// "prompt" or "tokens"-style inputs of /tokenize and /v1/embeddings: a string, a list of strings,
// a list of ids or a list of lists of ids.
std::vector<PromptInput> parse_prompt_field(const nlohmann::json& value, const std::string& field);

// Dump that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& j);

}  // namespace tessera::serving
