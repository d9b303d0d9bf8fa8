// adapter_config.json of a PEFT LoRA adapter (torch-free: the parse and the choice of targeted
// modules; lora_adapter.cpp and encoder_lora.cpp read the weights). Fuzzed by the `lora_config`
// target (tests/fuzz/lora_config_fuzz.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tessera::models {

// adapter_config.json as far as every model family reads it, validated: r, lora_alpha, use_rslora
// (-> scale), peft_type LORA, no DoRA / fan_in_fan_out / bias / rank_pattern / alpha_pattern /
// layer_replication, target_modules present; modules_to_save only where the family allows it.
// Every error is one tessera::Error naming the file and the field.
struct PeftLoraConfig {
  std::string where;  // "LoRA adapter 'DIR'", the prefix of every error
  std::string config_path, weights_path;
  int64_t r = 0;
  double lora_alpha = 0;
  bool use_rslora = false;
  double scale = 0;  // lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
  std::vector<std::string> modules_to_save;
  nlohmann::json json;
  // Reads DIR/adapter_config.json (DIR/adapter_model.safetensors must exist too).
  static PeftLoraConfig read(const std::string& dir, bool allow_modules_to_save);
  // The same checks over the file's text; `dir` names it in errors.
  static PeftLoraConfig parse(const std::string& text, const std::string& dir,
                              bool allow_modules_to_save);
};

// The linear modules of a model an adapter may target: `num_layers` numbered layers of the same
// modules (`path(layer, m)` is the module's full path, as PEFT sees it in the model) and modules
// outside the layers (`extra_paths`, e.g. BERT's pooler).
struct LoraModuleSpace {
  std::string what;   // "a llama decoder block", for errors
  std::string known;  // the module names errors list
  int64_t num_layers = 0;
  int num_modules = 0;
  std::function<std::string(int64_t layer, int module)> path;
  std::vector<std::string> extra_paths;
  bool all_linear = true;  // target_modules "all-linear" allowed (every module and extra path)
};

// Which modules `target_modules` and `layers_to_transform` select, as PEFT matches them: a string
// is a regular expression the whole module path must match (Python's re.fullmatch; PCRE2 here,
// with its match limit: a pattern that backtracks without end is an error, not a hang); a list
// selects the modules whose path equals an entry or ends with "." + entry (every entry must
// select one); layers_to_transform keeps the numbered layers it lists and drops the extra modules.
// At least one module must be selected.
struct LoraTargets {
  std::vector<std::vector<bool>> layers;  // [num_layers][num_modules]
  std::vector<bool> extra;                // per extra path
};
LoraTargets resolve_lora_targets(const PeftLoraConfig& config, const LoraModuleSpace& space);

// The module spaces Tessera's LoRA implements: a decoder block's seven linears (LoraModule order:
// model.layers.N.self_attn.q_proj ... model.layers.N.mlp.down_proj) and a BERT layer's six
// (EncoderLoraModule order: [prefix]encoder.layer.N.attention.self.query ...) with the pooler's
// dense as the one extra module; `prefix` is "bert." for BertFor* models.
inline constexpr int kNumDecoderLoraModules = 7;
inline constexpr int kNumBertLoraModules = 6;
const char* decoder_lora_module_name(int m);  // "q_proj", ...
const char* bert_lora_module_path(int m);     // "attention.self.query", ...
LoraModuleSpace decoder_lora_space(const std::string& model_type, int64_t num_layers);
LoraModuleSpace bert_lora_space(const std::string& model_type, int64_t num_layers,
                                const std::string& prefix);

}  // namespace tessera::models
