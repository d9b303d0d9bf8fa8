// An OpenAI request body (completions and chat completions, vLLM's extras) through the server's
// parsing and validation: bytes → parse_json_body → parse_generation_request (both routes) and
// the prompt field of /tokenize and /v1/embeddings. Properties: a refusal is an ApiError 400 that
// names a field; an accepted request carries sampling parameters the engine accepts
// (SamplingParams::validate), so the engine never refuses what the server let through.
#include <nlohmann/json.hpp>

#include <string>

#include "common/error.h"
#include "runtime/serving/protocol.h"
#include "tests/fuzz/fuzz_target.h"

using namespace tessera::serving;

namespace {
void check_refusal(const ApiError& e) {
  TESSERA_FUZZ_ASSERT(e.status() == 400, "status " + std::to_string(e.status()) + ": " + e.what());
  TESSERA_FUZZ_ASSERT(std::string(e.what()).size() > 0, "empty message");
}
}  // namespace

TESSERA_FUZZ_TARGET(openai_request) {
  nlohmann::json body;
  try {
    body = parse_json_body(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const ApiError& e) {
    check_refusal(e);
    return 0;
  }
  for (bool chat : {false, true}) {
    try {
      const GenerationRequest r = parse_generation_request(body, chat, 64);
      TESSERA_FUZZ_ASSERT(r.n >= 1 && r.n <= 64, "n=" + std::to_string(r.n));
      TESSERA_FUZZ_ASSERT(chat ? r.messages.is_array() && !r.messages.empty() : !r.prompts.empty(),
                          "no prompt");
      auto p = r.params;
      // What generation.cpp sends: max_tokens, else what the context leaves (at least 1 here).
      p.max_tokens = r.max_tokens ? *r.max_tokens : std::max<int64_t>(1, p.min_tokens);
      try {
        p.validate();
      } catch (const tessera::Error& e) {
        TESSERA_FUZZ_ASSERT(false, std::string("accepted, but the engine would refuse: ") +
                                       e.what() + " body: " + dump_json(body).substr(0, 300));
      }
    } catch (const ApiError& e) {
      check_refusal(e);
    }
  }
  for (const char* field : {"prompt", "input"}) {
    if (!body.contains(field)) continue;
    try {
      const auto prompts = parse_prompt_field(body[field], field);
      TESSERA_FUZZ_ASSERT(!prompts.empty(), "no prompts");
      for (const auto& p : prompts) {
        for (int32_t id : p.ids) TESSERA_FUZZ_ASSERT(id >= 0, "negative id accepted");
      }
    } catch (const ApiError& e) {
      check_refusal(e);
    }
  }
  return 0;
}
