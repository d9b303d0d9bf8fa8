// adapter_config.json of a PEFT LoRA adapter (PeftLoraConfig::parse, resolve_lora_targets): what
// `--lora NAME=PATH` and `classify --lora` read before any weight. Properties: an accepted config
// has r > 0 and a finite scale of lora_alpha / r (or / sqrt(r) with use_rslora); it selects at
// least one module of the decoder (4 layers) or BERT (3 layers, with and without the "bert."
// prefix) it is resolved for, only in the layers layers_to_transform keeps, and never the extra
// modules when it names layers; a list of names selects exactly the modules PEFT's rule (the path
// equals an entry or ends with "." + entry) selects.
#include <cmath>
#include <string>

#include "common/error.h"
#include "runtime/models/lora_config.h"
#include "tests/fuzz/fuzz_target.h"

namespace {
using tessera::models::LoraModuleSpace;
using tessera::models::PeftLoraConfig;

bool peft_list_selects(const nlohmann::json& list, const std::string& path) {
  for (const auto& e : list) {
    const std::string s = e.get<std::string>();
    if (path == s ||
        (path.size() > s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0 &&
         path[path.size() - s.size() - 1] == '.')) {
      return true;
    }
  }
  return false;
}

void check(const PeftLoraConfig& pc, const LoraModuleSpace& space) {
  tessera::models::LoraTargets t;
  try {
    t = tessera::models::resolve_lora_targets(pc, space);
  } catch (const tessera::Error&) {
    return;
  }
  TESSERA_FUZZ_ASSERT(static_cast<int64_t>(t.layers.size()) == space.num_layers, "layers");
  TESSERA_FUZZ_ASSERT(t.extra.size() == space.extra_paths.size(), "extra");
  const auto& j = pc.json;
  const bool names_layers =
      j.contains("layers_to_transform") && !j["layers_to_transform"].is_null() &&
      !(j["layers_to_transform"].is_array() && j["layers_to_transform"].empty());
  bool any = false;
  for (int64_t l = 0; l < space.num_layers; ++l) {
    TESSERA_FUZZ_ASSERT(static_cast<int>(t.layers[l].size()) == space.num_modules, "modules");
    for (int m = 0; m < space.num_modules; ++m) {
      any = any || t.layers[l][m];
      const auto& tm = j["target_modules"];
      if (tm.is_array() && !names_layers) {
        TESSERA_FUZZ_ASSERT(t.layers[l][m] == peft_list_selects(tm, space.path(l, m)),
                            "the list rule disagrees at " + space.path(l, m));
      }
      if (names_layers && t.layers[l][m]) {
        const auto& lt = j["layers_to_transform"];
        bool kept = false;
        for (const auto& e : lt.is_array() ? lt : nlohmann::json::array({lt})) {
          kept = kept || e.get<int64_t>() == l;
        }
        TESSERA_FUZZ_ASSERT(kept, "layer " + std::to_string(l) + " is not in layers_to_transform");
      }
    }
  }
  for (size_t e = 0; e < t.extra.size(); ++e) {
    any = any || t.extra[e];
    TESSERA_FUZZ_ASSERT(!(names_layers && t.extra[e]), "an extra module with layers_to_transform");
  }
  TESSERA_FUZZ_ASSERT(any, "an accepted config selects no module");
}
}  // namespace

TESSERA_FUZZ_TARGET(lora_config) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool allow_modules_to_save : {false, true}) {
    PeftLoraConfig pc;
    try {
      pc = PeftLoraConfig::parse(text, "fuzz", allow_modules_to_save);
    } catch (const tessera::Error&) {
      continue;
    }
    TESSERA_FUZZ_ASSERT(pc.r > 0, "r " + std::to_string(pc.r));
    TESSERA_FUZZ_ASSERT(std::isfinite(pc.scale), "scale " + std::to_string(pc.scale));
    const double want = pc.use_rslora ? pc.lora_alpha / std::sqrt(static_cast<double>(pc.r))
                                      : pc.lora_alpha / static_cast<double>(pc.r);
    TESSERA_FUZZ_ASSERT(pc.scale == want, "scale " + std::to_string(pc.scale));
    TESSERA_FUZZ_ASSERT(allow_modules_to_save || pc.modules_to_save.empty(), "modules_to_save");
    check(pc, tessera::models::decoder_lora_space("llama", 4));
    if (allow_modules_to_save) {
      check(pc, tessera::models::bert_lora_space("bert", 3, ""));
      check(pc, tessera::models::bert_lora_space("bert", 3, "bert."));
    }
  }
  return 0;
}
