#include "runtime/serving/tool_parser.h"

#include <nlohmann/json.hpp>

#include <random>

namespace tessera::serving {

namespace {

constexpr std::string_view kOpen = "<tool_call>";
constexpr std::string_view kClose = "</tool_call>";

std::string tool_call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = "chatcmpl-tool-";
  for (int i = 0; i < 32; ++i) id += hex[rng() % 16];
  return id;
}

}  // namespace

ParsedToolCalls parse_hermes_tool_calls(const std::string& text) {
  ParsedToolCalls out;
  const size_t first = text.find(kOpen);
  if (first == std::string::npos) {
    out.content = text;
    return out;
  }
  std::vector<ToolCall> calls;
  size_t at = first;
  while (at != std::string::npos) {
    const size_t body = at + kOpen.size();
    const size_t close = text.find(kClose, body);
    const std::string inner =
        text.substr(body, close == std::string::npos ? std::string::npos : close - body);
    const nlohmann::json j = nlohmann::json::parse(inner, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("name") || !j["name"].is_string() ||
        !j.contains("arguments")) {
      out.content = text;  // not a call: the answer as it is
      return out;
    }
    calls.push_back({tool_call_id(), j["name"].get<std::string>(), j["arguments"].dump()});
    if (close == std::string::npos) break;
    at = text.find(kOpen, close + kClose.size());
  }
  out.called = true;
  out.content = text.substr(0, first);
  out.calls = std::move(calls);
  return out;
}

size_t hermes_content_prefix(const std::string& text) {
  const size_t first = text.find(kOpen);
  if (first != std::string::npos) return first;
  // A tail that is the start of "<tool_call>" waits for the next text.
  for (size_t k = std::min(text.size(), kOpen.size() - 1); k > 0; --k) {
    if (text.compare(text.size() - k, k, kOpen.substr(0, k)) == 0) return text.size() - k;
  }
  return text.size();
}

bool known_tool_call_parser(const std::string& name) { return name == "hermes"; }

}  // namespace tessera::serving
