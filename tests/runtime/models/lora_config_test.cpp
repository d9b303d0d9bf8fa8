// adapter_config.json (runtime/models/lora_config.h): the fields' checks and which modules
// target_modules / layers_to_transform select, as PEFT's check_target_module_exists selects them
// (a string: re.fullmatch of the module path; a list: the path equals an entry or ends with
// "." + entry). The PEFT-made adapters of lora_test / encoder_lora_test check the same end to end.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>

#include "common/error.h"
#include "runtime/models/lora_config.h"

namespace tessera::models {
namespace {

PeftLoraConfig parse(const std::string& text, bool allow_modules_to_save = true) {
  return PeftLoraConfig::parse(text, "/adapters/a", allow_modules_to_save);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// The selected (layer, module) pairs as "layer:module" words, then the extra modules' paths.
std::string selected(const std::string& text, const LoraModuleSpace& space) {
  const auto t = resolve_lora_targets(parse(text), space);
  std::string s;
  for (int64_t l = 0; l < space.num_layers; ++l) {
    for (int m = 0; m < space.num_modules; ++m) {
      if (t.layers[l][m]) s += (s.empty() ? "" : " ") + std::to_string(l) + ":" + std::to_string(m);
    }
  }
  for (size_t e = 0; e < t.extra.size(); ++e) {
    if (t.extra[e]) s += (s.empty() ? "" : " ") + space.extra_paths[e];
  }
  return s;
}

const LoraModuleSpace kDecoder = decoder_lora_space("llama", 3);
const LoraModuleSpace kBert = bert_lora_space("bert", 2, "bert.");

TEST(LoraConfig, ScaleFromRAlphaAndRsLora) {
  auto p = parse(R"({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})");
  EXPECT_EQ(p.r, 8);
  EXPECT_DOUBLE_EQ(p.scale, 2.0);
  EXPECT_FALSE(p.use_rslora);
  p = parse(R"({"r": 16, "lora_alpha": 8, "use_rslora": true, "target_modules": ["q_proj"]})");
  EXPECT_DOUBLE_EQ(p.scale, 2.0);
  // PEFT writes null for options left at their default.
  p = parse(R"({"r": 4, "lora_alpha": 4, "use_rslora": null, "use_dora": null,
                "fan_in_fan_out": null, "peft_type": "LORA", "target_modules": "all-linear"})");
  EXPECT_DOUBLE_EQ(p.scale, 1.0);
}

TEST(LoraConfig, MalformedFieldsAreErrorsNamingThem) {
  const std::string tm = R"("target_modules": ["q_proj"])";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{", "/adapters/a/adapter_config.json: not JSON"},
      {"[1]", "expected a JSON object"},
      {R"({"r": 0, "lora_alpha": 1, )" + tm + "}", "r must be a positive integer, got 0"},
      {R"({"r": 2.5, "lora_alpha": 1, )" + tm + "}", "r must be a positive integer, got 2.5"},
      {R"({"r": 2, )" + tm + "}", "lora_alpha must be a number, got nothing"},
      {R"({"r": 2, "lora_alpha": 1e999, )" + tm + "}", "number overflow parsing '1e999'"},
      // Before: nlohmann's type_error ("type must be boolean, but is string"), naming no field.
      {R"({"r": 2, "lora_alpha": 1, "use_rslora": "yes", )" + tm + "}",
       "use_rslora must be true or false, got \"yes\""},
      {R"({"r": 2, "lora_alpha": 1, "use_dora": 1, )" + tm + "}",
       "use_dora must be true or false, got 1"},
      {R"({"r": 2, "lora_alpha": 1, "use_dora": true, )" + tm + "}",
       "use_dora=true is not supported"},
      {R"({"r": 2, "lora_alpha": 1, "fan_in_fan_out": [], )" + tm + "}",
       "fan_in_fan_out must be true or false, got []"},
      {R"({"r": 2, "lora_alpha": 1, "peft_type": 3, )" + tm + "}",
       "peft_type must be a string, got 3"},
      {R"({"r": 2, "lora_alpha": 1, "peft_type": "IA3", )" + tm + "}",
       "peft_type 'IA3' is not supported"},
      {R"({"r": 2, "lora_alpha": 1, "bias": "all", )" + tm + "}", "bias='all' is not supported"},
      {R"({"r": 2, "lora_alpha": 1, "rank_pattern": {"q": 4}, )" + tm + "}",
       "rank_pattern={\"q\":4} is not supported"},
      {R"({"r": 2, "lora_alpha": 1})", "target_modules is missing"},
      {R"({"r": 2, "lora_alpha": 1, "modules_to_save": "classifier", )" + tm + "}",
       "modules_to_save must be a list of names, got \"classifier\""},
  };
  for (const auto& [text, want] : cases) {
    const std::string err = error_of([&] { parse(text); });
    EXPECT_NE(err.find(want), std::string::npos) << text << "\n -> " << err;
  }
  EXPECT_NE(error_of([&] {
              parse(R"({"r": 2, "lora_alpha": 1, "modules_to_save": ["x"], )" + tm + "}", false);
            }).find("modules_to_save=[\"x\"] is not supported"),
            std::string::npos);
}

TEST(LoraConfig, ListEntriesMatchAsPeftDoes) {
  // A module name: every layer's. A longer path: only the modules whose path ends with it.
  EXPECT_EQ(
      selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ["q_proj", "down_proj"]})", kDecoder),
      "0:0 0:6 1:0 1:6 2:0 2:6");
  // One layer's module by its full path (before, every layer's q_proj: the file's tensors for
  // layers 0 and 2 were then missing and the adapter did not load).
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1,
                         "target_modules": ["model.layers.1.self_attn.q_proj", "mlp.gate_proj"]})",
                     kDecoder),
            "0:4 1:0 1:4 2:4");
  for (const char* bad : {"foo.q_proj", "self_attn.gate_proj", "proj", "lm_head", ""}) {
    const std::string err = error_of([&] {
      selected(std::string(R"({"r": 1, "lora_alpha": 1, "target_modules": [")") + bad + "\"]}",
               kDecoder);
    });
    EXPECT_NE(err.find(std::string("target_modules entry '") + bad +
                       "' is not a linear layer of a llama decoder block (q_proj, k_proj"),
              std::string::npos)
        << bad << " -> " << err;
  }
  EXPECT_NE(error_of([&] {
              selected(R"({"r": 1, "lora_alpha": 1, "target_modules": []})", kDecoder);
            }).find("target_modules must be a list of module names or a regex, got []"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ["q_proj", 3]})", kDecoder);
            }).find("target_modules entry 3 is not a string"),
            std::string::npos);
  // BERT: the pooler is an extra module, under the "bert." prefix of BertFor* models.
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1,
                         "target_modules": ["query", "pooler.dense", "1.output.dense"]})",
                     kBert),
            "0:0 1:0 1:5 bert.pooler.dense");
}

