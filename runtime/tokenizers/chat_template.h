// A model's chat template (tokenizer_config.json "chat_template", or chat_template.jinja /
// chat_template.json beside it), rendered from OpenAI-style message lists as transformers'
// apply_chat_template(tokenize=False) renders it: the special tokens of tokenizer_config.json
// (bos_token, eos_token, ...) are variables, tools and documents are None unless given.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "runtime/tokenizers/jinja.h"

namespace tessera::tokenizers {

class ChatTemplate {
 public:
  ChatTemplate() = default;
  // An empty template when the folder has none (render() then throws saying so). `source`, when
  // given, replaces the folder's template (the special tokens still come from the folder's
  // tokenizer_config.json); `origin` names it in errors.
  static ChatTemplate from_folder(const std::string& dir, const std::string& source = "",
                                  const std::string& origin = "");
  // `special_tokens`: {"bos_token": "<s>", ...}, the variables transformers adds.
  static ChatTemplate from_string(const std::string& source,
                                  const nlohmann::ordered_json& special_tokens = {});

  bool empty() const { return source_.empty(); }
  const std::string& source() const { return source_; }

  // `extra` (an object) adds or overrides variables: bos_token, tools, documents, date_string...
  // Throws tessera::Error "chat template line N: ..." on a template error or raise_exception.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nlohmann::json::object()) const;
  // The same with objects in the order they were written (tojson keeps that order, as Python).
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

 private:
  std::string source_;
  std::string origin_;
  jinja::Template tpl_;
  jinja::Dict defaults_;
};

}  // namespace tessera::tokenizers
