// Decoder configuration read from a Hugging Face config.json (LLaMA, Mistral and Qwen2 families:
// RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, optional sliding-window layers).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::models {

struct ModelConfig {
  std::string model_type;  // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool attention_bias = false;  // q/k/v projections carry a bias (always true for qwen2)
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  // Per layer: 0 = full attention, w > 0 = sliding window of w tokens.
  std::vector<int64_t> layer_windows;

  // Throws naming the field and value when a field is missing, of the wrong type or inconsistent.
  static ModelConfig from_json_text(const std::string& text, const std::string& origin);
  static ModelConfig from_file(const std::string& path);
  std::string to_json_text() const;  // Hugging Face layout

  void validate() const;
  // Checks that `tp` ranks divide the heads and the MLP; throws naming the field otherwise.
  void check_tensor_parallel(int tp) const;
  int64_t num_params() const;
};

}  // namespace tessera::models
