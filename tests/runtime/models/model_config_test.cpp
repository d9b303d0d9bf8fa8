#include "runtime/models/model_config.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "runtime/models/tiny_model.h"

namespace tessera::models {
namespace {

std::string base_config(const std::string& extra = "") {
  return R"({"model_type":"llama","vocab_size":100,"hidden_size":64,"intermediate_size":128,)"
         R"("num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":2)" +
         extra + "}";
}

void expect_error(const std::string& text, const std::vector<std::string>& mentions) {
  try {
    ModelConfig::from_json_text(text, "config.json");
    FAIL() << "expected an error for " << text;
  } catch (const Error& e) {
    for (const auto& m : mentions) EXPECT_NE(e.message().find(m), std::string::npos) << e.message();
  }
}

TEST(ModelConfig, LlamaDefaults) {
  auto c = ModelConfig::from_json_text(base_config(), "config.json");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.hidden_act, Activation::kSilu);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kDefault);
  EXPECT_EQ(c.layer_windows, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
}

TEST(ModelConfig, SlidingWindowsPerFamily) {
  auto mistral = ModelConfig::from_json_text(
      R"({"model_type":"mistral","vocab_size":100,"hidden_size":64,"intermediate_size":128,)"
      R"("num_hidden_layers":3,"num_attention_heads":8,"sliding_window":32})",
      "c");
  EXPECT_EQ(mistral.layer_windows, (std::vector<int64_t>{32, 32, 32}));
  auto qwen = ModelConfig::from_json_text(
      R"({"model_type":"qwen2","vocab_size":100,"hidden_size":64,"intermediate_size":128,)"
      R"("num_hidden_layers":4,"num_attention_heads":8,"sliding_window":16,)"
      R"("use_sliding_window":true,"max_window_layers":2})",
      "c");
  EXPECT_EQ(qwen.layer_windows, (std::vector<int64_t>{0, 0, 16, 16}));
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.o_bias);
  auto typed = ModelConfig::from_json_text(
      base_config(R"(,"sliding_window":8,"layer_types":["sliding_attention","full_attention",)"
                  R"("sliding_attention","full_attention"])"),
      "c");
  EXPECT_EQ(typed.layer_windows, (std::vector<int64_t>{8, 0, 8, 0}));
}

TEST(ModelConfig, BadFieldsAreNamed) {
  expect_error("{", {"not valid JSON"});
  expect_error(R"({"model_type":"gpt2"})", {"model_type='gpt2'"});
  expect_error(R"({"model_type":"llama","vocab_size":100})", {"'hidden_size' is missing"});
  expect_error(base_config(R"(,"max_position_embeddings":"long")"),
               {"max_position_embeddings", "\"long\""});
  expect_error(
      R"({"vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,)"
      R"("num_attention_heads":8,"num_key_value_heads":3})",
      {"num_attention_heads=8", "num_key_value_heads=3"});
  expect_error(base_config(R"(,"sliding_window":0)"), {"sliding_window", "0"});
  expect_error(base_config(R"(,"rope_theta":0)"), {"rope_theta must be positive, got 0"});
  expect_error(base_config(R"(,"layer_types":["full_attention"])"), {"layer_types", "4"});
  expect_error(
      base_config(R"(,"layer_types":["full_attention","x","full_attention","full_attention"])"),
      {"layer_types[1]='x'"});
  expect_error(base_config(R"(,"rope_scaling":{"type":"longrope","factor":2.0})"),
               {"rope_scaling", "longrope"});
  expect_error(base_config(R"(,"rope_scaling":{"rope_type":"linear"})"), {"factor"});
  expect_error(base_config(R"(,"rope_scaling":{"rope_type":"linear","factor":0.5})"),
               {"factor must be >= 1, got 0.5"});
  expect_error(base_config(R"(,"hidden_act":"relu")"), {"hidden_act='relu'"});
  expect_error(base_config(R"(,"partial_rotary_factor":0.5)"), {"partial_rotary_factor=0.5"});
  expect_error(base_config(R"(,"architectures":["GPT2LMHeadModel"])"),
               {"architectures[0]='GPT2LMHeadModel'"});
  expect_error(R"({"model_type":"qwen2","mlp_bias":true,"vocab_size":100,"hidden_size":64,)"
               R"("intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":8})",
               {"mlp_bias=true", "qwen2"});
  expect_error(R"({"vocab_size":0,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,)"
               R"("num_attention_heads":8})",
               {"vocab_size must be positive, got 0"});
}

