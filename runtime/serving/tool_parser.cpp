#include "runtime/serving/tool_parser.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <random>

namespace tessera::serving {

namespace {

using nlohmann::json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kMistralCalls = "[TOOL_CALLS]";
constexpr std::string_view kMistralArgs = "[ARGS]";

std::mt19937_64& rng() {
  static thread_local std::mt19937_64 r{std::random_device{}()};
  return r;
}

std::string tool_call_id() {
  static const char* hex = "0123456789abcdef";
  std::string id = "chatcmpl-tool-";
  for (int i = 0; i < 32; ++i) id += hex[rng()() % 16];
  return id;
}

std::string mistral_tool_call_id() {
  static const char* alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string id;
  for (int i = 0; i < 9; ++i) id += alnum[rng()() % 62];
  return id;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t skip_space(std::string_view text, size_t at) {
  while (at < text.size() && is_space(text[at])) ++at;
  return at;
}

bool starts_at(std::string_view text, size_t at, std::string_view tag) {
  return at <= text.size() && text.substr(at, tag.size()) == tag;
}

// One past the end of the JSON object or array that opens at text[at], by its brackets outside
// strings; npos when it does not close. (Whether it is JSON is for the parser to say.)
size_t json_container_end(std::string_view text, size_t at) {
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = at; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if ((c == '}' || c == ']') && --depth == 0) {
      return i + 1;
    }
  }
  return std::string_view::npos;
}

json parse_span(std::string_view text, size_t begin, size_t end) {
  return json::parse(text.begin() + static_cast<std::ptrdiff_t>(begin),
                     text.begin() + static_cast<std::ptrdiff_t>(end), nullptr,
                     /*allow_exceptions=*/false);
}

// A call names its function: a non-empty string (with an empty one the answer stays text).
bool has_name(const json& j) {
  return j.is_object() && j.contains("name") && j["name"].is_string() &&
         !j["name"].get_ref<const std::string&>().empty();
}

// Everything before `tag`, or before a tail that could still become it.
size_t prefix_before(const std::string& text, std::string_view tag) {
  const size_t first = text.find(tag);
  if (first != std::string::npos) return first;
  for (size_t k = std::min(text.size(), tag.size() - 1); k > 0; --k) {
    if (text.compare(text.size() - k, k, tag.data(), k) == 0) return text.size() - k;
  }
  return text.size();
}

ParsedToolCalls not_called(const std::string& text) {
  ParsedToolCalls out;
  out.content = text;
  return out;
}

ParsedToolCalls called(std::string content, std::vector<ToolCall> calls) {
  ParsedToolCalls out;
  out.called = true;
  out.content = std::move(content);
  out.calls = std::move(calls);
  return out;
}

}  // namespace

ParsedToolCalls parse_hermes_tool_calls(const std::string& text) {
  const size_t first = text.find(kHermesOpen);
  if (first == std::string::npos) return not_called(text);
  std::vector<ToolCall> calls;
  size_t at = first;
  while (at != std::string::npos) {
    const size_t body = at + kHermesOpen.size();
    const size_t close = text.find(kHermesClose, body);
    const std::string inner =
        text.substr(body, close == std::string::npos ? std::string::npos : close - body);
    const json j = json::parse(inner, nullptr, /*allow_exceptions=*/false);
    if (!has_name(j) || !j.contains("arguments")) return not_called(text);
    calls.push_back({tool_call_id(), j["name"].get<std::string>(), j["arguments"].dump()});
    if (close == std::string::npos) break;
    at = text.find(kHermesOpen, close + kHermesClose.size());
  }
  return called(text.substr(0, first), std::move(calls));
}

size_t hermes_content_prefix(const std::string& text) { return prefix_before(text, kHermesOpen); }

ParsedToolCalls parse_llama3_json_tool_calls(const std::string& text) {
  size_t at = skip_space(text, 0);
  if (starts_at(text, at, kPythonTag)) at = skip_space(text, at + kPythonTag.size());
  if (at >= text.size() || text[at] != '{') return not_called(text);
  std::vector<ToolCall> calls;
  while (true) {
    const size_t end = json_container_end(text, at);
    if (end == std::string::npos) return not_called(text);
    const json j = parse_span(text, at, end);
    if (!has_name(j)) return not_called(text);
    const bool args = j.contains("arguments"), params = j.contains("parameters");
    if (args == params) return not_called(text);  // neither, or both (vLLM refuses both)
    calls.push_back({tool_call_id(), j["name"].get<std::string>(),
                     (args ? j["arguments"] : j["parameters"]).dump()});
    at = skip_space(text, end);
    if (at == text.size()) break;
    if (text[at] != ';') return not_called(text);
    at = skip_space(text, at + 1);
    if (at == text.size()) break;  // a ';' after the last call
    if (text[at] != '{') return not_called(text);
  }
  return called("", std::move(calls));
}

size_t llama3_json_content_prefix(const std::string& text) {
  const size_t at = skip_space(text, 0);
  if (at == text.size() || text[at] == '{') return 0;  // a call, or perhaps one
  const size_t n = std::min(text.size() - at, kPythonTag.size());
  if (text.compare(at, n, kPythonTag.data(), n) == 0) return 0;
  return text.size();  // text: a call must come first
}

ParsedToolCalls parse_mistral_tool_calls(const std::string& text) {
  const size_t first = text.find(kMistralCalls);
  if (first == std::string::npos) return not_called(text);
  std::vector<ToolCall> calls;
  size_t at = skip_space(text, first + kMistralCalls.size());
  if (at < text.size() && text[at] == '[') {
    // Before v11: one JSON array of calls, nothing after it.
    const size_t end = json_container_end(text, at);
    if (end == std::string::npos || skip_space(text, end) != text.size()) return not_called(text);
    const json j = parse_span(text, at, end);
    if (!j.is_array() || j.empty()) return not_called(text);
    for (const auto& c : j) {
      if (!has_name(c) || !c.contains("arguments")) return not_called(text);
      calls.push_back(
          {mistral_tool_call_id(), c["name"].get<std::string>(), c["arguments"].dump()});
    }
    return called(text.substr(0, first), std::move(calls));
  }
  // v11 and later: [TOOL_CALLS]name[ARGS]{...} (or name{...}) for each call.
  while (true) {
    const size_t name_begin = at;
    while (at < text.size() && (std::isalnum(static_cast<unsigned char>(text[at])) ||
                                text[at] == '_' || text[at] == '-')) {
      ++at;
    }
    if (at == name_begin) return not_called(text);
    const std::string name = text.substr(name_begin, at - name_begin);
    if (starts_at(text, at, kMistralArgs)) at += kMistralArgs.size();
    at = skip_space(text, at);
    if (at >= text.size() || text[at] != '{') return not_called(text);
    const size_t end = json_container_end(text, at);
    if (end == std::string::npos) return not_called(text);
    const json j = parse_span(text, at, end);
    if (!j.is_object()) return not_called(text);
    calls.push_back({mistral_tool_call_id(), name, j.dump()});
    at = skip_space(text, end);
    if (at == text.size()) break;
    if (!starts_at(text, at, kMistralCalls)) return not_called(text);
    at = skip_space(text, at + kMistralCalls.size());
  }
  return called(text.substr(0, first), std::move(calls));
}

size_t mistral_content_prefix(const std::string& text) {
  return prefix_before(text, kMistralCalls);
}

namespace {
constexpr ToolCallFormat kFormats[] = {
    {"hermes", &parse_hermes_tool_calls, &hermes_content_prefix, false},
    {"llama3_json", &parse_llama3_json_tool_calls, &llama3_json_content_prefix, false},
    {"llama4_json", &parse_llama3_json_tool_calls, &llama3_json_content_prefix, false},
    {"mistral", &parse_mistral_tool_calls, &mistral_content_prefix, true},
};
}  // namespace

const ToolCallFormat* find_tool_call_format(std::string_view name) {
  for (const auto& f : kFormats) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

bool known_tool_call_parser(const std::string& name) {
  return find_tool_call_format(name) != nullptr;
}

std::string tool_call_parser_names() {
  std::string out;
  for (const auto& f : kFormats) {
    if (!out.empty()) out += ", ";
    out += f.name;
  }
  return out;
}

}  // namespace tessera::serving
