// OpenAI request parsing: every field's type and range, and errors that name field and value.
#include "runtime/serving/protocol.h"

#include <gtest/gtest.h>

#include "runtime/serving/byte_tokenizer.h"

namespace tessera::serving {
namespace {

using nlohmann::json;

GenerationRequest completion(json body) { return parse_generation_request(body, false, 8); }

std::string error_of(json body, bool chat = false) {
  try {
    parse_generation_request(body, chat, 8);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    return e.param() + ": " + e.what();
  }
  return "accepted";
}

TEST(Protocol, CompletionFields) {
  auto r = completion({{"model", "m"},
                       {"prompt", "hi"},
                       {"max_tokens", 7},
                       {"temperature", 0.5},
                       {"top_p", 0.9},
                       {"top_k", -1},
                       {"min_p", 0.1},
                       {"presence_penalty", 0.5},
                       {"frequency_penalty", -0.5},
                       {"repetition_penalty", 1.2},
                       {"seed", -5},
                       {"stop", "x"},
                       {"stop_token_ids", {3, 4}},
                       {"logit_bias", {{"5", -100}, {"17", 2.5}}},
                       {"allowed_token_ids", {9, 2, 9}},
                       {"bad_words", {" no", "never"}},
                       {"return_tokens_as_token_ids", true},
                       {"n", 2},
                       {"logprobs", 3},
                       {"ignore_eos", true},
                       {"min_tokens", 2},
                       {"user", "u"},
                       {"stream", true},
                       {"stream_options", {{"include_usage", true}}}});
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "hi");
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_EQ(r.params.top_k, 0);
  EXPECT_EQ(*r.params.seed, static_cast<uint64_t>(int64_t{-5}));
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(r.params.stop_token_ids, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(r.params.logit_bias,
            (std::vector<std::pair<int32_t, float>>{{5, -100.0f}, {17, 2.5f}}));
  EXPECT_EQ(r.params.allowed_token_ids, (std::vector<int32_t>{9, 2, 9}));
  EXPECT_EQ(r.bad_words, (std::vector<std::string>{" no", "never"}));
  EXPECT_TRUE(r.return_tokens_as_token_ids);
  EXPECT_FALSE(completion({{"prompt", "x"}}).return_tokens_as_token_ids);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.params.logprobs, 3);
  EXPECT_TRUE(r.params.ignore_eos);
  EXPECT_EQ(r.params.min_tokens, 2);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(Protocol, PromptShapes) {
  EXPECT_EQ(completion({{"prompt", {"a", "b"}}}).prompts.size(), 2u);
  auto ids = completion({{"prompt", {1, 2, 3}}});
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_TRUE(ids.prompts[0].is_ids);
  EXPECT_EQ(completion({{"prompt", {{1, 2}, {3}}}}).prompts.size(), 2u);
  for (json bad : {json(5), json::array(), json({1, "a"}), json({{1}, {}}), json({-1})}) {
    EXPECT_NE(error_of({{"prompt", bad}}).find("prompt:"), std::string::npos) << bad;
  }
}

TEST(Protocol, ErrorsNameFieldAndValue) {
  struct Case {
    json body;
    std::string field, value;
  };
  const std::vector<Case> cases = {
      {{{"prompt", "x"}, {"temperature", -0.5}}, "temperature", "-0.5"},
      {{{"prompt", "x"}, {"top_p", 0}}, "top_p", "0"},
      {{{"prompt", "x"}, {"top_p", 1.5}}, "top_p", "1.5"},
      {{{"prompt", "x"}, {"top_k", -2}}, "top_k", "-2"},
      {{{"prompt", "x"}, {"min_p", 2}}, "min_p", "2"},
      {{{"prompt", "x"}, {"presence_penalty", 3}}, "presence_penalty", "3"},
      {{{"prompt", "x"}, {"repetition_penalty", 0}}, "repetition_penalty", "0"},
      {{{"prompt", "x"}, {"max_tokens", 0}}, "max_tokens", "0"},
      {{{"prompt", "x"}, {"max_tokens", 1.5}}, "max_tokens", "1.5"},
      {{{"prompt", "x"}, {"n", 9}}, "n", "9"},
      {{{"prompt", "x"}, {"seed", "s"}}, "seed", "\"s\""},
      {{{"prompt", "x"}, {"stop", {"a", 1}}}, "stop", "1"},
      {{{"prompt", "x"}, {"stop", ""}}, "stop", "\"\""},
      {{{"prompt", "x"}, {"logprobs", 21}}, "logprobs", "21"},
      {{{"prompt", "x"}, {"max_tokens", 3}, {"min_tokens", 4}}, "min_tokens", "4"},
      {{{"prompt", "x"}, {"stream", "yes"}}, "stream", "\"yes\""},
      {{{"prompt", "x"}, {"model", 3}}, "model", "3"},
      {{{"prompt", "x"}, {"stop_token_ids", {-1}}}, "stop_token_ids", "-1"},
      // logit_bias was accepted and ignored (any value, any key).
      {{{"prompt", "x"}, {"logit_bias", {{"5", 101}}}}, "logit_bias", "101"},
      {{{"prompt", "x"}, {"logit_bias", {{"5", "x"}}}}, "logit_bias", "\"x\""},
      {{{"prompt", "x"}, {"logit_bias", {{"-5", 1}}}}, "logit_bias", "'-5'"},
      {{{"prompt", "x"}, {"logit_bias", {{"a7", 1}}}}, "logit_bias", "'a7'"},
      {{{"prompt", "x"}, {"logit_bias", {{"99999999999", 1}}}}, "logit_bias", "'99999999999'"},
      {{{"prompt", "x"}, {"logit_bias", {{"5", 1}, {"05", 1}}}}, "logit_bias", "token 5 twice"},
      {{{"prompt", "x"}, {"logit_bias", {1, 2}}}, "logit_bias", "[1,2]"},
      // vLLM refuses an empty list (it would leave no token to draw).
      {{{"prompt", "x"}, {"allowed_token_ids", json::array()}}, "allowed_token_ids", "[]"},
      {{{"prompt", "x"}, {"allowed_token_ids", 5}}, "allowed_token_ids", "5"},
      {{{"prompt", "x"}, {"allowed_token_ids", {3, -1}}}, "allowed_token_ids", "-1"},
      {{{"prompt", "x"}, {"allowed_token_ids", {3, "4"}}}, "allowed_token_ids", "\"4\""},
      // vLLM fails on a word with nothing but whitespace (no token to ban).
      {{{"prompt", "x"}, {"bad_words", {"ok", " \t"}}}, "bad_words", "\" \\t\""},
      {{{"prompt", "x"}, {"bad_words", "word"}}, "bad_words", "\"word\""},
      {{{"prompt", "x"}, {"bad_words", {1}}}, "bad_words", "1"},
      {{{"prompt", "x"}, {"bad_words", json(std::vector<std::string>(1025, "w"))}},
       "bad_words",
       "at most 1024"},
  };
  for (const auto& c : cases) {
    const std::string e = error_of(c.body);
    EXPECT_EQ(e.rfind(c.field + ":", 0), 0u) << e;
    EXPECT_NE(e.find(c.value), std::string::npos) << e;
  }
  // echo with logprobs scores the prompt (it was refused): prompt_logprobs = logprobs inside,
  // without the prompt_logprobs field in the answer.
  const auto echoed = completion({{"prompt", "x"}, {"echo", true}, {"logprobs", 2}});
  EXPECT_EQ(echoed.params.prompt_logprobs, 2);
  EXPECT_FALSE(echoed.prompt_logprobs);
  // prompt_logprobs (vLLM): asked, in [0, 20], not with stream.
  const auto scored = completion({{"prompt", "x"}, {"prompt_logprobs", 3}});
  EXPECT_EQ(scored.params.prompt_logprobs, 3);
  EXPECT_TRUE(scored.prompt_logprobs);
  EXPECT_EQ(completion({{"prompt", "x"}}).params.prompt_logprobs, -1);
  EXPECT_EQ(error_of({{"prompt", "x"}, {"prompt_logprobs", 21}}).rfind("prompt_logprobs:", 0), 0u);
  EXPECT_EQ(error_of({{"prompt", "x"}, {"prompt_logprobs", 1}, {"stream", true}})
                .rfind("prompt_logprobs:", 0),
            0u);
  // max_tokens 0 only with echo (the prompt alone): the engine runs one token.
  const auto echo_only = completion({{"prompt", "x"}, {"echo", true}, {"max_tokens", 0}});
  EXPECT_TRUE(echo_only.echo_only);
  EXPECT_EQ(*echo_only.max_tokens, 1);
  EXPECT_FALSE(completion({{"prompt", "x"}, {"echo", true}, {"max_tokens", 3}}).echo_only);
  EXPECT_EQ(error_of({{"prompt", "x"}, {"max_tokens", 0}}).rfind("max_tokens:", 0), 0u);
  EXPECT_EQ(error_of({{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})},
                      {"max_tokens", 0}},
                     true)
                .rfind("max_tokens:", 0),
            0u);
  // Output constraints that cannot be honoured are refused, never dropped (they were ignored).
  const json msgs = {{{"role", "user"}, {"content", "hi"}}};
  for (const json& choice :
       {json("required"), json({{"type", "function"}, {"function", {{"name", "f"}}}})}) {
    EXPECT_EQ(
        error_of({{"messages", msgs}, {"tool_choice", choice}}, true).rfind("tool_choice:", 0), 0u)
        << choice;
  }
  for (const json& choice : {json("auto"), json("none")}) {
    EXPECT_EQ(error_of({{"messages", msgs}, {"tool_choice", choice}}, true), "accepted") << choice;
  }
  EXPECT_EQ(error_of({{"messages", msgs}, {"continue_final_message", true}}, true)
                .rfind("continue_final_message:", 0),
            0u);
  EXPECT_EQ(
      error_of(
          {{"messages", msgs}, {"continue_final_message", true}, {"add_generation_prompt", false}},
          true),
      "accepted");
  // guided_choice and structured_outputs.choice are honoured; the other constraints refused.
  EXPECT_EQ(completion({{"prompt", "x"}, {"guided_choice", {"a", "bc"}}}).guided_choice,
            (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(
      completion({{"prompt", "x"}, {"structured_outputs", {{"choice", {"x"}}, {"json", nullptr}}}})
          .guided_choice,
      std::vector<std::string>{"x"});
  for (const json& bad : {json::array(), json({"a", ""}), json("a"), json({1})}) {
    EXPECT_EQ(error_of({{"prompt", "x"}, {"guided_choice", bad}}).rfind("guided_choice:", 0), 0u)
        << bad;
  }
  EXPECT_EQ(error_of({{"prompt", "x"}, {"structured_outputs", {{"regex", "a+"}}}})
                .rfind("structured_outputs: 'structured_outputs.regex'", 0),
            0u);
  EXPECT_EQ(
      error_of(
          {{"prompt", "x"}, {"guided_choice", {"a"}}, {"structured_outputs", {{"choice", {"b"}}}}})
          .rfind("structured_outputs:", 0),
      0u);
  for (const char* g : {"guided_json", "guided_regex", "guided_grammar"}) {
    EXPECT_EQ(error_of({{"prompt", "x"}, {g, json::object()}}).rfind(std::string(g) + ":", 0), 0u)
        << g;
  }
  EXPECT_NE(error_of({{"prompt", "x"}, {"stream_options", {{"include_usage", true}}}})
                .find("stream_options"),
            std::string::npos);
}

TEST(Protocol, ChatFields) {
  json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  auto r = parse_generation_request({{"messages", msgs},
                                     {"max_completion_tokens", 5},
                                     {"max_tokens", 9},
                                     {"logprobs", true},
                                     {"top_logprobs", 2}},
                                    true, 8);
  EXPECT_EQ(*r.max_tokens, 5);  // max_completion_tokens wins
  EXPECT_EQ(r.params.logprobs, 2);
  EXPECT_FALSE(r.add_special_tokens);
  EXPECT_NE(error_of({{"messages", json::array()}}, true).find("messages"), std::string::npos);
  EXPECT_NE(error_of({{"messages", {{{"content", "x"}}}}}, true).find("messages[0]"),
            std::string::npos);
  EXPECT_NE(error_of({{"messages", msgs}, {"top_logprobs", 2}}, true).find("top_logprobs"),
            std::string::npos);
}

TEST(Protocol, BodyMustBeAJsonObject) {
  EXPECT_THROW(parse_json_body("[1]"), ApiError);
  EXPECT_THROW(parse_json_body("{"), ApiError);
  EXPECT_NO_THROW(parse_json_body("{}"));
  const json e = json::parse(error_json(404, "no such model", "model"));
  EXPECT_EQ(e["error"]["message"], "no such model");
  EXPECT_EQ(e["error"]["param"], "model");
  EXPECT_EQ(e["error"]["type"], "not_found_error");
}

// vLLM's bad_words tokenization: the word without leading whitespace, plus " " + word when
// that gives a different first token and as many tokens. With bytes " w" is one token longer, so
// only the bare word counts.
TEST(Protocol, BadWordsTokenIds) {
  const ByteTokenizer tok;
  EXPECT_EQ(bad_words_token_ids(tok, {"  ab", "c"}),
            (std::vector<std::vector<int32_t>>{{'a', 'b'}, {'c'}}));
  EXPECT_TRUE(bad_words_token_ids(tok, {}).empty());
  EXPECT_THROW(bad_words_token_ids(tok, {"\n "}), ApiError);
}

}  // namespace
}  // namespace tessera::serving
