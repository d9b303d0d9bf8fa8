#include "runtime/scheduler/sampling_params.h"

#include <cmath>

#include "common/error.h"

namespace tessera::scheduler {

void SamplingParams::validate() const {
  TESSERA_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
                "temperature must be a finite number >= 0, got ", temperature);
  TESSERA_CHECK(top_k >= -1, "top_k must be >= 1, or 0 / -1 for off, got ", top_k);
  TESSERA_CHECK(top_p > 0.0f && top_p <= 1.0f, "top_p must lie in (0, 1], got ", top_p);
  TESSERA_CHECK(min_p >= 0.0f && min_p <= 1.0f, "min_p must lie in [0, 1], got ", min_p);
  TESSERA_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f,
                "repetition_penalty must be a finite number > 0, got ", repetition_penalty);
  TESSERA_CHECK(presence_penalty >= -2.0f && presence_penalty <= 2.0f,
                "presence_penalty must lie in [-2, 2], got ", presence_penalty);
  TESSERA_CHECK(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
                "frequency_penalty must lie in [-2, 2], got ", frequency_penalty);
  TESSERA_CHECK(logprobs >= -1 && logprobs <= kMaxLogprobs, "logprobs must lie in [-1, ",
                kMaxLogprobs, "], got ", logprobs);
  TESSERA_CHECK(prompt_logprobs >= -1 && prompt_logprobs <= kMaxLogprobs,
                "prompt_logprobs must lie in [-1, ", kMaxLogprobs, "], got ", prompt_logprobs);
  TESSERA_CHECK(max_tokens >= 1, "max_tokens must be >= 1, got ", max_tokens);
  TESSERA_CHECK(min_tokens >= 0 && min_tokens <= max_tokens,
                "min_tokens must lie in [0, max_tokens=", max_tokens, "], got ", min_tokens);
  for (const auto& [id, bias] : logit_bias) {
    TESSERA_CHECK(id >= 0, "logit_bias: token id must be >= 0, got ", id);
    TESSERA_CHECK(std::isfinite(bias) && bias >= -100.0f && bias <= 100.0f, "logit_bias[", id,
                  "] must lie in [-100, 100], got ", bias);
  }
  for (size_t i = 0; i < allowed_token_ids.size(); ++i) {
    TESSERA_CHECK(allowed_token_ids[i] >= 0, "allowed_token_ids[", i, "] must be >= 0, got ",
                  allowed_token_ids[i]);
  }
  for (size_t i = 0; i < bad_words_ids.size(); ++i) {
    TESSERA_CHECK(!bad_words_ids[i].empty(), "bad_words_ids[", i, "] must not be empty");
    for (int32_t id : bad_words_ids[i]) {
      TESSERA_CHECK(id >= 0, "bad_words_ids[", i, "] must hold token ids >= 0, got ", id);
    }
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    TESSERA_CHECK(stop_token_ids[i] >= 0, "stop_token_ids[", i, "] must be >= 0, got ",
                  stop_token_ids[i]);
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    TESSERA_CHECK(!stop[i].empty(), "stop[", i, "] must not be empty");
  }
}

}  // namespace tessera::scheduler
