// Tool calls in the formats of vLLM's --tool-call-parser hermes, llama3_json and mistral: the
// calls, the content before them, the answer left whole when a call is not JSON with a name and
// arguments, and what a stream may send before it knows (never text that turns out to be part of
// a call, for every cut of every answer here).
#include "runtime/serving/tool_parser.h"

#include <gtest/gtest.h>

#include <cctype>

#include <nlohmann/json.hpp>

namespace tessera::serving {
namespace {

TEST(ToolParser, HermesCalls) {
  const auto p = parse_hermes_tool_calls(
      "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\", \"days\": 2}}\n</tool_call>\n<tool_call>{\"name\": \"now\", \"arguments\": {}}");
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "Let me look.\n");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(nlohmann::json::parse(p.calls[0].arguments),
            (nlohmann::json{{"city", "Paris"}, {"days", 2}}));
  EXPECT_EQ(p.calls[1].name, "now");  // the last call may be left open
  EXPECT_EQ(p.calls[1].arguments, "{}");
  EXPECT_EQ(p.calls[0].id.rfind("chatcmpl-tool-", 0), 0u);
  EXPECT_EQ(p.calls[0].id.size(), 14u + 32u);
  EXPECT_NE(p.calls[0].id, p.calls[1].id);
}

TEST(ToolParser, NotACallLeavesTheAnswerWhole) {
  for (const std::string text :
       {"no calls here", "<tool_call>{not json}</tool_call>", "<tool_call>{\"name\": 1}",
        "x<tool_call>{\"name\": \"f\"}</tool_call>", "<tool_call>[1, 2]</tool_call>"}) {
    const auto p = parse_hermes_tool_calls(text);
    EXPECT_FALSE(p.called) << text;
    EXPECT_EQ(p.content, text);
    EXPECT_TRUE(p.calls.empty());
  }
}

TEST(ToolParser, StreamHoldsBackWhatMayBecomeACall) {
  EXPECT_EQ(hermes_content_prefix("Hello"), 5u);
  EXPECT_EQ(hermes_content_prefix("Hello <tool"), 6u);
  EXPECT_EQ(hermes_content_prefix("Hello <"), 6u);
  EXPECT_EQ(hermes_content_prefix("Hello <b>"), 9u);
  EXPECT_EQ(hermes_content_prefix("Hi<tool_call>{\"na"), 2u);
  EXPECT_EQ(hermes_content_prefix(""), 0u);
  EXPECT_TRUE(known_tool_call_parser("hermes"));
  EXPECT_TRUE(known_tool_call_parser("mistral"));
  EXPECT_FALSE(known_tool_call_parser("pythonic"));
  EXPECT_EQ(tool_call_parser_names(), "hermes, llama3_json, llama4_json, mistral");
}

nlohmann::json args(const ToolCall& c) { return nlohmann::json::parse(c.arguments); }

TEST(ToolParser, Llama3JsonCalls) {
  // The format of Llama 3.1's JSON tool calling: "parameters" (or "arguments"), after an optional
  // <|python_tag|>, several calls separated by ';'.
  auto p = parse_llama3_json_tool_calls(
      "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; "
      "{\"name\": \"now\", \"arguments\": {}}");
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(args(p.calls[0]), (nlohmann::json{{"city", "Paris"}}));
  EXPECT_EQ(p.calls[1].name, "now");
  EXPECT_EQ(p.calls[1].arguments, "{}");
  EXPECT_EQ(p.calls[0].id.rfind("chatcmpl-tool-", 0), 0u);

  p = parse_llama3_json_tool_calls("\n {\"name\": \"f\", \"parameters\": {\"s\": \"}{;\"}} \n");
  ASSERT_TRUE(p.called);  // braces and ';' inside strings are the string's
  EXPECT_EQ(args(p.calls[0]), (nlohmann::json{{"s", "}{;"}}));

  for (const std::string text :
       {"The weather is fine.", "Here: {\"name\": \"f\", \"parameters\": {}}",
        "{\"name\": \"f\", \"parameters\": {}} and more", "{\"name\": \"f\"}",
        "{\"name\": \"f\", \"parameters\": {}, \"arguments\": {}}",
        "{\"name\": 2, \"parameters\": {}}", "{\"name\": \"f\", \"parameters\": {}", "{\"a\": 1}",
        "<|python_tag|>print(1)", ""}) {
    p = parse_llama3_json_tool_calls(text);
    EXPECT_FALSE(p.called) << text;
    EXPECT_EQ(p.content, text);
  }
  EXPECT_EQ(llama3_json_content_prefix("Sure"), 4u);
  EXPECT_EQ(llama3_json_content_prefix("  {\"na"), 0u);
  EXPECT_EQ(llama3_json_content_prefix("<|pyth"), 0u);
  EXPECT_EQ(llama3_json_content_prefix(" \n"), 0u);
  EXPECT_EQ(llama3_json_content_prefix("<b>"), 3u);
}

TEST(ToolParser, MistralCalls) {
  // Before v11: [TOOL_CALLS] and a JSON array; the text before it is the content.
  auto p = parse_mistral_tool_calls(
      "Let me check.[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}, {\"name\": \"now\", \"arguments\": {}}]");
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "Let me check.");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(args(p.calls[0]), (nlohmann::json{{"city", "Paris"}}));
  EXPECT_EQ(p.calls[1].name, "now");
  for (const auto& c : p.calls) {  // Mistral's chat templates refuse any other id
    EXPECT_EQ(c.id.size(), 9u);
    for (char ch : c.id) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(ch))) << c.id;
  }
  EXPECT_NE(p.calls[0].id, p.calls[1].id);

  // v11 and later: name[ARGS]{...} after each [TOOL_CALLS] (or name{...}).
  p = parse_mistral_tool_calls(
      "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]add{\"a\": 3.5, \"b\": 4}");
  ASSERT_TRUE(p.called);
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(args(p.calls[0]), (nlohmann::json{{"city", "Paris"}}));
  EXPECT_EQ(p.calls[1].name, "add");
  EXPECT_EQ(args(p.calls[1]), (nlohmann::json{{"a", 3.5}, {"b", 4}}));

  for (const std::string text :
       {"no calls", "[TOOL_CALLS]", "[TOOL_CALLS] [{\"name\": \"f\"}]", "[TOOL_CALLS][]",
        "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}] trailing", "[TOOL_CALLS]{\"a\": 1}",
        "[TOOL_CALLS]f[ARGS]{\"a\": 1", "[TOOL_CALLS]f[ARGS][1]", "[TOOL_CALLS]f{} g{}"}) {
    p = parse_mistral_tool_calls(text);
    EXPECT_FALSE(p.called) << text;
    EXPECT_EQ(p.content, text);
  }
  EXPECT_EQ(mistral_content_prefix("Hi [TOOL_"), 3u);
  EXPECT_EQ(mistral_content_prefix("Hi [TOOL_CALLS][{"), 3u);
  EXPECT_EQ(mistral_content_prefix("[x]"), 3u);
}

