// --prompts FILE.jsonl and --prompt-ids: every field read, a bad line fails alone naming its
// line number and the field.
#include "runtime/engine/prompt_file.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/error.h"

namespace tessera::engine {
namespace {

TEST(PromptFile, LinesWithTheirOwnParametersAndBadLinesAlone) {
  const auto path = std::filesystem::temp_directory_path() / "tessera_prompt_file_test.jsonl";
  {
    std::ofstream f(path);
    f << R"({"prompt": "hello", "max_tokens": 7, "temperature": 0, "stop": "x", "id": "a"})"
      << "\n"
      << R"({"prompt": [1, 2, 3], "ignore_eos": true, "seed": 5, "stop_token_ids": [9]})"
      << "\n"
      << "\n"
      << R"({"prompt_ids": [4], "max_tokens": 0})"
      << "\n"
      << R"({"prompt": "x", "bogus": 1})"
      << "\n"
      << "not json\n"
      << R"({"prompt": [1, -2]})"
      << "\n"
      << R"({"prompt": "ok", "top_p": 0.5, "priority": 2, "logprobs": 3})"
      << "\n"
      << R"({"prompt": "b", "logit_bias": {"7": -100, "3": 2.5}})"
      << "\n"
      << R"({"prompt": "b", "logit_bias": {"x": 1}})"
      << "\n"
      << R"({"prompt": "b", "logit_bias": {"7": 300}})"
      << "\n"
      << R"({"prompt": "b", "allowed_token_ids": [5, 9]})"
      << "\n"
      << R"({"prompt": "b", "allowed_token_ids": []})"
      << "\n"
      << R"({"prompt": "b", "prompt_logprobs": 4})"
      << "\n"
      << R"({"prompt": "b", "prompt_logprobs": 21})"
      << "\n";
  }
  scheduler::SamplingParams defaults;
  defaults.max_tokens = 32;
  const auto specs = read_prompt_file(path.string(), defaults);
  std::filesystem::remove(path);
  ASSERT_EQ(specs.size(), 14u);
  EXPECT_EQ(specs[0].text, "hello");
  EXPECT_FALSE(specs[0].has_ids);
  EXPECT_EQ(specs[0].id, "a");
  EXPECT_EQ(specs[0].params.max_tokens, 7);
  EXPECT_EQ(specs[0].params.stop, (std::vector<std::string>{"x"}));
  EXPECT_TRUE(specs[0].error.empty()) << specs[0].error;
  EXPECT_TRUE(specs[1].has_ids);
  EXPECT_EQ(specs[1].ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_TRUE(specs[1].params.ignore_eos);
  EXPECT_EQ(specs[1].params.seed, 5u);
  EXPECT_EQ(specs[1].params.max_tokens, 32);  // the default
  EXPECT_EQ(specs[2].error, "line 4: max_tokens must be >= 1, got 0");
  EXPECT_EQ(specs[3].error, "line 5: unknown field \"bogus\"");
  EXPECT_NE(specs[4].error.find("line 6: not valid JSON"), std::string::npos) << specs[4].error;
  EXPECT_NE(specs[5].error.find("line 7: prompt[1] must be a token id >= 0, got -2"),
            std::string::npos)
      << specs[5].error;
  EXPECT_TRUE(specs[6].error.empty());
  EXPECT_EQ(specs[6].priority, 2);
  EXPECT_FLOAT_EQ(specs[6].params.top_p, 0.5f);
  EXPECT_EQ(specs[6].params.logprobs, 3);
  EXPECT_TRUE(specs[7].error.empty()) << specs[7].error;
  EXPECT_EQ(specs[7].params.logit_bias,
            (std::vector<std::pair<int32_t, float>>{{3, 2.5f}, {7, -100.0f}}));
  EXPECT_EQ(specs[8].error, "line 10: logit_bias keys must be token ids, got 'x'");
  EXPECT_EQ(specs[9].error, "line 11: logit_bias[7] must lie in [-100, 100], got 300");
  EXPECT_TRUE(specs[10].error.empty()) << specs[10].error;
  EXPECT_EQ(specs[10].params.allowed_token_ids, (std::vector<int32_t>{5, 9}));
  EXPECT_EQ(specs[11].error, "line 13: allowed_token_ids must name at least one token id, got []");
  EXPECT_EQ(specs[12].params.prompt_logprobs, 4);
  EXPECT_EQ(specs[13].error, "line 15: prompt_logprobs must lie in [-1, 20], got 21");
}

TEST(PromptFile, IdLists) {
  EXPECT_EQ(parse_id_list("1,2, 3", "--prompt-ids"), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_THROW(parse_id_list("1,,2", "--prompt-ids"), Error);
  EXPECT_THROW(parse_id_list("1,x", "--prompt-ids"), Error);
  EXPECT_THROW(parse_id_list("-1", "--prompt-ids"), Error);
  EXPECT_THROW(parse_id_list("", "--prompt-ids"), Error);
  // The message names the flag the list came from (--stop-token-ids was reported as
  // --prompt-ids) and the value.
  try {
    parse_id_list("2,abc", "--stop-token-ids");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--stop-token-ids must be a comma-separated list of "
                                         "token ids >= 0, got '2,abc'"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(read_prompt_file("/nonexistent/prompts.jsonl", {}), Error);
}

}  // namespace
}  // namespace tessera::engine
