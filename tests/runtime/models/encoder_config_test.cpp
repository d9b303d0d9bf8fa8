// EncoderConfig (BERT and ModernBERT config.json, both ModernBERT layouts, heads) and
// SentenceConfig (sentence-transformers' modules.json, pooling, prompts) against hand-written
// configs; unsupported or inconsistent fields fail with one line naming the field and value.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "runtime/models/encoder_config.h"
#include "runtime/models/sentence_config.h"

namespace tessera::models {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

json bert() {
  return {{"architectures", {"BertModel"}},
          {"model_type", "bert"},
          {"vocab_size", 30522},
          {"hidden_size", 384},
          {"num_hidden_layers", 6},
          {"num_attention_heads", 12},
          {"intermediate_size", 1536},
          {"hidden_act", "gelu"},
          {"layer_norm_eps", 1e-12},
          {"max_position_embeddings", 512},
          {"type_vocab_size", 2},
          {"pad_token_id", 0}};
}

json modernbert() {
  return {{"architectures", {"ModernBertForSequenceClassification"}},
          {"model_type", "modernbert"},
          {"vocab_size", 50368},
          {"hidden_size", 768},
          {"num_hidden_layers", 7},
          {"num_attention_heads", 12},
          {"intermediate_size", 1152},
          {"global_attn_every_n_layers", 3},
          {"local_attention", 128},
          {"global_rope_theta", 160000.0},
          {"local_rope_theta", 10000.0},
          {"id2label", {{"0", "neg"}, {"1", "pos"}}},
          {"classifier_pooling", "mean"}};
}

std::string error_of(const json& j) {
  try {
    EncoderConfig::from_json_text(j.dump(), "config.json");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(EncoderConfig, BertIsPostNormWithAbsolutePositions) {
  const auto c = EncoderConfig::from_json_text(bert().dump(), "config.json");
  EXPECT_EQ(c.family, EncoderFamily::kBert);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_TRUE(c.absolute_positions && !c.rotary && !c.pre_norm && !c.glu_mlp && !c.final_norm);
  EXPECT_TRUE(c.norm_bias && c.attention_bias && c.mlp_bias);
  EXPECT_EQ(c.layer_windows, std::vector<int64_t>(6, -1));
  EXPECT_FALSE(c.has_classifier);
  EXPECT_EQ(c.hidden_act, Activation::kGelu);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-12);
  auto j = bert();
  j["hidden_act"] = "gelu_new";
  j["architectures"] = {"BertForSequenceClassification"};
  j["problem_type"] = "multi_label_classification";
  const auto h = EncoderConfig::from_json_text(j.dump(), "config.json");
  EXPECT_EQ(h.hidden_act, Activation::kGeluTanh);
  EXPECT_TRUE(h.has_classifier);
  EXPECT_EQ(h.num_labels, 2);  // transformers' default
  EXPECT_EQ(h.labels, (std::vector<std::string>{"LABEL_0", "LABEL_1"}));
  EXPECT_EQ(h.problem_type, ProblemType::kMultiLabel);
}

TEST(EncoderConfig, ModernBertAlternatesGlobalAndLocalLayers) {
  const auto c = EncoderConfig::from_json_text(modernbert().dump(), "config.json");
  EXPECT_EQ(c.family, EncoderFamily::kModernBert);
  EXPECT_TRUE(c.rotary && c.pre_norm && c.glu_mlp && c.final_norm && !c.first_attn_norm);
  EXPECT_FALSE(c.norm_bias || c.attention_bias || c.mlp_bias || c.classifier_bias);
  // Layer i is global iff i % 3 == 0; local layers see |i - j| <= 128 / 2.
  EXPECT_EQ(c.layer_windows, (std::vector<int64_t>{-1, 64, 64, -1, 64, 64, -1}));
  EXPECT_EQ(c.layer_rope_theta,
            (std::vector<double>{160000, 10000, 10000, 160000, 10000, 10000, 160000}));
  EXPECT_EQ(c.labels, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(c.classifier_pooling, ClassifierPooling::kMean);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  // The newer layout: layer_types and rope_parameters.
  auto j = modernbert();
  j.erase("global_rope_theta");
  j.erase("local_rope_theta");
  j["num_hidden_layers"] = 4;
  j["global_attn_every_n_layers"] = 2;
  j["layer_types"] = {"full_attention", "sliding_attention", "full_attention", "sliding_attention"};
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 8e4}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 5e3}}}};
  j["local_attention"] = 10;
  const auto n = EncoderConfig::from_json_text(j.dump(), "config.json");
  EXPECT_EQ(n.layer_windows, (std::vector<int64_t>{-1, 5, -1, 5}));
  EXPECT_EQ(n.layer_rope_theta, (std::vector<double>{8e4, 5e3, 8e4, 5e3}));
}

