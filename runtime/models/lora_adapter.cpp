#include "runtime/models/lora_adapter.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "common/error.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {
namespace {

constexpr std::array<const char*, kNumLoraModules> kNames = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

std::string known_modules() {
  std::string s;
  for (const char* n : kNames) s += std::string(s.empty() ? "" : ", ") + n;
  return s;
}

// [out_features, in_features] of a module of this config.
std::pair<int64_t, int64_t> module_shape(const ModelConfig& c, int m) {
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, inter = c.intermediate_size;
  switch (static_cast<LoraModule>(m)) {
    case LoraModule::kQ:
      return {q, h};
    case LoraModule::kK:
    case LoraModule::kV:
      return {kv, h};
    case LoraModule::kO:
      return {h, q};
    case LoraModule::kGate:
    case LoraModule::kUp:
      return {inter, h};
    case LoraModule::kDown:
      return {h, inter};
  }
  TESSERA_FAIL("bad LoRA module ", m);
}

std::string module_path(int64_t layer, int m) {
  const bool attn = m <= static_cast<int>(LoraModule::kO);
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + kNames[m];
}

}  // namespace

torch::Tensor peft_tensor_to_float(const TensorEntry& e, const std::string& where) {
  torch::ScalarType t;
  switch (e.dtype) {
    case DType::kF32:
      t = torch::kFloat;
      break;
    case DType::kF16:
      t = torch::kHalf;
      break;
    case DType::kBF16:
      t = torch::kBFloat16;
      break;
    case DType::kF64:
      t = torch::kDouble;
      break;
    default:
      TESSERA_FAIL(where, ": tensor '", e.name, "' has dtype ", dtype_name(e.dtype),
                   ", expected a floating type");
  }
  return torch::from_blob(const_cast<uint8_t*>(e.data), e.shape, torch::TensorOptions().dtype(t))
      .to(torch::kFloat, /*non_blocking=*/false, /*copy=*/true)
      .contiguous();
}

namespace {

bool is_null_or_empty(const nlohmann::json& j, const char* key) {
  if (!j.contains(key)) return true;
  const auto& v = j[key];
  return v.is_null() || (v.is_object() && v.empty()) || (v.is_array() && v.empty());
}

}  // namespace

const char* lora_module_name(LoraModule m) { return kNames[static_cast<int>(m)]; }

std::pair<std::string, std::string> parse_lora_arg(const std::string& arg) {
  const auto eq = arg.find('=');
  TESSERA_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < arg.size(),
                "--lora must be NAME=PATH, got '", arg, "'");
  return {arg.substr(0, eq), arg.substr(eq + 1)};
}

