#include "runtime/models/encoder_lora.h"

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "common/error.h"
#include "runtime/models/lora_adapter.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {
namespace {

constexpr std::array<const char*, kNumEncoderLoraModules> kPaths = {
    "attention.self.query",   "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense"};
constexpr const char* kKnown =
    "query, key, value, attention.output.dense, intermediate.dense, output.dense, pooler.dense";

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

const char* encoder_lora_module_path(EncoderLoraModule m) { return kPaths[static_cast<int>(m)]; }

EncoderLoraAdapter EncoderLoraAdapter::load(const std::string& name, const std::string& dir,
                                            const EncoderConfig& config) {
  const PeftLoraConfig pc = PeftLoraConfig::read(dir, /*allow_modules_to_save=*/true);
  const std::string& where = pc.where;
  const std::string& cfg_path = pc.config_path;
  const nlohmann::json& j = pc.json;
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
  auto path = [&](int64_t l, int m) {
    return prefix + "encoder.layer." + std::to_string(l) + "." + kPaths[m];
  };
  const std::string pooler_path = prefix + "pooler.dense";
  std::vector<std::array<bool, kNumEncoderLoraModules>> targeted(nl);
  bool pooler = false;
  const auto& tm = j["target_modules"];
  if (tm.is_string()) {
    const std::string text = tm.get<std::string>();
    TESSERA_CHECK(text != "all-linear", cfg_path,
                  ": target_modules='all-linear' is not supported for encoders (list the "
                  "modules: ",
                  kKnown, ")");
    std::regex re;
    try {
      re = std::regex(text);
    } catch (const std::regex_error& e) {
      TESSERA_FAIL(cfg_path, ": target_modules regex '", text, "' is invalid (", e.what(), ")");
    }
    bool any = false;
    for (int64_t l = 0; l < nl; ++l) {
      for (int m = 0; m < kNumEncoderLoraModules; ++m) {
        targeted[l][m] = std::regex_match(path(l, m), re);
        any = any || targeted[l][m];
      }
    }
    pooler = std::regex_match(pooler_path, re);
    TESSERA_CHECK(any || pooler, cfg_path, ": target_modules regex '", text, "' matches none of ",
                  kKnown);
  } else {
    TESSERA_CHECK(tm.is_array() && !tm.empty(), cfg_path,
                  ": target_modules must be a list of module names or a regex, got ", tm.dump());
    for (const auto& e : tm) {
      TESSERA_CHECK(e.is_string(), cfg_path, ": target_modules entry ", e.dump(),
                    " is not a string");
      const std::string s = e.get<std::string>();
      auto match = [&](const std::string& p) { return p == s || ends_with(p, "." + s); };
      bool found = false;
      for (int64_t l = 0; l < nl; ++l) {
        for (int m = 0; m < kNumEncoderLoraModules; ++m) {
          if (match(path(l, m))) targeted[l][m] = found = true;
        }
      }
      if (match(pooler_path)) pooler = found = true;
      TESSERA_CHECK(found, cfg_path, ": target_modules entry '", s, "' is not a linear layer of a ",
                    config.model_type, " encoder (", kKnown, ")");
    }
  }
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const auto& lt = j["layers_to_transform"];
    std::set<int64_t> keep;
    for (const auto& e : lt.is_array() ? lt : nlohmann::json::array({lt})) {
      TESSERA_CHECK(e.is_number_integer() && e.get<int64_t>() >= 0 && e.get<int64_t>() < nl,
                    cfg_path, ": layers_to_transform entry ", e.dump(), " is not a layer in [0, ",
                    nl, ")");
      keep.insert(e.get<int64_t>());
    }
    if (!keep.empty()) {
      for (int64_t l = 0; l < nl; ++l) {
        if (!keep.count(l)) targeted[l].fill(false);
      }
      pooler = false;  // PEFT: a module outside the numbered layers is not transformed
    }
  }

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
      a.layers[l][m] = read_pair(path(l, m), out, in);
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
