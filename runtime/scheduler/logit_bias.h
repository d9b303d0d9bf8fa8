// OpenAI's logit_bias as the server (protocol.cpp) and `generate --prompts` lines take it:
// {"token id": bias}, ids as decimal keys >= 0, each once, biases numbers in [-100, 100]; sorted
// by id. Throws tessera::Error naming "logit_bias" and the key or value. Header-only: serving is
// torch-free and does not link the scheduler library.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "common/error.h"

namespace tessera::scheduler {

inline std::vector<std::pair<int32_t, float>> parse_logit_bias(const nlohmann::json& v) {
  TESSERA_CHECK(v.is_object(), "logit_bias must be an object of token id -> bias, got ", v.dump());
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, bias] : v.items()) {
    int64_t id = -1;
    const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
    TESSERA_CHECK(ec == std::errc() && end == key.data() + key.size() && id >= 0 &&
                      id <= std::numeric_limits<int32_t>::max(),
                  "logit_bias keys must be token ids, got '", key, "'");
    TESSERA_CHECK(bias.is_number() && bias.get<double>() >= -100.0 && bias.get<double>() <= 100.0,
                  "logit_bias[", key, "] must lie in [-100, 100], got ", bias.dump());
    out.emplace_back(static_cast<int32_t>(id), bias.get<float>());
  }
  std::sort(out.begin(), out.end());  // by id, not by the keys' text
  for (size_t i = 1; i < out.size(); ++i) {
    TESSERA_CHECK(out[i].first != out[i - 1].first, "logit_bias names token ", out[i].first,
                  " twice");
  }
  return out;
}

}  // namespace tessera::scheduler
