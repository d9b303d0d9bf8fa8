#include "runtime/serving/protocol.h"

#include <cmath>
#include <limits>

#include "common/error.h"
#include "runtime/scheduler/logit_bias.h"

namespace tessera::serving {

using nlohmann::json;

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

HttpResponse ApiError::response() const {
  HttpResponse r = error_response(status_, what(), param_);
  r.headers = headers_;
  return r;
}

void bad_field(const std::string& field, const std::string& what, const json& value) {
  std::string v = dump_json(value);
  if (v.size() > 100) v = v.substr(0, 100) + "...";
  throw ApiError(400, "'" + field + "' must be " + what + ", got " + v, field);
}

json parse_json_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, std::string("request body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, "request body must be a JSON object");
  return j;
}

namespace {

bool present(const json& body, const char* field) {
  auto it = body.find(field);
  return it != body.end() && !it->is_null();
}

double number(const json& body, const char* field, double def, double lo, double hi,
              const std::string& what) {
  if (!present(body, field)) return def;
  const json& v = body.at(field);
  if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo ||
      v.get<double>() > hi) {
    bad_field(field, what, v);
  }
  return v.get<double>();
}

int64_t integer(const json& body, const char* field, int64_t def, int64_t lo, int64_t hi,
                const std::string& what) {
  if (!present(body, field)) return def;
  const json& v = body.at(field);
  if (!v.is_number_integer()) bad_field(field, what, v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    bad_field(field, what, v);
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad_field(field, what, v);
  return x;
}

bool boolean(const json& body, const char* field, bool def) {
  if (!present(body, field)) return def;
  const json& v = body.at(field);
  if (!v.is_boolean()) bad_field(field, "true or false", v);
  return v.get<bool>();
}

}  // namespace

bool boolean_field(const json& body, const char* field, bool def) {
  return boolean(body, field, def);
}

namespace {

std::vector<int32_t> id_list(const json& v, const std::string& field) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (const auto& x : v) {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 ||
        x.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      bad_field(field, "a list of non-negative token ids", x);
    }
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  }
  return ids;
}

// continue_final_message (vLLM): the rendered chat cut right after the final message's content,
// so that what the template puts after it (an end-of-turn token, a newline) is not in the prompt
// and the model continues that text. The content is found from the end of the rendering; a
// template that does not print it verbatim cannot be continued (a 400).
std::string up_to_final_content(const std::string& rendered, const nlohmann::json& message) {
  std::string content;
  const nlohmann::json* c =
      message.is_object() && message.contains("content") ? &message["content"] : nullptr;
  if (c != nullptr && c->is_string()) {
    content = c->get<std::string>();
  } else if (c != nullptr && c->is_array()) {
    for (const auto& part : *c) {
      if (part.is_object() && part.contains("text") && part["text"].is_string()) {
        content += part["text"].get<std::string>();
      }
    }
  }
  if (content.empty()) {
    throw ApiError(400, "'continue_final_message' needs a final message with text content",
                   "continue_final_message");
  }
  const size_t at = rendered.rfind(content);
  if (at == std::string::npos) {
    throw ApiError(400,
                   "'continue_final_message': the chat template does not print the final "
                   "message's content verbatim, so the prompt cannot end inside it",
                   "continue_final_message");
  }
  return rendered.substr(0, at + content.size());
}

}  // namespace

std::vector<PromptInput> parse_prompt_field(const json& v, const std::string& field) {
  std::vector<PromptInput> out;
  const std::string what = "a string, a list of strings, a list of token ids or a list of them";
  if (v.is_string()) {
    out.push_back({false, v.get<std::string>(), {}});
  } else if (v.is_array() && !v.empty() && v[0].is_string()) {
    for (const auto& s : v) {
      if (!s.is_string()) bad_field(field, what, v);
      out.push_back({false, s.get<std::string>(), {}});
    }
  } else if (v.is_array() && !v.empty() && v[0].is_number()) {
    out.push_back({true, "", id_list(v, field)});
  } else if (v.is_array() && !v.empty() && v[0].is_array()) {
    for (const auto& l : v) {
      if (!l.is_array() || l.empty()) bad_field(field, what, v);
      out.push_back({true, "", id_list(l, field)});
    }
  } else {
    bad_field(field, what, v);
  }
  return out;
}