// Each cut of an answer: what the stream sends as content by then is never more than the content
// the whole answer has once read (so no part of a call goes out as text), in every format.
TEST(ToolParser, StreamedContentIsAPrefixOfTheFinalContent) {
  const std::vector<std::string> answers = {
      "Checking.<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>",
      "<tool_call>{\"name\": \"f\", \"arguments\": {}}",
      "text <tool_call> not json",
      " <|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": [1, 2]}}; {\"name\": \"g\", "
      "\"arguments\": {}}",
      "{\"name\": \"f\", \"parameters\": {}}",
      "{\"not\": \"a call\"}",
      "Sure, here: [TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"s\": \"[TOOL_CALLS]\"}}]",
      "[TOOL_CALLS]f[ARGS]{\"a\": 1}[TOOL_CALLS]g{}",
      "plain answer with [TOOL brackets]"};
  for (const auto* name : {"hermes", "llama3_json", "mistral"}) {
    const ToolCallFormat* f = find_tool_call_format(name);
    ASSERT_NE(f, nullptr) << name;
    for (const auto& text : answers) {
      const ParsedToolCalls whole = f->parse(text);
      const size_t final_content = whole.called ? whole.content.size() : text.size();
      if (whole.called) EXPECT_EQ(text.compare(0, whole.content.size(), whole.content), 0);
      for (size_t k = 0; k <= text.size(); ++k) {
        EXPECT_LE(f->content_prefix(text.substr(0, k)), std::min(k, final_content))
            << name << " at " << k << " of " << text;
      }
    }
  }
  EXPECT_EQ(find_tool_call_format("nope"), nullptr);
  EXPECT_TRUE(find_tool_call_format("mistral")->keep_special_tokens);
  EXPECT_FALSE(find_tool_call_format("hermes")->keep_special_tokens);
}

}  // namespace
}  // namespace tessera::serving
