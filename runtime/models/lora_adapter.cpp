#include "runtime/models/lora_adapter.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {
namespace {

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

const char* lora_module_name(LoraModule m) { return decoder_lora_module_name(static_cast<int>(m)); }

std::pair<std::string, std::string> parse_lora_arg(const std::string& arg) {
  const auto eq = arg.find('=');
  TESSERA_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < arg.size(),
                "--lora must be NAME=PATH, got '", arg, "'");
  return {arg.substr(0, eq), arg.substr(eq + 1)};
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
  const std::string& st_path = pc.weights_path;
  LoraAdapter a;
  a.name = name;
  a.dir = dir;
  a.r = pc.r;
  a.lora_alpha = pc.lora_alpha;
  a.use_rslora = pc.use_rslora;
  a.scale = pc.scale;

  // Which (layer, module) pairs the adapter targets, as PEFT matches module names.
  const int64_t nl = config.num_hidden_layers;
  const LoraModuleSpace space = decoder_lora_space(config.model_type, nl);
  const LoraTargets targeted = resolve_lora_targets(pc, space);

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
      if (!targeted.layers[l][m]) continue;
      a.targets[m] = true;
      const auto [out, in] = module_shape(config, m);
      const std::string base = "base_model.model." + space.path(l, m);
      auto read = [&](const char* part, std::vector<int64_t> want) {
        const std::string key = base + "." + part + ".weight";
        const auto it = canonical.find(key);
        TESSERA_CHECK(it != canonical.end(), where, ": tensor '", key,
                      "' is missing (target_modules names ", decoder_lora_module_name(m), ")");
        const auto& e = file->get(it->second);
        unused.erase(it->second);
        std::ostringstream got, exp;
        got << torch::IntArrayRef(e.shape);
        exp << torch::IntArrayRef(want);
        TESSERA_CHECK(e.shape == want, where, ": tensor '", it->second, "' has shape ", got.str(),
                      ", expected ", exp.str(), " (r=", a.r, " in adapter_config.json, ",
                      decoder_lora_module_name(m), " is [", out, ", ", in, "])");
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
