// Hermes tool calls (vLLM's --tool-call-parser hermes): calls between <tool_call> tags, the
// content before them, the answer left whole when a call is not JSON with a name and arguments,
// and what a stream may send before it knows.
#include "runtime/serving/tool_parser.h"

#include <gtest/gtest.h>

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
  EXPECT_FALSE(known_tool_call_parser("mistral"));
}

}  // namespace
}  // namespace tessera::serving