TEST(ModelConfig, WrongTypesAndRangesAreNamed) {
  // Used to escape as nlohmann type errors that name no field.
  expect_error(R"({"model_type":5})", {"'model_type'", "string", "5"});
  expect_error(base_config(R"(,"eos_token_id":["x"])"), {"'eos_token_id'", "[\"x\"]"});
  expect_error(base_config(R"(,"bos_token_id":"<s>")"), {"'bos_token_id'", "\"<s>\""});
  // Used to write layer_windows[-3] (heap corruption) before validating anything.
  expect_error(R"({"model_type":"qwen2","vocab_size":100,"hidden_size":64,"intermediate_size":128,)"
               R"("num_hidden_layers":4,"num_attention_heads":8,"sliding_window":16,)"
               R"("use_sliding_window":true,"max_window_layers":-3})",
               {"max_window_layers", "-3"});
  auto c = ModelConfig::from_json_text(base_config(R"(,"eos_token_id":[7,9],"bos_token_id":[])"),
                                       "config.json");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{7, 9}));
  EXPECT_EQ(c.bos_token_id, -1);
}

TEST(ModelConfig, FamilyFieldsThatChangeTheArithmetic) {
  auto llama = ModelConfig::from_json_text(
      base_config(R"(,"attention_bias":true,"mlp_bias":true,"hidden_act":"gelu_pytorch_tanh",)"
                  R"("tie_word_embeddings":true,"head_dim":16,"max_position_embeddings":100,)"
                  R"("rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,)"
                  R"("high_freq_factor":4.0,"original_max_position_embeddings":64})"),
      "c");
  EXPECT_TRUE(llama.qkv_bias && llama.o_bias && llama.mlp_bias);
  EXPECT_EQ(llama.hidden_act, Activation::kGeluTanh);
  EXPECT_TRUE(llama.tie_word_embeddings);
  EXPECT_EQ(llama.head_dim, 16);
  EXPECT_EQ(llama.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(llama.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(llama.derived_max_model_len(), 100);  // llama3 does not extend the context
  auto yarn = ModelConfig::from_json_text(
      base_config(
          R"(,"max_position_embeddings":100,)"
          R"("rope_scaling":{"type":"yarn","factor":4.0,"beta_fast":0,"attention_factor":1.5})"),
      "c");
  EXPECT_EQ(yarn.rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_DOUBLE_EQ(yarn.rope_scaling.beta_fast, 32.0);  // 0 means the default, as transformers
  EXPECT_DOUBLE_EQ(*yarn.rope_scaling.attention_factor, 1.5);
  EXPECT_EQ(yarn.derived_max_model_len(), 400);
  // Round trip of what the writer emits.
  const auto back = ModelConfig::from_json_text(llama.to_json_text(), "c");
  EXPECT_EQ(back.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(back.hidden_act, Activation::kGeluTanh);
  EXPECT_TRUE(back.mlp_bias && back.o_bias);
}

TEST(ModelConfig, TensorParallelDivisibility) {
  auto c = tiny_model_config();
  EXPECT_NO_THROW(c.check_tensor_parallel(1));
  EXPECT_NO_THROW(c.check_tensor_parallel(2));
  EXPECT_NO_THROW(c.check_tensor_parallel(4));
  try {
    c.check_tensor_parallel(3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "num_attention_heads=8 is not divisible by 3 tensor-parallel ranks");
  }
  // 8 ranks over 4 KV heads: each KV head's tokens split over 2 ranks (decode context parallel).
  EXPECT_NO_THROW(c.check_tensor_parallel(8));
  EXPECT_EQ(c.decode_context_parallel(8), 2);
  EXPECT_EQ(c.decode_context_parallel(4), 1);
  auto six = c;
  six.num_attention_heads = 12;
  six.intermediate_size = 240;
  try {
    six.check_tensor_parallel(6);  // 12 q heads divide, 4 kv heads neither divide nor are divided
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("num_key_value_heads=4 is not divisible by 6 tensor-parallel ranks"),
              std::string::npos)
        << e.message();
  }
}

TEST(ModelConfig, JsonRoundTrip) {
  const auto c = tiny_model_config();
  const auto back = ModelConfig::from_json_text(c.to_json_text(), "tiny");
  EXPECT_EQ(back.model_type, c.model_type);
  EXPECT_EQ(back.vocab_size, c.vocab_size);
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(back.head_dim, c.head_dim);
  EXPECT_EQ(back.layer_windows, c.layer_windows);
  EXPECT_EQ(back.qkv_bias, c.qkv_bias);
  EXPECT_EQ(back.o_bias, c.o_bias);
  EXPECT_EQ(back.eos_token_ids, c.eos_token_ids);
  // Has at least one full and one sliding layer (the tiny model must exercise both).
  EXPECT_NE(std::count(c.layer_windows.begin(), c.layer_windows.end(), 0), 0);
  EXPECT_NE(std::count(c.layer_windows.begin(), c.layer_windows.end(), 0),
            static_cast<long>(c.layer_windows.size()));
}

}  // namespace
}  // namespace tessera::models
