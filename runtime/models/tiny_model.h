// The built-in tiny decoder ("--model tiny"): a Qwen2-layout model (RMSNorm, rotary embeddings,
// grouped-query attention with q/k/v bias, SwiGLU, alternating full and sliding-window layers)
// trained by `tessera train` on the King James Version (byte tokens; scripts/train_lm.sh).
// Written once in Hugging Face layout (config.json + model.safetensors) and then read back through
// the ordinary loader like any checkpoint.
#pragma once

#include <string>

#include "runtime/models/model_config.h"

namespace tessera::models {

ModelConfig tiny_model_config();

// Where the tiny model lives: $TESSERA_MODEL_CACHE/tiny, else $XDG_CACHE_HOME/tessera/tiny, else
// ~/.cache/tessera/tiny.
std::string tiny_model_dir();

// Writes the model into `dir` unless an identical one is there already; returns `dir`. Safe to
// call from several processes at once (each file is written to a temporary name and renamed).
std::string ensure_tiny_model(const std::string& dir);

}  // namespace tessera::models
