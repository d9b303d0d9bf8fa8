// Decoder configuration read from a Hugging Face config.json (LLaMA 2/3, Mistral, Qwen2 and Gemma 2
// families: RMSNorm, rotary embeddings with their scaling variants, grouped-query attention, gated
// MLPs, optional biases and sliding-window layers; Gemma 2's soft-capping, scaled embeddings,
// (1 + w) norms and extra feed-forward norms). Every field that changes the arithmetic is
// read here or the config is refused with one line naming the field and its value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tessera::models {

// The MLP's gate activation (config "hidden_act" / "hidden_activation").
enum class Activation : uint8_t { kSilu, kGelu, kGeluTanh };
const char* activation_name(Activation act);

// Rotary position embedding scaling (config "rope_scaling", transformers 4.44 semantics).
struct RopeScaling {
  enum class Type : uint8_t { kDefault, kLinear, kDynamic, kLlama3, kYarn };
  Type type = Type::kDefault;
  double factor = 1.0;
  // llama3: wavelengths above original_max_position_embeddings / low_freq_factor are divided by
  // factor, those below ... / high_freq_factor kept, the band between interpolated.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  // yarn: the ramp between beta_fast and beta_slow rotations; cos / sin are multiplied by
  // attention_factor (default 0.1 ln(factor) + 1).
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;
};
const char* rope_type_name(RopeScaling::Type type);

struct ModelConfig {
  // The most layers a config may name (real models have a few hundred at most): per-layer tables
  // are sized by num_hidden_layers while the config is read.
  static constexpr int64_t kMaxLayers = 100000;
  std::string model_type;    // "llama", "mistral", "qwen2", "gemma2"
  std::string architecture;  // architectures[0], e.g. "LlamaForCausalLM" ("" when absent)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  Activation hidden_act = Activation::kSilu;
  // Biases, derived once from the family: LLaMA's attention_bias covers q/k/v and o_proj; Qwen2
  // always has q/k/v biases and none on o_proj; Mistral has none. mlp_bias: gate/up/down (LLaMA).
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string torch_dtype;  // as stored ("float32", "bfloat16", ...); "" when absent
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;  // every id of an eos_token_id list
  // Per layer: 0 = full attention, w > 0 = sliding window of w tokens.
  std::vector<int64_t> layer_windows;
  // Gemma 2 (transformers 4.44 semantics; 0 / 1 / false elsewhere). Scores and final logits are
  // soft-capped as cap * tanh(x / cap) when the cap is > 0; the attention scale is
  // query_pre_attn_scalar^-0.5 when that is > 0; embeddings are multiplied by
  // embedding_multiplier (sqrt(hidden_size) as float32); RMSNorm multiplies by (1 + weight); and
  // with sandwich_norms the attention and MLP outputs are normed (post_attention_layernorm,
  // post_feedforward_layernorm) before the residual add, the MLP input by
  // pre_feedforward_layernorm.
  double attn_logit_softcapping = 0;
  double final_logit_softcapping = 0;
  double query_pre_attn_scalar = 0;
  float embedding_multiplier = 1.0f;
  bool norm_weight_offset = false;
  bool sandwich_norms = false;

  // Throws naming the field and value when a field is missing, of the wrong type, inconsistent
  // or not supported.
  static ModelConfig from_json_text(const std::string& text, const std::string& origin);
  static ModelConfig from_file(const std::string& path);
  std::string to_json_text() const;  // Hugging Face layout

  void validate() const;
  // Checks that `tp` ranks divide the query heads and the MLP, and that the KV heads either split
  // over the ranks or (decode context parallel) each KV head spans tp / num_key_value_heads ranks.
  // Throws naming the field otherwise.
  void check_tensor_parallel(int tp) const;
  // Ranks that share one KV head and split its tokens (1 when tp <= num_key_value_heads).
  int decode_context_parallel(int tp) const;
  int64_t num_params() const;
  // The longest sequence the model is meant for: max_position_embeddings, times the
  // rope_scaling factor for the types that extend the context (linear, dynamic, yarn).
  int64_t derived_max_model_len() const;
  // The attention softmax scale: 1 / sqrt(head_dim), or 1 / sqrt(query_pre_attn_scalar).
  double attention_scale() const;
};

}  // namespace tessera::models
