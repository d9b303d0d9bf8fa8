// SamplingParams::validate(): each bad field is named with its value; the defaults are valid.
#include "runtime/scheduler/sampling_params.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "common/error.h"

namespace tessera::scheduler {
namespace {

std::string error_of(const std::function<void(SamplingParams&)>& edit) {
  SamplingParams p;
  edit(p);
  try {
    p.validate();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(SamplingParams, DefaultsAreValidAndGreedyIsTemperatureZero) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate());
  EXPECT_FALSE(p.greedy());
  p.temperature = 0;
  EXPECT_TRUE(p.greedy());
  p.top_k = -1;
  p.seed = 7;
  p.logprobs = 20;
  p.min_tokens = p.max_tokens;
  EXPECT_NO_THROW(p.validate());
}

TEST(SamplingParams, EachBadFieldIsNamed) {
  const std::vector<std::pair<std::function<void(SamplingParams&)>, std::string>> cases = {
      {[](auto& p) { p.temperature = -0.5f; },
       "temperature must be a finite number >= 0, got -0.5"},
      {[](auto& p) { p.temperature = NAN; }, "temperature"},
      {[](auto& p) { p.top_k = -2; }, "top_k must be >= 1, or 0 / -1 for off, got -2"},
      {[](auto& p) { p.top_p = 1.5f; }, "top_p must lie in (0, 1], got 1.5"},
      {[](auto& p) { p.min_p = -0.1f; }, "min_p must lie in [0, 1], got -0.1"},
      {[](auto& p) { p.repetition_penalty = 0; }, "repetition_penalty must be a finite number > 0"},
      {[](auto& p) { p.presence_penalty = 2.5f; }, "presence_penalty must lie in [-2, 2], got 2.5"},
      {[](auto& p) { p.frequency_penalty = -3; }, "frequency_penalty must lie in [-2, 2], got -3"},
      {[](auto& p) { p.logprobs = 21; }, "logprobs must lie in [-1, 20], got 21"},
      {[](auto& p) { p.max_tokens = 0; }, "max_tokens must be >= 1, got 0"},
      {[](auto& p) { p.min_tokens = 17; }, "min_tokens must lie in [0, max_tokens=16], got 17"},
      {[](auto& p) {
         p.stop_token_ids = {3, -1};
       },
       "stop_token_ids[1] must be >= 0, got -1"},
      {[](auto& p) {
         p.allowed_token_ids = {4, 9, -3};
       },
       "allowed_token_ids[2] must be >= 0, got -3"},
      {[](auto& p) {
         p.bad_words_ids = {{4}, {}};
       },
       "bad_words_ids[1] must not be empty"},
      {[](auto& p) {
         p.bad_words_ids = {{4, -1}};
       },
       "bad_words_ids[0] must hold token ids >= 0, got -1"},
      {[](auto& p) {
         p.stop = {"a", ""};
       },
       "stop[1] must not be empty"},
      {[](auto& p) {
         p.logit_bias = {{3, 1.0f}, {-2, 1.0f}};
       },
       "logit_bias: token id must be >= 0, got -2"},
      {[](auto& p) {
         p.logit_bias = {{7, 100.5f}};
       },
       "logit_bias[7] must lie in [-100, 100], got 100.5"},
      {[](auto& p) {
         p.logit_bias = {{7, NAN}};
       },
       "logit_bias[7] must lie in [-100, 100]"},
  };
  for (const auto& [edit, want] : cases) {
    const std::string err = error_of(edit);
    EXPECT_NE(err.find(want), std::string::npos) << "got: " << err << "\nwant: " << want;
  }
}

}  // namespace
}  // namespace tessera::scheduler
