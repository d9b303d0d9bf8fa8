// Tool calls read out of a model's answer (runtime/serving/tool_parser.h: --tool-call-parser
// hermes, llama3_json, mistral): the answer is the model's text, which a client steers (prompts,
// logit_bias, guided decoding), so any bytes. Every format reads every input. Properties: an
// answer read as calls has at least one, each with a non-empty name, arguments that are JSON, and
// content that is the text before the first call (none for llama3_json); an answer not read as
// calls is its content, whole; ids are 9 letters and digits for mistral, "chatcmpl-tool-" and 32
// hex digits otherwise; and what a stream sends as content by any cut of the answer is never more
// than the content the whole answer has (so no part of a call goes out as text).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "runtime/serving/tool_parser.h"
#include "tests/fuzz/fuzz_target.h"

namespace {
using tessera::serving::find_tool_call_format;
using tessera::serving::ParsedToolCalls;
using tessera::serving::ToolCallFormat;

// The cuts a stream may be read at: every one of a short answer; of a longer one, 64 spread over
// it and those near the first places where a call may start (each check is linear in the answer:
// all cuts of a long one would make the target quadratic and slow).
std::vector<size_t> cuts(const std::string& text) {
  std::vector<size_t> out;
  if (text.size() <= 128) {
    for (size_t k = 0; k <= text.size(); ++k) out.push_back(k);
    return out;
  }
  for (size_t i = 0; i <= 64; ++i) out.push_back(text.size() * i / 64);
  for (std::string_view tag : {"<tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "{"}) {
    size_t seen = 0;
    for (size_t at = text.find(tag); at != std::string::npos && seen < 2;
         at = text.find(tag, at + 1), ++seen) {
      for (size_t k = at > 8 ? at - 8 : 0; k <= std::min(text.size(), at + tag.size() + 2); ++k) {
        out.push_back(k);
      }
    }
  }
  return out;
}

void check(const ToolCallFormat& f, const std::string& text) {
  const std::string what = std::string(f.name) + ": ";
  const ParsedToolCalls p = f.parse(text);
  if (!p.called) {
    TESSERA_FUZZ_ASSERT(p.content == text && p.calls.empty(), what + "not called, yet changed");
  } else {
    TESSERA_FUZZ_ASSERT(!p.calls.empty(), what + "called without a call");
    TESSERA_FUZZ_ASSERT(text.compare(0, p.content.size(), p.content) == 0,
                        what + "the content is not the start of the answer");
    if (f.name == "llama3_json") TESSERA_FUZZ_ASSERT(p.content.empty(), what + "content");
    if (f.name == "hermes") {
      TESSERA_FUZZ_ASSERT(p.content.size() == text.find("<tool_call>"), what + "content end");
    }
    if (f.name == "mistral") {
      TESSERA_FUZZ_ASSERT(p.content.size() == text.find("[TOOL_CALLS]"), what + "content end");
    }
    for (const auto& c : p.calls) {
      TESSERA_FUZZ_ASSERT(!c.name.empty(), what + "an empty name");
      TESSERA_FUZZ_ASSERT(nlohmann::json::accept(c.arguments),
                          what + "arguments that are not JSON: " + c.arguments.substr(0, 100));
      if (f.name == "mistral") {
        TESSERA_FUZZ_ASSERT(
            c.id.size() == 9 &&
                std::all_of(c.id.begin(), c.id.end(),
                            [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)); }),
            what + "id " + c.id);
      } else {
        TESSERA_FUZZ_ASSERT(c.id.size() == 46 && c.id.rfind("chatcmpl-tool-", 0) == 0,
                            what + "id " + c.id);
      }
    }
  }
  const size_t final_content = p.called ? p.content.size() : text.size();
  for (size_t k : cuts(text)) {
    const size_t sent = f.content_prefix(text.substr(0, k));
    TESSERA_FUZZ_ASSERT(sent <= std::min(k, final_content),
                        what + "the stream sends " + std::to_string(sent) + " bytes at cut " +
                            std::to_string(k) + ", the content has " +
                            std::to_string(final_content));
  }
}
}  // namespace

TESSERA_FUZZ_TARGET(tool_calls) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const char* name : {"hermes", "llama3_json", "mistral"}) {
    check(*find_tool_call_format(name), text);
  }
  return 0;
}
