#include "runtime/models/encoder_lora.h"

#include <map>
#include <set>
#include <sstream>

#include "common/error.h"
#include "runtime/models/lora_adapter.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// [out_features, in_features] of a module.
std::pair<int64_t, int64_t> module_shape(const EncoderConfig& c, int m) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  switch (static_cast<EncoderLoraModule>(m)) {
    case EncoderLoraModule::kIntermediate:
      return {inter, h};
    case EncoderLoraModule::kOutput:
      return {h, inter};
    default:
      return {h, h};
  }
}

}  // namespace

const char* encoder_lora_module_path(EncoderLoraModule m) {
  return bert_lora_module_path(static_cast<int>(m));
}

EncoderLoraAdapter EncoderLoraAdapter::load(const std::string& name, const std::string& dir,
                                            const EncoderConfig& config) {
  const PeftLoraConfig pc = PeftLoraConfig::read(dir, /*allow_modules_to_save=*/true);
  const std::string& where = pc.where;
  const std::string& cfg_path = pc.config_path;
  TESSERA_CHECK(config.family == EncoderFamily::kBert, where,
                ": LoRA adapters are implemented for BERT encoders, the model is model_type=",
                config.model_type);
  EncoderLoraAdapter a;
  a.name = name;
  a.dir = dir;
  a.r = pc.r;
  a.scale = pc.scale;

  const auto file = SafetensorsFile::open(pc.weights_path);
  std::set<std::string> unused;
  std::map<std::string, std::string> canonical;  // PEFT name (adapter name stripped) -> stored
  std::string prefix;  // "bert." for BertFor* models (PEFT paths follow the model's modules)
  for (const auto& n : file->names()) {
    unused.insert(n);
    std::string c = peft_canonical_name(n);
    const std::string saved = ".modules_to_save.default.";
    if (const auto p = c.find(saved); p != std::string::npos) {
      c = c.substr(0, p) + "." + c.substr(p + saved.size());
    }
    canonical[c] = n;
    if (c.rfind("base_model.model.bert.", 0) == 0) prefix = "bert.";
  }

  // Which modules the adapter targets, as PEFT matches module paths.
  const int64_t nl = config.num_hidden_layers;
  const LoraModuleSpace space = bert_lora_space(config.model_type, nl, prefix);
  const std::string& pooler_path = space.extra_paths[0];
  const LoraTargets targets = resolve_lora_targets(pc, space);
  const auto& targeted = targets.layers;
  const bool pooler = targets.extra[0];

  auto read = [&](const std::string& key, std::vector<int64_t> want, const std::string& why) {
    const auto it = canonical.find(key);
    TESSERA_CHECK(it != canonical.end(), where, ": tensor '", key, "' is missing (", why, ")");
    const auto& e = file->get(it->second);
    unused.erase(it->second);
    std::ostringstream got, exp;
    got << torch::IntArrayRef(e.shape);
    exp << torch::IntArrayRef(want);
    TESSERA_CHECK(e.shape == want, where, ": tensor '", it->second, "' has shape ", got.str(),
                  ", expected ", exp.str(), " (r=", a.r, " in adapter_config.json; ", why, ")");
    return peft_tensor_to_float(e, where);
  };
  auto read_pair = [&](const std::string& module, int64_t out, int64_t in) {
    const std::string base = "base_model.model." + module;
    const std::string why = "target_modules names " + module + ", [" + std::to_string(out) + ", " +
                            std::to_string(in) + "]";
    Pair p;
    p.a = read(base + ".lora_A.weight", {a.r, in}, why);
    p.b = read(base + ".lora_B.weight", {out, a.r}, why);
    return p;
  };
  a.layers.resize(nl);
  for (int64_t l = 0; l < nl; ++l) {
    for (int m = 0; m < kNumEncoderLoraModules; ++m) {
      if (!targeted[l][m]) continue;
      const auto [out, in] = module_shape(config, m);
      a.layers[l][m] = read_pair(space.path(l, m), out, in);
    }
  }
  const int64_t h = config.hidden_size;
  if (pooler) a.pooler = read_pair(pooler_path, h, h);

  // modules_to_save, matched as PEFT does (the module's path ends with the entry).
  for (const auto& e : pc.modules_to_save) {
    if (config.has_classifier && ends_with("classifier", e)) {
      const std::string why = "modules_to_save names classifier";
      a.classifier_w = read("base_model.model.classifier.weight", {config.num_labels, h}, why);
      a.classifier_b = read("base_model.model.classifier.bias", {config.num_labels}, why);
    } else if (ends_with(prefix + "pooler", e) || ends_with(pooler_path, e)) {
      TESSERA_CHECK(!pooler, cfg_path, ": the pooler is both a LoRA target and in modules_to_save");
      const std::string why = "modules_to_save names the pooler";
      a.pooler_w = read("base_model.model." + pooler_path + ".weight", {h, h}, why);
      a.pooler_b = read("base_model.model." + pooler_path + ".bias", {h}, why);
    }
    // Other entries name modules BERT lacks (PEFT's SEQ_CLS default "score"): PEFT ignores them.
    // An entry naming a module Tessera does not replace leaves its tensors unused: refused below.
  }
  TESSERA_CHECK(unused.empty(), where, ": tensor '", unused.empty() ? "" : *unused.begin(),
                "' is not a LoRA weight of a targeted module nor a saved classifier / pooler (",
                unused.size(),
                " unexpected tensors; target_modules / layers_to_transform / modules_to_save "
                "disagree with the file?)");
  return a;
}

}  // namespace tessera::models