TEST(EncoderConfig, RefusesWhatItCannotRunNamingTheField) {
  auto j = bert();
  j["model_type"] = "llama";
  EXPECT_NE(error_of(j).find("model_type='llama' is not an encoder Tessera runs (bert, "
                             "modernbert)"),
            std::string::npos);
  j = bert();
  j["position_embedding_type"] = "relative_key";
  EXPECT_NE(error_of(j).find("position_embedding_type='relative_key' is not supported"),
            std::string::npos);
  j = bert();
  j["hidden_act"] = "relu";
  EXPECT_NE(error_of(j).find("hidden_act='relu' is not supported"), std::string::npos);
  j = bert();
  j["architectures"] = {"BertForTokenClassification"};
  EXPECT_NE(error_of(j).find("architectures[0]='BertForTokenClassification' is not supported"),
            std::string::npos);
  j = bert();
  j["architectures"] = {"ModernBertForSequenceClassification"};
  EXPECT_NE(error_of(j).find("does not match model_type 'bert'"), std::string::npos);
  j = bert();
  j["hidden_size"] = 100;
  EXPECT_NE(error_of(j).find("hidden_size=100 must be a positive multiple of "
                             "num_attention_heads=12"),
            std::string::npos);
  j = modernbert();
  j["layer_types"] = std::vector<std::string>(7, "full_attention");
  EXPECT_NE(error_of(j).find("layer_types[1]=\"full_attention\" disagrees with "
                             "global_attn_every_n_layers=3"),
            std::string::npos);
  j = modernbert();
  j["classifier_pooling"] = "max";
  EXPECT_NE(error_of(j).find("classifier_pooling='max' is not supported"), std::string::npos);
  j = modernbert();
  j["problem_type"] = "ranking";
  EXPECT_NE(error_of(j).find("problem_type='ranking' is not supported"), std::string::npos);
  j = modernbert();
  j["tessera_attention"] = {{"type", "cluster"}, {"cluster_size", 0}};
  EXPECT_NE(error_of(j).find("cluster_size must be >= 1, got 0"), std::string::npos);
  // The tensor-parallel split.
  const auto c = EncoderConfig::from_json_text(bert().dump(), "config.json");
  EXPECT_NO_THROW(c.check_tensor_parallel(4));
  try {
    c.check_tensor_parallel(5);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("num_attention_heads=12 is not divisible by 5"), std::string::npos);
  }
}

class SentenceConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tessera_st_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "1_Pooling");
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const json& j) { std::ofstream(dir_ / name) << j.dump(); }
  json modules(bool normalize) {
    json m = {{{"idx", 0},
               {"name", "0"},
               {"path", ""},
               {"type", "sentence_transformers.models.Transformer"}},
              {{"idx", 1},
               {"name", "1"},
               {"path", "1_Pooling"},
               {"type", "sentence_transformers.models.Pooling"}}};
    if (normalize) {
      m.push_back({{"idx", 2},
                   {"name", "2"},
                   {"path", "2_Normalize"},
                   {"type", "sentence_transformers.models.Normalize"}});
    }
    return m;
  }
  std::string error_of() {
    try {
      SentenceConfig::from_folder(dir_.string(), 512);
    } catch (const Error& e) {
      return e.message();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(SentenceConfigTest, ReadsModulesPoolingAndPrompts) {
  write("modules.json", modules(true));
  write("1_Pooling/config.json", {{"word_embedding_dimension", 384},
                                  {"pooling_mode_cls_token", true},
                                  {"pooling_mode_mean_tokens", false},
                                  {"pooling_mode_lasttoken", true},
                                  {"include_prompt", false}});
  write("sentence_bert_config.json", {{"max_seq_length", 256}, {"do_lower_case", true}});
  write("config_sentence_transformers.json",
        {{"prompts", {{"query", "query: "}, {"doc", "passage: "}}},
         {"default_prompt_name", "query"}});
  const auto c = SentenceConfig::from_folder(dir_.string(), 512);
  EXPECT_TRUE(c.has_modules_json && c.normalize && c.do_lower_case);
  EXPECT_EQ(c.pooling.mode_string(), "cls+lasttoken");
  EXPECT_EQ(c.pooling.modes(), 2);
  EXPECT_FALSE(c.pooling.include_prompt);
  EXPECT_EQ(c.max_seq_length, 256);
  EXPECT_EQ(c.prompt(""), "query: ");
  EXPECT_EQ(c.prompt("doc"), "passage: ");
  try {
    (void)c.prompt("other");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("prompt name 'other' is not among the model's prompts (doc, query)"),
              std::string::npos);
  }
  // The compact form wins over the flags.
  write("1_Pooling/config.json", {{"pooling_mode", "MAX"}, {"pooling_mode_mean_tokens", true}});
  EXPECT_EQ(SentenceConfig::from_folder(dir_.string(), 512).pooling.mode_string(), "max");
}

TEST_F(SentenceConfigTest, PlainFoldersGetMeanPoolingAndTheTokenizerLimit) {
  write("tokenizer_config.json", {{"model_max_length", 128}});
  const auto c = SentenceConfig::from_folder(dir_.string(), 512);
  EXPECT_FALSE(c.has_modules_json || c.normalize);
  EXPECT_EQ(c.pooling.mode_string(), "mean");
  EXPECT_EQ(c.max_seq_length, 128);
  // A model_max_length sentinel larger than the model leaves the model's limit.
  write("tokenizer_config.json", {{"model_max_length", 1e30}});
  EXPECT_EQ(SentenceConfig::from_folder(dir_.string(), 512).max_seq_length, 512);
}

TEST_F(SentenceConfigTest, RefusesModulesAndPoolingItDoesNotKnow) {
  json m = modules(false);
  m.push_back({{"idx", 2},
               {"name", "2"},
               {"path", "2_Dense"},
               {"type", "sentence_transformers.models.Dense"}});
  write("modules.json", m);
  write("1_Pooling/config.json", {{"pooling_mode_mean_tokens", true}});
  EXPECT_NE(error_of().find("module type 'sentence_transformers.models.Dense' is not supported"),
            std::string::npos);
  write("modules.json", modules(false));
  write("1_Pooling/config.json", {{"pooling_mode", "attention"}});
  EXPECT_NE(error_of().find("pooling_mode='attention' is not supported"), std::string::npos);
  write("1_Pooling/config.json", {{"pooling_mode_mean_tokens", true}, {"pooling_mode_sum", true}});
  EXPECT_NE(error_of().find("'pooling_mode_sum' is not a pooling setting Tessera knows"),
            std::string::npos);
  write("1_Pooling/config.json", {{"pooling_mode_mean_tokens", false}});
  EXPECT_NE(error_of().find("no pooling mode is enabled"), std::string::npos);
}

}  // namespace
}  // namespace tessera::models