PeftLoraConfig PeftLoraConfig::read(const std::string& dir, bool allow_modules_to_save) {
  namespace fs = std::filesystem;
  PeftLoraConfig p;
  p.where = "LoRA adapter '" + dir + "'";
  p.config_path = dir + "/adapter_config.json";
  p.weights_path = dir + "/adapter_model.safetensors";
  const std::string& where = p.where;
  const std::string& cfg_path = p.config_path;
  TESSERA_CHECK(fs::is_directory(dir), where, ": not a folder");
  TESSERA_CHECK(fs::exists(cfg_path), where, ": missing adapter_config.json");
  TESSERA_CHECK(fs::exists(p.weights_path), where,
                ": missing adapter_model.safetensors (adapter_model.bin is not read)");
  nlohmann::json& j = p.json;
  {
    std::ifstream in(cfg_path);
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      TESSERA_FAIL(cfg_path, ": not JSON (", e.what(), ")");
    }
  }
  TESSERA_CHECK(j.is_object(), cfg_path, ": expected a JSON object");
  const std::string peft_type = j.value("peft_type", std::string("LORA"));
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
  p.use_rslora = j.value("use_rslora", false);
  p.scale = p.use_rslora ? p.lora_alpha / std::sqrt(static_cast<double>(p.r))
                         : p.lora_alpha / static_cast<double>(p.r);
  TESSERA_CHECK(!j.value("use_dora", false), cfg_path, ": use_dora=true is not supported");
  TESSERA_CHECK(!j.value("fan_in_fan_out", false), cfg_path,
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

std::string peft_canonical_name(const std::string& stored) {
  std::string c = stored;
  for (const char* part : {"lora_A", "lora_B"}) {
    const std::string with = std::string(".") + part + ".default.weight";
    const auto p = c.find(with);
    if (p != std::string::npos) c = c.substr(0, p) + "." + part + ".weight";
  }
  return c;
}

LoraAdapter LoraAdapter::load(const std::string& name, const std::string& dir,
                              const ModelConfig& config) {
  const PeftLoraConfig pc = PeftLoraConfig::read(dir, /*allow_modules_to_save=*/false);
  const std::string& where = pc.where;
  const std::string& cfg_path = pc.config_path;
  const std::string& st_path = pc.weights_path;
  const nlohmann::json& j = pc.json;
  LoraAdapter a;
  a.name = name;
  a.dir = dir;
  a.r = pc.r;
  a.lora_alpha = pc.lora_alpha;
  a.use_rslora = pc.use_rslora;
  a.scale = pc.scale;

  // Which (layer, module) pairs the adapter targets, as PEFT matches module names.
  const int64_t nl = config.num_hidden_layers;
  std::vector<std::array<bool, kNumLoraModules>> targeted(nl);
  const auto& tm = j["target_modules"];
  if (tm.is_string() && tm.get<std::string>() != "all-linear") {
    std::regex re;
    try {
      re = std::regex(tm.get<std::string>());
    } catch (const std::regex_error& e) {
      TESSERA_FAIL(cfg_path, ": target_modules regex '", tm.get<std::string>(), "' is invalid (",
                   e.what(), ")");
    }
    bool any = false;
    for (int64_t l = 0; l < nl; ++l) {
      for (int m = 0; m < kNumLoraModules; ++m) {
        targeted[l][m] = std::regex_match(module_path(l, m), re);
        any = any || targeted[l][m];
      }
    }
    TESSERA_CHECK(any, cfg_path, ": target_modules regex '", tm.get<std::string>(),
                  "' matches none of ", known_modules());
  } else if (tm.is_string()) {
    for (auto& t : targeted) t.fill(true);
  } else {
    TESSERA_CHECK(tm.is_array() && !tm.empty(), cfg_path,
                  ": target_modules must be a list of module names or a regex, got ", tm.dump());
    std::array<bool, kNumLoraModules> mods{};
    for (const auto& e : tm) {
      TESSERA_CHECK(e.is_string(), cfg_path, ": target_modules entry ", e.dump(),
                    " is not a string");
      std::string s = e.get<std::string>();
      const auto dot = s.rfind('.');
      const std::string leaf = dot == std::string::npos ? s : s.substr(dot + 1);
      int found = -1;
      for (int m = 0; m < kNumLoraModules; ++m) {
        if (leaf == kNames[m]) found = m;
      }
      TESSERA_CHECK(found >= 0, cfg_path, ": target_modules entry '", s,
                    "' is not a linear layer of a ", config.model_type, " decoder block (",
                    known_modules(), ")");
      mods[found] = true;
    }
    for (auto& t : targeted) t = mods;
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
    for (int64_t l = 0; l < nl; ++l) {
      if (!keep.count(l)) targeted[l].fill(false);
    }
  }

  const auto file = SafetensorsFile::open(st_path);
  std::set<std::string> unused;
  std::map<std::string, std::string> canonical;  // PEFT name (adapter name stripped) -> stored
  for (const auto& n : file->names()) {
    unused.insert(n);
    canonical[peft_canonical_name(n)] = n;
  }
  a.layers.resize(nl);
  for (int64_t l = 0; l < nl; ++l) {
    for (int m = 0; m < kNumLoraModules; ++m) {
      if (!targeted[l][m]) continue;
      a.targets[m] = true;
      const auto [out, in] = module_shape(config, m);
      const std::string base = "base_model.model." + module_path(l, m);
      auto read = [&](const char* part, std::vector<int64_t> want) {
        const std::string key = base + "." + part + ".weight";
        const auto it = canonical.find(key);
        TESSERA_CHECK(it != canonical.end(), where, ": tensor '", key,
                      "' is missing (target_modules names ", kNames[m], ")");
        const auto& e = file->get(it->second);
        unused.erase(it->second);
        std::ostringstream got, exp;
        got << torch::IntArrayRef(e.shape);
        exp << torch::IntArrayRef(want);
        TESSERA_CHECK(e.shape == want, where, ": tensor '", it->second, "' has shape ", got.str(),
                      ", expected ", exp.str(), " (r=", a.r, " in adapter_config.json, ", kNames[m],
                      " is [", out, ", ", in, "])");
        return peft_tensor_to_float(e, where);
      };
      a.layers[l][m].a = read("lora_A", {a.r, in});
      a.layers[l][m].b = read("lora_B", {out, a.r});
    }
  }
  TESSERA_CHECK(unused.empty(), where, ": tensor '", unused.empty() ? "" : *unused.begin(),
                "' is not a LoRA weight of a targeted module (", unused.size(),
                " unexpected tensors; target_modules / layers_to_transform disagree with the "
                "file?)");
  return a;
}

}  // namespace tessera::models
