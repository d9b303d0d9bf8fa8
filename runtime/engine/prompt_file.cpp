#include "runtime/engine/prompt_file.h"

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "runtime/scheduler/logit_bias.h"

namespace tessera::engine {

namespace {

using nlohmann::json;

int64_t as_int(const json& v, const char* key) {
  TESSERA_CHECK(v.is_number_integer(), key, " must be an integer, got ", v.dump());
  return v.get<int64_t>();
}

float as_float(const json& v, const char* key) {
  TESSERA_CHECK(v.is_number(), key, " must be a number, got ", v.dump());
  return v.get<float>();
}

std::vector<int32_t> as_ids(const json& v, const char* key) {
  TESSERA_CHECK(v.is_array(), key, " must be a list of token ids, got ", v.dump());
  std::vector<int32_t> ids;
  for (size_t i = 0; i < v.size(); ++i) {
    TESSERA_CHECK(v[i].is_number_integer() && v[i].get<int64_t>() >= 0 &&
                      v[i].get<int64_t>() <= std::numeric_limits<int32_t>::max(),
                  key, "[", i, "] must be a token id >= 0, got ", v[i].dump());
    ids.push_back(static_cast<int32_t>(v[i].get<int64_t>()));
  }
  return ids;
}

void parse_into(const json& j, PromptSpec& s) {
  TESSERA_CHECK(j.is_object(), "a line must be a JSON object, got ", j.dump());
  TESSERA_CHECK(j.contains("prompt") != j.contains("prompt_ids"),
                "a line needs exactly one of \"prompt\" (text or ids) and \"prompt_ids\"");
  if (j.contains("prompt_ids")) {
    s.ids = as_ids(j["prompt_ids"], "prompt_ids");
    s.has_ids = true;
  } else if (j["prompt"].is_string()) {
    s.text = j["prompt"].get<std::string>();
  } else {
    s.ids = as_ids(j["prompt"], "prompt");
    s.has_ids = true;
  }
  auto& p = s.params;
  for (const auto& [key, v] : j.items()) {
    const char* k = key.c_str();
    if (key == "prompt" || key == "prompt_ids") continue;
    if (key == "id") {
      TESSERA_CHECK(v.is_string() && !v.get<std::string>().empty(),
                    "id must be a non-empty string, got ", v.dump());
      s.id = v.get<std::string>();
    } else if (key == "priority") {
      s.priority = static_cast<int32_t>(as_int(v, k));
    } else if (key == "lora") {
      TESSERA_CHECK(v.is_string(), "lora must be an adapter name (a string), got ", v.dump());
      s.lora = v.get<std::string>();
    } else if (key == "max_tokens") {
      p.max_tokens = as_int(v, k);
    } else if (key == "min_tokens") {
      p.min_tokens = as_int(v, k);
    } else if (key == "temperature") {
      p.temperature = as_float(v, k);
    } else if (key == "top_k") {
      p.top_k = static_cast<int32_t>(as_int(v, k));
    } else if (key == "top_p") {
      p.top_p = as_float(v, k);
    } else if (key == "min_p") {
      p.min_p = as_float(v, k);
    } else if (key == "repetition_penalty") {
      p.repetition_penalty = as_float(v, k);
    } else if (key == "presence_penalty") {
      p.presence_penalty = as_float(v, k);
    } else if (key == "frequency_penalty") {
      p.frequency_penalty = as_float(v, k);
    } else if (key == "seed") {
      TESSERA_CHECK(v.is_number_integer() || v.is_null(), "seed must be an integer, got ",
                    v.dump());
      if (v.is_null()) {
        p.seed.reset();
      } else {
        p.seed =
            v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
      }
    } else if (key == "stop") {
      p.stop.clear();
      if (v.is_string()) {
        p.stop.push_back(v.get<std::string>());
      } else {
        TESSERA_CHECK(v.is_array(), "stop must be a string or a list of strings, got ", v.dump());
        for (const auto& x : v) {
          TESSERA_CHECK(x.is_string(), "stop must be a string or a list of strings, got ",
                        v.dump());
          p.stop.push_back(x.get<std::string>());
        }
      }
    } else if (key == "stop_token_ids") {
      p.stop_token_ids = as_ids(v, k);
    } else if (key == "allowed_token_ids") {
      p.allowed_token_ids = as_ids(v, k);
      TESSERA_CHECK(!p.allowed_token_ids.empty(),
                    "allowed_token_ids must name at least one token id, got []");
    } else if (key == "ignore_eos" || key == "include_stop_str_in_output" ||
               key == "skip_special_tokens") {
      TESSERA_CHECK(v.is_boolean(), key, " must be true or false, got ", v.dump());
      (key == "ignore_eos" ? p.ignore_eos
                           : (key == "skip_special_tokens" ? p.skip_special_tokens
                                                           : p.include_stop_str_in_output)) =
          v.get<bool>();
    } else if (key == "logprobs") {
      p.logprobs = static_cast<int32_t>(as_int(v, k));
    } else if (key == "prompt_logprobs") {
      p.prompt_logprobs = static_cast<int32_t>(as_int(v, k));
    } else if (key == "logit_bias") {
      p.logit_bias = scheduler::parse_logit_bias(v);
    } else {
      TESSERA_FAIL("unknown field \"", key, "\"");
    }
  }
  p.validate();
}

}  // namespace

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (...) {
      used = 0;
    }
    TESSERA_CHECK(used > 0 && item.find_first_not_of(" \t", used) == std::string::npos && v >= 0 &&
                      v <= std::numeric_limits<int32_t>::max(),
                  flag, " must be a comma-separated list of token ids >= 0, got '", text, "'");
    ids.push_back(static_cast<int32_t>(v));
  }
  TESSERA_CHECK(!ids.empty(), flag, " must not be empty");
  return ids;
}

PromptSpec parse_prompt_line(const std::string& line, int64_t line_no,
                             const scheduler::SamplingParams& defaults) {
  PromptSpec s;
  s.params = defaults;
  try {
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      TESSERA_FAIL("not valid JSON: ", e.what());
    }
    parse_into(j, s);
  } catch (const Error& e) {
    s.error = "line " + std::to_string(line_no) + ": " + e.message();
  }
  return s;
}

std::vector<PromptSpec> read_prompt_file(const std::string& path,
                                         const scheduler::SamplingParams& defaults) {
  std::ifstream in(path);
  TESSERA_CHECK(in.good(), "cannot read --prompts file '", path, "'");
  std::vector<PromptSpec> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out.push_back(parse_prompt_line(line, n, defaults));
  }
  return out;
}

}  // namespace tessera::engine