GenerationRequest parse_generation_request(const json& body, bool chat, int max_n) {
  GenerationRequest r;
  r.chat = chat;
  if (present(body, "model")) {
    if (!body["model"].is_string()) bad_field("model", "a string", body["model"]);
    r.model = body["model"].get<std::string>();
  }
  if (chat) {
    if (!present(body, "messages")) throw ApiError(400, "'messages' is required", "messages");
    const json& m = body["messages"];
    if (!m.is_array() || m.empty()) bad_field("messages", "a non-empty list of messages", m);
    for (size_t i = 0; i < m.size(); ++i) {
      if (!m[i].is_object() || !m[i].contains("role") || !m[i]["role"].is_string()) {
        bad_field("messages[" + std::to_string(i) + "]", "an object with a string 'role'", m[i]);
      }
    }
    r.messages = m;
    r.add_generation_prompt = boolean(body, "add_generation_prompt", true);
    r.continue_final_message = boolean(body, "continue_final_message", false);
    if (r.continue_final_message && r.add_generation_prompt) {
      // As vLLM: both would put a new turn's header after the message being continued.
      throw ApiError(400,
                     "'continue_final_message' needs 'add_generation_prompt' set to false (both "
                     "cannot be true)",
                     "continue_final_message");
    }
    if (present(body, "tools")) r.template_extra["tools"] = body["tools"];
    // The tools go into the prompt (the chat template renders them) and the model's answer comes
    // back as text: no tool-call parsing, no constrained decoding. "auto" and "none" are that;
    // "required" or a named function would need the output constrained, and are refused rather
    // than ignored (they were accepted and ignored).
    if (present(body, "tool_choice") && body["tool_choice"] != "auto" &&
        body["tool_choice"] != "none") {
      throw ApiError(400,
                     "'tool_choice' " + body["tool_choice"].dump() +
                         " is not supported (it needs constrained decoding): use \"auto\" or "
                         "\"none\"",
                     "tool_choice");
    }
    r.tools = present(body, "tools") && body["tools"].is_array() && !body["tools"].empty();
    r.tool_choice_none = present(body, "tool_choice") && body["tool_choice"] == "none";
    if (present(body, "chat_template_kwargs")) {
      if (!body["chat_template_kwargs"].is_object()) {
        bad_field("chat_template_kwargs", "an object", body["chat_template_kwargs"]);
      }
      for (auto& [k, v] : body["chat_template_kwargs"].items()) r.template_extra[k] = v;
    }
    // vLLM's RAG documents: given to the chat template as `documents` (templates that know them
    // render them; others ignore them, as transformers does).
    if (present(body, "documents")) {
      const json& d = body["documents"];
      if (!d.is_array()) bad_field("documents", "a list of objects", d);
      for (const auto& x : d) {
        if (!x.is_object()) bad_field("documents", "a list of objects", d);
      }
      r.template_extra["documents"] = d;
    }
    // vLLM's chat echo prepends the final message to the answer: not implemented, refused rather
    // than ignored.
    if (boolean(body, "echo", false)) {
      throw ApiError(400, "'echo' is not supported for chat completions", "echo");
    }
    r.add_special_tokens = boolean(body, "add_special_tokens", false);
  } else {
    if (!present(body, "prompt")) throw ApiError(400, "'prompt' is required", "prompt");
    r.prompts = parse_prompt_field(body["prompt"], "prompt");
    r.echo = boolean(body, "echo", false);
    r.add_special_tokens = boolean(body, "add_special_tokens", true);
    if (present(body, "suffix")) throw ApiError(400, "'suffix' is not supported", "suffix");
  }

  auto& p = r.params;
  p.temperature =
      static_cast<float>(number(body, "temperature", 1.0, 0.0, 100.0, "a number in [0, 100]"));
  p.top_p = static_cast<float>(number(body, "top_p", 1.0, 0.0, 1.0, "a number in (0, 1]"));
  if (p.top_p <= 0.0f) bad_field("top_p", "a number in (0, 1]", body["top_p"]);
  const int64_t top_k = integer(body, "top_k", 0, -1, std::numeric_limits<int32_t>::max(),
                                "-1, 0 (off) or a positive integer");
  p.top_k = top_k < 0 ? 0 : static_cast<int32_t>(top_k);
  p.min_p = static_cast<float>(number(body, "min_p", 0.0, 0.0, 1.0, "a number in [0, 1]"));
  p.presence_penalty =
      static_cast<float>(number(body, "presence_penalty", 0.0, -2.0, 2.0, "a number in [-2, 2]"));
  p.frequency_penalty =
      static_cast<float>(number(body, "frequency_penalty", 0.0, -2.0, 2.0, "a number in [-2, 2]"));
  p.repetition_penalty = static_cast<float>(
      number(body, "repetition_penalty", 1.0, 0.0, 100.0, "a number in (0, 100]"));
  if (p.repetition_penalty <= 0.0f) {
    bad_field("repetition_penalty", "a number in (0, 100]", body["repetition_penalty"]);
  }
  if (present(body, "seed")) {
    // OpenAI allows negative seeds; the engine's seed is the same 64 bits, unsigned.
    p.seed = static_cast<uint64_t>(integer(body, "seed", 0, std::numeric_limits<int64_t>::min(),
                                           std::numeric_limits<int64_t>::max(), "an integer"));
  }

  const char* max_field =
      chat && present(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (present(body, max_field)) {
    // 0 only echoes the prompt (completions with echo, as vLLM and OpenAI's legacy API).
    const bool echo_only = !chat && boolean(body, "echo", false) &&
                           body[max_field].is_number_integer() && body[max_field] == 0;
    r.max_tokens = echo_only ? 1
                             : static_cast<int32_t>(integer(body, max_field, 0, 1,
                                                            std::numeric_limits<int32_t>::max(),
                                                            "a positive integer (0 with echo)"));
    r.echo_only = echo_only;
  }
  p.min_tokens = static_cast<int32_t>(
      integer(body, "min_tokens", 0, 0, std::numeric_limits<int32_t>::max(), "an integer >= 0"));
  if (r.max_tokens && p.min_tokens > *r.max_tokens) {
    bad_field("min_tokens", "at most max_tokens (" + std::to_string(*r.max_tokens) + ")",
              body["min_tokens"]);
  }
  p.ignore_eos = boolean(body, "ignore_eos", false);
  r.n = static_cast<int>(
      integer(body, "n", 1, 1, max_n, "an integer in [1, " + std::to_string(max_n) + "]"));
  if (present(body, "best_of") && body["best_of"] != json(r.n) && body["best_of"] != json(1)) {
    throw ApiError(400, "'best_of' other than n is not supported", "best_of");
  }

  if (present(body, "stop")) {
    const json& s = body["stop"];
    if (s.is_string()) {
      p.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      for (const auto& x : s) {
        if (!x.is_string()) bad_field("stop", "a string or a list of strings", s);
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      bad_field("stop", "a string or a list of strings", s);
    }
    for (const auto& x : p.stop) {
      if (x.empty()) bad_field("stop", "non-empty strings", s);
    }
  }
  if (present(body, "stop_token_ids")) {
    const json& s = body["stop_token_ids"];
    if (!s.is_array()) bad_field("stop_token_ids", "a list of token ids", s);
    p.stop_token_ids = id_list(s, "stop_token_ids");
  }
  if (present(body, "allowed_token_ids")) {
    const json& a = body["allowed_token_ids"];
    if (!a.is_array() || a.empty()) {
      bad_field("allowed_token_ids", "a non-empty list of token ids", a);
    }
    p.allowed_token_ids = id_list(a, "allowed_token_ids");
  }
  if (present(body, "bad_words")) {
    const json& w = body["bad_words"];
    const std::string what = "a list of at most " +
                             std::to_string(GenerationRequest::kMaxBadWords) +
                             " words, each with more than whitespace";
    if (!w.is_array() || w.size() > GenerationRequest::kMaxBadWords) {
      bad_field("bad_words", what, w);
    }
    for (const auto& x : w) {
      if (!x.is_string() ||
          x.get_ref<const std::string&>().find_first_not_of(" \t\n\r\f\v") == std::string::npos) {
        bad_field("bad_words", what, x);
      }
      r.bad_words.push_back(x.get<std::string>());
    }
  }
  if (present(body, "logit_bias")) {
    try {
      p.logit_bias = scheduler::parse_logit_bias(body["logit_bias"]);
    } catch (const Error& e) {
      throw ApiError(400, e.message(), "logit_bias");
    }
  }
  p.include_stop_str_in_output = boolean(body, "include_stop_str_in_output", false);
  r.skip_special_tokens = boolean(body, "skip_special_tokens", true);
  p.skip_special_tokens = r.skip_special_tokens;

  if (chat) {
    r.logprobs = boolean(body, "logprobs", false);
    r.top_logprobs =
        static_cast<int>(integer(body, "top_logprobs", 0, 0, 20, "an integer in [0, 20]"));
    if (present(body, "top_logprobs") && !r.logprobs) {
      throw ApiError(400, "'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
    }
  } else if (present(body, "logprobs")) {
    r.logprobs = true;
    r.top_logprobs = static_cast<int>(integer(body, "logprobs", 0, 0, 20, "an integer in [0, 20]"));
  }
  p.logprobs = r.logprobs ? r.top_logprobs : -1;
  if (present(body, "prompt_logprobs")) {
    p.prompt_logprobs =
        static_cast<int32_t>(integer(body, "prompt_logprobs", 0, 0, 20, "an integer in [0, 20]"));
    r.prompt_logprobs = true;
    if (boolean(body, "stream", false)) {
      throw ApiError(400, "'prompt_logprobs' is not available with stream=true", "prompt_logprobs");
    }
  }
  // Echo with logprobs scores the prompt too (its tokens lead the logprobs, the first with none).
  if (r.echo && r.logprobs && p.prompt_logprobs < 0) p.prompt_logprobs = r.top_logprobs;

  r.stream = boolean(body, "stream", false);
  if (present(body, "stream_options")) {
    const json& so = body["stream_options"];
    if (!r.stream) {
      throw ApiError(400, "'stream_options' can only be given when 'stream' is true",
                     "stream_options");
    }
    if (!so.is_object()) bad_field("stream_options", "an object", so);
    r.include_usage = boolean(so, "include_usage", false);
    r.continuous_usage_stats = boolean(so, "continuous_usage_stats", false);
  }
  if (present(body, "user")) {
    if (!body["user"].is_string()) bad_field("user", "a string", body["user"]);
    r.user = body["user"].get<std::string>();
  }
  r.priority = static_cast<int>(
      integer(body, "priority", 0, -1000000, 1000000, "an integer in [-1000000, 1000000]"));
  // vLLM's guided decoding: guided_choice (or structured_outputs {"choice": [...]}) is
  // honoured; the other constraints are refused rather than dropped (the request was answered
  // unconstrained).
  for (const char* g : {"guided_json", "guided_regex", "guided_grammar"}) {
    if (present(body, g)) {
      throw ApiError(400, std::string("'") + g + "' (guided decoding) is not supported", g);
    }
  }
  auto choices = [&](const json& v, const std::string& field) {
    const std::string what =
        "a list of 1 to " + std::to_string(GenerationRequest::kMaxChoices) + " non-empty strings";
    if (!v.is_array() || v.empty() || v.size() > GenerationRequest::kMaxChoices) {
      bad_field(field, what, v);
    }
    for (const auto& c : v) {
      if (!c.is_string() || c.get_ref<const std::string&>().empty()) bad_field(field, what, c);
      r.guided_choice.push_back(c.get<std::string>());
    }
  };
  if (present(body, "guided_choice")) choices(body["guided_choice"], "guided_choice");
  if (present(body, "structured_outputs")) {
    const json& so = body["structured_outputs"];
    if (!so.is_object()) bad_field("structured_outputs", "an object", so);
    for (const auto& [k, v] : so.items()) {
      if (v.is_null()) continue;
      if (k == "json_object") {
        if (!v.is_boolean()) bad_field("structured_outputs.json_object", "true or false", v);
        r.json_object = r.json_object || v.get<bool>();
        continue;
      }
      if (k != "choice") {
        throw ApiError(
            400,
            "'structured_outputs." + k +
                "' (guided decoding) is not supported; only 'choice' and 'json_object' are",
            "structured_outputs");
      }
      if (!r.guided_choice.empty()) {
        throw ApiError(400, "give the choices once: guided_choice or structured_outputs.choice",
                       "structured_outputs");
      }
      choices(v, "structured_outputs.choice");
    }
  }
  if (present(body, "truncate_prompt_tokens")) {
    const char* what = "-1 (the model's maximum length) or a positive integer";
    const int64_t k =
        integer(body, "truncate_prompt_tokens", 0, -1, std::numeric_limits<int32_t>::max(), what);
    if (k == 0) bad_field("truncate_prompt_tokens", what, body["truncate_prompt_tokens"]);
    r.truncate_prompt_tokens = k;
  }
  if (present(body, "cache_salt")) {
    const json& c = body["cache_salt"];
    if (!c.is_string() || c.get<std::string>().empty()) {
      bad_field("cache_salt", "a non-empty string", c);
    }
    r.cache_salt = c.get<std::string>();
  }
  // vLLM's other sampling fields that would change the answer and have no implementation here:
  // refused rather than ignored. (length_penalty only acts in beam search.)
  if (boolean(body, "use_beam_search", false)) {
    throw ApiError(400, "'use_beam_search' is not supported (sampling and greedy only)",
                   "use_beam_search");
  }
  if (number(body, "length_penalty", 1.0, -1e6, 1e6, "a number") != 1.0) {
    throw ApiError(400, "'length_penalty' applies to beam search, which is not supported",
                   "length_penalty");
  }
  for (const char* f : {"logits_processors"}) {
    if (present(body, f) && !(body[f].is_array() && body[f].empty())) {
      throw ApiError(400, std::string("'") + f + "' is not supported", f);
    }
  }
  r.return_tokens_as_token_ids = boolean(body, "return_tokens_as_token_ids", false);
  if (present(body, "response_format")) {
    const json& f = body["response_format"];
    if (f.is_object() && f.contains("type") && f["type"] == "json_object") {
      r.json_object = true;
    } else if (!f.is_object() || !f.contains("type") || f["type"] != "text") {
      throw ApiError(400,
                     "'response_format' other than {\"type\": \"text\"} or "
                     "{\"type\": \"json_object\"} is not supported",
                     "response_format");
    }
  }
  if (r.json_object && !r.guided_choice.empty()) {
    throw ApiError(400, "give one output constraint: a JSON object or choices", "response_format");
  }
  return r;
}

std::string chat_prompt_text(const ServingTokenizer& tok, const GenerationRequest& r) {
  std::string text;
  try {
    text = tok.render_chat(r.messages, r.add_generation_prompt, r.template_extra);
  } catch (const Error& e) {
    throw ApiError(400, e.message(), "messages");
  }
  if (r.continue_final_message) text = up_to_final_content(text, r.messages.back());
  return text;
}

std::vector<std::vector<int32_t>> bad_words_token_ids(const ServingTokenizer& tok,
                                                      const std::vector<std::string>& words) {
  std::vector<std::vector<int32_t>> out;
  for (const std::string& word : words) {
    const size_t start = word.find_first_not_of(" \t\n\r\f\v");
    if (start == std::string::npos) bad_field("bad_words", "words with more than whitespace", word);
    const std::string bare = word.substr(start);
    std::vector<int32_t> ids = tok.encode(bare, false);
    if (ids.empty()) bad_field("bad_words", "words that tokenize to at least one token", word);
    std::vector<int32_t> spaced = tok.encode(" " + bare, false);
    out.push_back(std::move(ids));
    if (!spaced.empty() && spaced[0] != out.back()[0] && spaced.size() == out.back().size()) {
      out.push_back(std::move(spaced));
    }
  }
  return out;
}

}  // namespace tessera::serving