TEST(LoraConfig, RegexMustMatchTheWholePath) {
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ".*\\.(q|v)_proj"})", kDecoder),
            "0:0 0:2 1:0 1:2 2:0 2:2");
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1,
                         "target_modules": "model\\.layers\\.2\\..*"})",
                     kDecoder),
            "2:0 2:1 2:2 2:3 2:4 2:5 2:6");
  // re.fullmatch: a pattern that matches only part of each path selects nothing.
  for (const char* part : {"q_proj", "layers", "model\\\\.layers\\\\.1"}) {
    const std::string err = error_of([&] {
      selected(std::string(R"({"r": 1, "lora_alpha": 1, "target_modules": ")") + part + "\"}",
               kDecoder);
    });
    EXPECT_NE(err.find("' matches none of q_proj, k_proj"), std::string::npos) << part << err;
  }
  // The pattern alone must be valid: the anchors around it do not complete it.
  const std::string err = error_of(
      [&] { selected(R"({"r": 1, "lora_alpha": 1, "target_modules": "q_proj)|(.*"})", kDecoder); });
  EXPECT_NE(err.find("adapter_config.json: target_modules: regex pattern 'q_proj)|(.*' is invalid"),
            std::string::npos)
      << err;
  // A pattern that backtracks without end: PCRE2's match limit makes it an error (or no match),
  // in bounded time, where Python's re would not return.
  const auto t0 = std::chrono::steady_clock::now();
  (void)error_of(
      [&] { selected(R"({"r": 1, "lora_alpha": 1, "target_modules": "(.*.*.*)*Z"})", kDecoder); });
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_EQ(
      selected(R"({"r": 1, "lora_alpha": 1, "target_modules": "all-linear"})", kDecoder).size(),
      std::string("0:0 ").size() * 21 - 1);
  EXPECT_NE(error_of([&] {
              selected(R"({"r": 1, "lora_alpha": 1, "target_modules": "all-linear"})", kBert);
            }).find("target_modules='all-linear' is not supported for a bert encoder"),
            std::string::npos);
}

TEST(LoraConfig, LayersToTransformKeepsItsLayersAndDropsExtraModules) {
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ["v_proj"],
                         "layers_to_transform": [0, 2]})",
                     kDecoder),
            "0:2 2:2");
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ["v_proj"],
                         "layers_to_transform": 1})",
                     kDecoder),
            "1:2");
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ["query", "pooler.dense"],
                         "layers_to_transform": [1]})",
                     kBert),
            "1:0");
  // null and [] keep every layer.
  EXPECT_EQ(selected(R"({"r": 1, "lora_alpha": 1, "target_modules": ["v_proj"],
                         "layers_to_transform": []})",
                     kDecoder),
            "0:2 1:2 2:2");
  for (const char* bad : {"3", "-1", "[0, 1.5]", "\"0\""}) {
    const std::string err = error_of([&] {
      selected(std::string(R"({"r": 1, "lora_alpha": 1, "target_modules": ["v_proj"],
                               "layers_to_transform": )") +
                   bad + "}",
               kDecoder);
    });
    EXPECT_NE(err.find("is not a layer in [0, 3)"), std::string::npos) << bad << " -> " << err;
  }
  const std::string err = error_of([&] {
    selected(R"({"r": 1, "lora_alpha": 1, "target_modules": "model\\.layers\\.0\\..*",
                 "layers_to_transform": [1, 2]})",
             kDecoder);
  });
  EXPECT_NE(err.find("target_modules selects no module in the layers_to_transform [1,2]"),
            std::string::npos)
      << err;
}

}  // namespace
}  // namespace tessera::models
