// Chat templates (ChatTemplate: tokenizer_config.json "chat_template", our Jinja subset): the
// input is the template source, rendered over fixed conversations (system, alternating turns,
// names, tool calls, an empty list) with and without the generation prompt and with tools. Seeds:
// the public templates chat_template_test compares against jinja2 (tests/fuzz_corpus/
// chat_template/). Properties: a template is refused or renders, and a failure of either is a
// tessera::Error (the parser's and renderer's limits on nesting, recursion, ranges and repeats
// keep it bounded; a timeout or out-of-memory is a finding).
#include <nlohmann/json.hpp>

#include <string>

#include "common/error.h"
#include "runtime/tokenizers/chat_template.h"
#include "tests/fuzz/fuzz_target.h"

using nlohmann::ordered_json;

TESSERA_FUZZ_TARGET(chat_template) {
  static const ordered_json conversations[] = {
      ordered_json::parse(R"([{"role":"system","content":"Be brief."},
          {"role":"user","content":"Hi, <s> {{ x }}"},
          {"role":"assistant","content":"Hello!"},
          {"role":"user","content":"\u00fcnter \u03a3 \ud83d\ude42"}])"),
      ordered_json::parse(R"([{"role":"user","content":"weather?","name":"alice"},
          {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
           "function":{"name":"get_weather","arguments":{"city":"Oslo"}}}]},
          {"role":"tool","content":"{\"t\": 3}","tool_call_id":"c1"}])"),
      ordered_json::array(),
  };
  static const ordered_json tools = ordered_json::parse(
      R"({"tools":[{"type":"function","function":{"name":"get_weather","description":"d",
          "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]})");
  static const ordered_json specials =
      ordered_json::parse(R"({"bos_token":"<s>","eos_token":"</s>","unk_token":"<unk>"})");
  tessera::tokenizers::ChatTemplate tpl;
  try {
    tpl = tessera::tokenizers::ChatTemplate::from_string(
        std::string(reinterpret_cast<const char*>(data), size), specials);
  } catch (const tessera::Error&) {
    return 0;
  }
  for (const auto& messages : conversations) {
    for (bool gen : {false, true}) {
      try {
        (void)tpl.render(messages, gen);
      } catch (const tessera::Error&) {
      }
    }
    try {
      (void)tpl.render(messages, true, tools);
    } catch (const tessera::Error&) {
    }
  }
  return 0;
}
