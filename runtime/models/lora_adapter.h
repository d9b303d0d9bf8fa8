// PEFT LoRA adapters for the decoder families (adapter_config.json + adapter_model.safetensors,
// as peft's save_pretrained writes them): y = x W^T + scale * (x A^T) B^T on each targeted linear
// layer, scale = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora). An adapter is read whole
// (adapters are small) and validated against the model's config before anything uses it: every
// targeted module of every layer must have its lora_A [r, in] and lora_B [out, r], and the file
// must hold nothing else. DecoderModel::add_lora slices it for its tensor-parallel rank.
#pragma once

#include <torch/types.h>

#include <array>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/models/lora_config.h"
#include "runtime/models/model_config.h"
#include "runtime/models/safetensors.h"

namespace tessera::models {

// A stored PEFT tensor name with the adapter name removed ("...lora_A.default.weight" ->
// "...lora_A.weight"), as save_pretrained writes them.
std::string peft_canonical_name(const std::string& stored);
// A floating tensor of an adapter file as float32 on the CPU; throws naming it otherwise.
torch::Tensor peft_tensor_to_float(const TensorEntry& e, const std::string& where);

// The linear layers of a decoder block an adapter may target, in this order everywhere.
enum class LoraModule : int { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumLoraModules = kNumDecoderLoraModules;
const char* lora_module_name(LoraModule m);  // "q_proj", ...

struct LoraAdapter {
  std::string name;  // the name requests use ("" for an adapter loaded without one)
  std::string dir;
  int64_t r = 0;
  double lora_alpha = 0;
  bool use_rslora = false;
  double scale = 0;  // lora_alpha / r, or lora_alpha / sqrt(r)
  std::array<bool, kNumLoraModules> targets{};
  // Per layer, per module (LoraModule order): a [r, in_features], b [out_features, r] float32
  // on the CPU; undefined where the module is not targeted.
  struct Pair {
    torch::Tensor a, b;
  };
  std::vector<std::array<Pair, kNumLoraModules>> layers;

  // Reads and validates a PEFT folder for a model with `config`. Throws one line naming the
  // folder and the field / tensor / value at fault: a missing file, a rank or shape mismatch, an
  // unknown target module, a missing or extra tensor, options Tessera does not implement (DoRA,
  // bias training, fan_in_fan_out, rank_pattern / alpha_pattern, modules_to_save).
  static LoraAdapter load(const std::string& name, const std::string& dir,
                          const ModelConfig& config);
};

// "NAME=PATH" (a --lora argument) -> {NAME, PATH}; throws naming the argument when malformed.
std::pair<std::string, std::string> parse_lora_arg(const std::string& arg);

}  // namespace tessera::models
