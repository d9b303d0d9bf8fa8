#include "runtime/models/lora_config.h"

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "runtime/tokenizers/regex.h"

namespace tessera::models {
namespace {

bool is_null_or_empty(const nlohmann::json& j, const char* key) {
  if (!j.contains(key)) return true;
  const auto& v = j[key];
  return v.is_null() || (v.is_object() && v.empty()) || (v.is_array() && v.empty());
}

// A boolean option: absent or null is false; anything but a boolean is an error naming it.
bool flag(const nlohmann::json& j, const char* key, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return false;
  TESSERA_CHECK(j[key].is_boolean(), path, ": ", key, " must be true or false, got ",
                j[key].dump());
  return j[key].get<bool>();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

PeftLoraConfig PeftLoraConfig::read(const std::string& dir, bool allow_modules_to_save) {
  namespace fs = std::filesystem;
  const std::string where = "LoRA adapter '" + dir + "'";
  TESSERA_CHECK(fs::is_directory(dir), where, ": not a folder");
  const std::string cfg_path = dir + "/adapter_config.json";
  TESSERA_CHECK(fs::exists(cfg_path), where, ": missing adapter_config.json");
  TESSERA_CHECK(fs::exists(dir + "/adapter_model.safetensors"), where,
                ": missing adapter_model.safetensors (adapter_model.bin is not read)");
  std::ifstream in(cfg_path, std::ios::binary);
  TESSERA_CHECK(in.good(), cfg_path, ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), dir, allow_modules_to_save);
}

PeftLoraConfig PeftLoraConfig::parse(const std::string& text, const std::string& dir,
                                     bool allow_modules_to_save) {
  PeftLoraConfig p;
  p.where = "LoRA adapter '" + dir + "'";
  p.config_path = dir + "/adapter_config.json";
  p.weights_path = dir + "/adapter_model.safetensors";
  const std::string& cfg_path = p.config_path;
  nlohmann::json& j = p.json;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL(cfg_path, ": not JSON (", e.what(), ")");
  }
  TESSERA_CHECK(j.is_object(), cfg_path, ": expected a JSON object");
  std::string peft_type = "LORA";
  if (j.contains("peft_type") && !j["peft_type"].is_null()) {
    TESSERA_CHECK(j["peft_type"].is_string(), cfg_path, ": peft_type must be a string, got ",
                  j["peft_type"].dump());
    peft_type = j["peft_type"].get<std::string>();
  }
  TESSERA_CHECK(peft_type == "LORA", cfg_path, ": peft_type '", peft_type,
                "' is not supported (LORA only)");
  TESSERA_CHECK(j.contains("r") && j["r"].is_number_integer() && j["r"].get<int64_t>() > 0,
                cfg_path, ": r must be a positive integer, got ",
                j.contains("r") ? j["r"].dump() : "nothing");
  p.r = j["r"].get<int64_t>();
  TESSERA_CHECK(j.contains("lora_alpha") && j["lora_alpha"].is_number(), cfg_path,
                ": lora_alpha must be a number, got ",
                j.contains("lora_alpha") ? j["lora_alpha"].dump() : "nothing");
  p.lora_alpha = j["lora_alpha"].get<double>();
  p.use_rslora = flag(j, "use_rslora", cfg_path);
  p.scale = p.use_rslora ? p.lora_alpha / std::sqrt(static_cast<double>(p.r))
                         : p.lora_alpha / static_cast<double>(p.r);
  TESSERA_CHECK(!flag(j, "use_dora", cfg_path), cfg_path, ": use_dora=true is not supported");
  TESSERA_CHECK(!flag(j, "fan_in_fan_out", cfg_path), cfg_path,
                ": fan_in_fan_out=true is not supported (the targeted linears are nn.Linear)");
  const std::string bias =
      j.contains("bias") && j["bias"].is_string() ? j["bias"].get<std::string>() : "none";
  TESSERA_CHECK(bias == "none", cfg_path, ": bias='", bias, "' is not supported (only 'none')");
  for (const char* key : {"rank_pattern", "alpha_pattern", "layer_replication"}) {
    TESSERA_CHECK(is_null_or_empty(j, key), cfg_path, ": ", key, "=", j[key].dump(),
                  " is not supported");
  }
  if (!is_null_or_empty(j, "modules_to_save")) {
    TESSERA_CHECK(allow_modules_to_save, cfg_path,
                  ": modules_to_save=", j["modules_to_save"].dump(), " is not supported");
    const auto& ms = j["modules_to_save"];
    TESSERA_CHECK(ms.is_array(), cfg_path, ": modules_to_save must be a list of names, got ",
                  ms.dump());
    for (const auto& e : ms) {
      TESSERA_CHECK(e.is_string(), cfg_path, ": modules_to_save entry ", e.dump(),
                    " is not a string");
      p.modules_to_save.push_back(e.get<std::string>());
    }
  }
  TESSERA_CHECK(j.contains("target_modules") && !j["target_modules"].is_null(), cfg_path,
                ": target_modules is missing");
  return p;
}

LoraTargets resolve_lora_targets(const PeftLoraConfig& pc, const LoraModuleSpace& space) {
  const std::string& cfg_path = pc.config_path;
  const nlohmann::json& j = pc.json;
  const int64_t nl = space.num_layers;
  const int nm = space.num_modules;
  LoraTargets t;
  t.layers.assign(static_cast<size_t>(nl), std::vector<bool>(static_cast<size_t>(nm), false));
  t.extra.assign(space.extra_paths.size(), false);
  bool any = false;
  // Every module path, numbered layers first, then the extra ones: f(path) says whether it is
  // selected.
  auto select = [&](auto&& f) {
    for (int64_t l = 0; l < nl; ++l) {
      for (int m = 0; m < nm; ++m) {
        if (f(space.path(l, m))) {
          t.layers[l][m] = true;
          any = true;
        }
      }
    }
    for (size_t e = 0; e < space.extra_paths.size(); ++e) {
      if (f(space.extra_paths[e])) {
        t.extra[e] = true;
        any = true;
      }
    }
  };
  const auto& tm = j.at("target_modules");
  if (tm.is_string() && tm.get<std::string>() == "all-linear") {
    TESSERA_CHECK(space.all_linear, cfg_path, ": target_modules='all-linear' is not supported for ",
                  space.what, " (list the modules: ", space.known, ")");
    select([](const std::string&) { return true; });
  } else if (tm.is_string()) {
    const std::string text = tm.get<std::string>();
    // The pattern alone first, so that a pattern such as "a)|(b" is refused as Python refuses it
    // rather than completed by the anchors around it.
    try {
      tokenizers::Regex alone(text);
      tokenizers::Regex whole("\\A(?:" + text + ")\\z");
      std::vector<tokenizers::Match> found;
      select([&](const std::string& path) {
        found.clear();
        whole.find_all(path, found);
        return !found.empty();
      });
    } catch (const Error& e) {
      TESSERA_FAIL(cfg_path, ": target_modules: ", e.message());
    }
    TESSERA_CHECK(any, cfg_path, ": target_modules regex '", text, "' matches none of ",
                  space.known);
  } else {
    TESSERA_CHECK(tm.is_array() && !tm.empty(), cfg_path,
                  ": target_modules must be a list of module names or a regex, got ", tm.dump());
    for (const auto& e : tm) {
      TESSERA_CHECK(e.is_string(), cfg_path, ": target_modules entry ", e.dump(),
                    " is not a string");
      const std::string s = e.get<std::string>();
      bool found = false;
      select([&](const std::string& path) {
        const bool hit = path == s || ends_with(path, "." + s);
        found = found || hit;
        return hit;
      });
      TESSERA_CHECK(found, cfg_path, ": target_modules entry '", s, "' is not a linear layer of ",
                    space.what, " (", space.known, ")");
    }
  }
  if (!is_null_or_empty(j, "layers_to_transform")) {
    std::set<int64_t> keep;
    const auto& lt = j["layers_to_transform"];
    for (const auto& e : lt.is_array() ? lt : nlohmann::json::array({lt})) {
      TESSERA_CHECK(e.is_number_integer() && e.get<int64_t>() >= 0 && e.get<int64_t>() < nl,
                    cfg_path, ": layers_to_transform entry ", e.dump(), " is not a layer in [0, ",
                    nl, ")");
      keep.insert(e.get<int64_t>());
    }
    any = false;
    for (int64_t l = 0; l < nl; ++l) {
      for (int m = 0; m < nm; ++m) {
        if (!keep.count(l)) t.layers[l][m] = false;
        any = any || t.layers[l][m];
      }
    }
    // PEFT: a module outside the numbered layers is not transformed.
    t.extra.assign(space.extra_paths.size(), false);
    TESSERA_CHECK(any, cfg_path, ": target_modules selects no module in the layers_to_transform ",
                  lt.dump());
  }
  return t;
}

namespace {
constexpr std::array<const char*, kNumDecoderLoraModules> kDecoderNames = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
constexpr std::array<const char*, kNumBertLoraModules> kBertPaths = {
    "attention.self.query",   "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense"};
}  // namespace

const char* decoder_lora_module_name(int m) { return kDecoderNames.at(static_cast<size_t>(m)); }
const char* bert_lora_module_path(int m) { return kBertPaths.at(static_cast<size_t>(m)); }

LoraModuleSpace decoder_lora_space(const std::string& model_type, int64_t num_layers) {
  LoraModuleSpace s;
  s.what = "a " + model_type + " decoder block";
  for (const char* n : kDecoderNames) s.known += std::string(s.known.empty() ? "" : ", ") + n;
  s.num_layers = num_layers;
  s.num_modules = kNumDecoderLoraModules;
  s.path = [](int64_t layer, int m) {
    const bool attn = m <= 3;  // q, k, v, o
    return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") +
           kDecoderNames.at(static_cast<size_t>(m));
  };
  return s;
}

LoraModuleSpace bert_lora_space(const std::string& model_type, int64_t num_layers,
                                const std::string& prefix) {
  LoraModuleSpace s;
  s.what = "a " + model_type + " encoder";
  s.known =
      "query, key, value, attention.output.dense, intermediate.dense, output.dense, "
      "pooler.dense";
  s.num_layers = num_layers;
  s.num_modules = kNumBertLoraModules;
  s.path = [prefix](int64_t layer, int m) {
    return prefix + "encoder.layer." + std::to_string(layer) + "." +
           kBertPaths.at(static_cast<size_t>(m));
  };
  s.extra_paths = {prefix + "pooler.dense"};
  s.all_linear = false;
  return s;
}

}  // namespace tessera::models
