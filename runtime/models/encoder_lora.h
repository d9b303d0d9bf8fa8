// PEFT LoRA adapters for BERT encoders (BertModel, BertFor*: adapter_config.json +
// adapter_model.safetensors as peft's save_pretrained writes them). Each targeted linear computes
// y = x W^T + b + scale * (x A^T) B^T (scale = lora_alpha / r, or / sqrt(r) with use_rslora); the
// modules an adapter may target are the six linears of every layer (attention.self.query / key /
// value, attention.output.dense, intermediate.dense, output.dense) and pooler.dense, matched as
// PEFT matches target_modules (a list: the module's path equals an entry or ends with "." + entry;
// a string: a regex over the whole path; "all-linear"), restricted by layers_to_transform.
// modules_to_save replaces whole modules: the classifier and the pooler are supported (PEFT's
// SEQ_CLS default "score" names nothing in BERT and is ignored, as PEFT ignores it). An adapter is
// read whole and validated against the config before anything uses it; EncoderModel::add_lora
// slices it for its tensor-parallel rank.
#pragma once

#include <torch/types.h>

#include <array>
#include <string>
#include <vector>

#include "runtime/models/encoder_config.h"
#include "runtime/models/lora_config.h"

namespace tessera::models {

// The linears of a BERT layer an adapter may target, in this order everywhere; the pooler's dense
// is kept beside them.
enum class EncoderLoraModule : int { kQuery, kKey, kValue, kAttnOut, kIntermediate, kOutput };
inline constexpr int kNumEncoderLoraModules = kNumBertLoraModules;
const char* encoder_lora_module_path(EncoderLoraModule m);  // "attention.self.query", ...

struct EncoderLoraAdapter {
  std::string name;
  std::string dir;
  int64_t r = 0;
  double scale = 0;
  // a [r, in_features], b [out_features, r] float32 on the CPU; undefined where not targeted.
  struct Pair {
    torch::Tensor a, b;
  };
  std::vector<std::array<Pair, kNumEncoderLoraModules>> layers;
  Pair pooler;
  // modules_to_save: replacement weights [out, in] and biases (undefined when not saved).
  torch::Tensor classifier_w, classifier_b, pooler_w, pooler_b;

  // Throws one line naming the folder and the field / tensor / value at fault: a missing file, a
  // rank or shape mismatch, an unknown target module, a missing or extra tensor, an encoder family
  // other than BERT, options Tessera does not implement.
  static EncoderLoraAdapter load(const std::string& name, const std::string& dir,
                                 const EncoderConfig& config);
};

}  // namespace tessera::models
