// Tool calls in a chat answer, in the formats vLLM's `--tool-call-parser` reads:
//  - hermes (Hermes, Qwen2.5 and other models whose chat templates ask for it): each call is a
//    JSON object {"name": ..., "arguments": {...}} between <tool_call> and </tool_call> (the last
//    one may be left open at the end of the answer); the content is the text before the first
//    <tool_call>.
//  - llama3_json (Llama 3.1 / 3.2 / 4 JSON tool calling): the answer is, after an optional
//    <|python_tag|>, one or more JSON objects {"name": ..., "parameters" (or "arguments"): ...}
//    separated by ';', nothing else; no content. As vLLM's streaming reading: an answer that does
//    not start so (leading whitespace aside) is text.
//  - mistral (Mistral 7B Instruct v0.3 and later): [TOOL_CALLS] and then either a JSON array of
//    {"name": ..., "arguments": ...} (tokenizers before v11) or name[ARGS]{...} / name{...}, one
//    call after each [TOOL_CALLS] (v11 and later); the content is the text before the first
//    [TOOL_CALLS]. [TOOL_CALLS] is a special token: the server keeps special tokens in the text of
//    answers it parses this way, as vLLM does. Call ids are 9 letters and digits, as Mistral's
//    chat templates require.
// When the calls are not such JSON the whole answer stays content, no call, as vLLM. Torch-free.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::serving {

struct ToolCall {
  std::string id;  // "chatcmpl-tool-" + 32 hex digits (mistral: 9 letters and digits)
  std::string name;
  std::string arguments;  // the arguments as JSON text
};

struct ParsedToolCalls {
  bool called = false;
  std::string content;  // with called: the text before the first call ("" = none)
  std::vector<ToolCall> calls;
};

ParsedToolCalls parse_hermes_tool_calls(const std::string& text);
ParsedToolCalls parse_llama3_json_tool_calls(const std::string& text);
ParsedToolCalls parse_mistral_tool_calls(const std::string& text);

// While streaming: how much of `text` (the answer so far) may go out as content: everything
// before a call starts, or before a tail that could still become one. Never more than the content
// the whole answer will have if it is read as calls.
size_t hermes_content_prefix(const std::string& text);
size_t llama3_json_content_prefix(const std::string& text);
size_t mistral_content_prefix(const std::string& text);

// One format: its name for `--tool-call-parser`, its two readings, and whether the answer's text
// must keep its special tokens (the calls start with one).
struct ToolCallFormat {
  std::string_view name;
  ParsedToolCalls (*parse)(const std::string& text);
  size_t (*content_prefix)(const std::string& text);
  bool keep_special_tokens;
};

// The format of that name; nullptr when there is none.
const ToolCallFormat* find_tool_call_format(std::string_view name);
// The names `--tool-call-parser` takes, for the flag's check and its help ("hermes, ...").
bool known_tool_call_parser(const std::string& name);
std::string tool_call_parser_names();

}  // namespace tessera::serving
