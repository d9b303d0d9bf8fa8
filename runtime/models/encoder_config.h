// Encoder configuration read from a Hugging Face config.json: BERT (absolute positions, token
// types, post-LayerNorm, GELU MLP, pooler) and ModernBERT (rotary positions with one theta for
// global and one for local layers, pre-norm, bias-free LayerNorm, GeGLU MLP, alternating global and
// sliding- window attention, final norm). What differs between the families is data here — position
// kind, norm placement, biases, MLP shape, per-layer windows and rope bases — read by one forward
// pass, not two models. A sequence-classification head (BertForSequenceClassification /
// ModernBertForSequenceClassification) is described too. Torch-free; every field that changes the
// arithmetic is read or the config is refused with one line naming the field and its value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/models/model_config.h"  // Activation

namespace tessera::models {

enum class EncoderFamily : uint8_t { kBert, kModernBert };

// What the classifier reads: BERT's pooler (dense + tanh over the first token), or ModernBERT's
// head (dense + activation + LayerNorm over the first token or the mean of the tokens).
enum class ClassifierPooling : uint8_t { kCls, kMean };

// transformers' problem_type: which output function and loss a head's logits take.
enum class ProblemType : uint8_t {
  kUnset,        // regression when num_labels == 1, else softmax / from the labels' type
  kRegression,   // identity, MSE
  kSingleLabel,  // softmax, cross entropy
  kMultiLabel,   // sigmoid, BCE with logits
};
const char* problem_type_name(ProblemType p);

// The attention an encoder runs: dense (every visible key) or cluster attention (each token
// attends to the tokens of its nearest clusters of consecutive tokens, AutoFocusFormer-style).
struct EncoderAttentionChoice {
  enum class Kind : uint8_t { kDense, kCluster };
  Kind kind = Kind::kDense;
  int64_t cluster_size = 16;     // consecutive tokens per cluster
  int64_t nearest_clusters = 4;  // clusters each token attends to (its own included)
};

struct EncoderConfig {
  // The most layers a config may name (real models have a few hundred at most): per-layer tables
  // are sized by num_hidden_layers while the config is read.
  static constexpr int64_t kMaxLayers = 100000;
  std::string model_type;    // "bert", "modernbert"
  std::string architecture;  // architectures[0] ("" when absent)
  EncoderFamily family = EncoderFamily::kBert;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  int64_t type_vocab_size = 0;  // BERT's token types; 0 = none
  int64_t pad_token_id = -1;
  double norm_eps = 1e-12;
  Activation hidden_act = Activation::kGelu;

  // Family data, derived once from the model type and its config fields.
  bool absolute_positions = false;  // learned position embeddings (BERT) ...
  bool rotary = false;              // ... or rotary on q / k (ModernBERT)
  bool pre_norm = false;  // norms before attention / MLP (ModernBERT) or after the residual (BERT)
  bool norm_bias = true;  // LayerNorms carry a bias
  bool attention_bias = true;
  bool mlp_bias = true;
  bool glu_mlp = false;         // Wi -> [act(input), gate] halves, act(input) * gate
  bool first_attn_norm = true;  // layer 0 normalises its attention input (ModernBERT: it does not)
  bool final_norm = false;      // a LayerNorm after the last layer
  // Per layer: -1 = global attention, w >= 0 = keys with |i - j| <= w (ModernBERT local layers:
  // local_attention / 2).
  std::vector<int64_t> layer_windows;
  std::vector<double> layer_rope_theta;  // per layer (rotary only)

  // Sequence-classification head (architecture *ForSequenceClassification).
  bool has_classifier = false;
  int64_t num_labels = 0;
  std::vector<std::string> labels;  // id2label in id order ("LABEL_i" when absent)
  ProblemType problem_type = ProblemType::kUnset;
  ClassifierPooling classifier_pooling = ClassifierPooling::kCls;
  Activation classifier_activation = Activation::kGelu;  // ModernBERT head
  bool classifier_bias = true;                           // ModernBERT head.dense

  EncoderAttentionChoice attention;  // config "tessera_attention" (dense when absent)

  // Throws naming the field and value when a field is missing, of the wrong type, inconsistent or
  // not supported; a model_type that is not an encoder is refused naming the ones that are.
  static EncoderConfig from_json_text(const std::string& text, const std::string& origin);
  static EncoderConfig from_file(const std::string& path);
  // True when config.json's model_type is an encoder family this file reads.
  static bool is_encoder_config(const std::string& path);

  void validate() const;
  // Checks that `tp` ranks divide the heads and the MLP; throws naming the field otherwise.
  void check_tensor_parallel(int tp) const;
  double attention_scale() const;
};

}  // namespace tessera::models
