// Tool calls in a chat answer, as vLLM's `--tool-call-parser hermes` reads them (Hermes, Qwen2.5
// and other models whose chat templates ask for this format): each call is a JSON object
// {"name": ..., "arguments": {...}} between <tool_call> and </tool_call> (the last one may be left
// open at the end of the answer). The content is the text before the first <tool_call> (none when
// empty). When a call is not such JSON the whole answer stays content, no call, as vLLM.
// Torch-free.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace tessera::serving {

struct ToolCall {
  std::string id;  // "chatcmpl-tool-" + 32 hex digits
  std::string name;
  std::string arguments;  // the arguments object as JSON text
};

struct ParsedToolCalls {
  bool called = false;
  std::string content;  // with called: the text before the first call ("" = none)
  std::vector<ToolCall> calls;
};

ParsedToolCalls parse_hermes_tool_calls(const std::string& text);

// While streaming: how much of `text` (the answer so far) may go out as content: everything
// before a <tool_call>, or before a tail that could still become one.
size_t hermes_content_prefix(const std::string& text);

// The names `--tool-call-parser` takes ("hermes"), for the flag's check.
bool known_tool_call_parser(const std::string& name);

}  // namespace tessera::serving
