#include "runtime/models/encoder_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "common/error.h"

namespace tessera::models {

namespace {

using nlohmann::json;

bool present(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

int64_t get_int(const json& j, const char* key, const std::string& origin,
                std::optional<int64_t> fallback = std::nullopt) {
  if (!present(j, key)) {
    TESSERA_CHECK(fallback.has_value(), origin, ": config field '", key, "' is missing");
    return *fallback;
  }
  TESSERA_CHECK(j[key].is_number_integer(), origin, ": config field '", key,
                "' must be an integer, got ", j[key].dump());
  return j[key].get<int64_t>();
}

double get_double(const json& j, const char* key, double fallback, const std::string& origin) {
  if (!present(j, key)) return fallback;
  TESSERA_CHECK(j[key].is_number(), origin, ": config field '", key, "' must be a number, got ",
                j[key].dump());
  return j[key].get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback, const std::string& origin) {
  if (!present(j, key)) return fallback;
  TESSERA_CHECK(j[key].is_boolean(), origin, ": config field '", key,
                "' must be true or false, got ", j[key].dump());
  return j[key].get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& fallback,
                       const std::string& origin) {
  if (!present(j, key)) return fallback;
  TESSERA_CHECK(j[key].is_string(), origin, ": config field '", key, "' must be a string, got ",
                j[key].dump());
  return j[key].get<std::string>();
}

// transformers' ACT2FN names the encoders use.
Activation activation(const json& j, const char* key, const std::string& fallback,
                      const std::string& origin) {
  const std::string act = get_string(j, key, fallback, origin);
  if (act == "gelu") return Activation::kGelu;
  if (act == "gelu_new" || act == "gelu_pytorch_tanh") return Activation::kGeluTanh;
  if (act == "silu" || act == "swish") return Activation::kSilu;
  TESSERA_FAIL(origin, ": ", key, "='", act,
               "' is not supported (gelu, gelu_new, gelu_pytorch_tanh, silu)");
}

constexpr const char* kEncoderTypes = "bert, modernbert";

void read_classifier(const json& j, EncoderConfig& c, const std::string& origin) {
  const std::string& a = c.architecture;
  const std::string suffix = "ForSequenceClassification";
  c.has_classifier =
      a.size() > suffix.size() && a.compare(a.size() - suffix.size(), suffix.size(), suffix) == 0;
  if (!c.has_classifier) {
    const bool known = a.empty() || a == "BertModel" || a == "BertForMaskedLM" ||
                       a == "BertForPreTraining" || a == "ModernBertModel" ||
                       a == "ModernBertForMaskedLM";
    TESSERA_CHECK(known, origin, ": architectures[0]='", a,
                  "' is not supported (BertModel, BertForMaskedLM, BertForSequenceClassification, "
                  "ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification)");
    return;
  }
  const std::string expected = c.family == EncoderFamily::kBert
                                   ? "BertForSequenceClassification"
                                   : "ModernBertForSequenceClassification";
  TESSERA_CHECK(a == expected, origin, ": architectures[0]='", a, "' does not match model_type '",
                c.model_type, "' (expected ", expected, ")");
  // transformers: num_labels = len(id2label); id2label keys are the ids as strings.
  if (present(j, "id2label")) {
    const json& m = j["id2label"];
    TESSERA_CHECK(m.is_object() && !m.empty(), origin,
                  ": config field 'id2label' must be a non-empty object, got ", m.dump());
    c.num_labels = static_cast<int64_t>(m.size());
    c.labels.assign(c.num_labels, "");
    for (auto& [key, value] : m.items()) {
      size_t used = 0;
      int64_t id = -1;
      try {
        id = std::stoll(key, &used);
      } catch (...) {
        used = 0;
      }
      TESSERA_CHECK(used == key.size() && id >= 0 && id < c.num_labels && value.is_string(), origin,
                    ": id2label must map the ids 0..", c.num_labels - 1, " to strings, got key '",
                    key, "' -> ", value.dump());
      c.labels[id] = value.get<std::string>();
    }
  } else {
    c.num_labels = get_int(j, "num_labels", origin, 2);
    for (int64_t i = 0; i < c.num_labels; ++i) c.labels.push_back("LABEL_" + std::to_string(i));
  }
  TESSERA_CHECK(c.num_labels >= 1, origin, ": num_labels must be >= 1, got ", c.num_labels);
  const std::string p = get_string(j, "problem_type", "", origin);
  if (p.empty()) {
    c.problem_type = ProblemType::kUnset;
  } else if (p == "regression") {
    c.problem_type = ProblemType::kRegression;
  } else if (p == "single_label_classification") {
    c.problem_type = ProblemType::kSingleLabel;
  } else if (p == "multi_label_classification") {
    c.problem_type = ProblemType::kMultiLabel;
  } else {
    TESSERA_FAIL(origin, ": problem_type='", p,
                 "' is not supported (regression, single_label_classification, "
                 "multi_label_classification)");
  }
}

void read_bert(const json& j, EncoderConfig& c, const std::string& origin) {
  c.intermediate_size = get_int(j, "intermediate_size", origin);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", origin, 512);
  c.type_vocab_size = get_int(j, "type_vocab_size", origin, 2);
  c.norm_eps = get_double(j, "layer_norm_eps", 1e-12, origin);
  c.hidden_act = activation(j, "hidden_act", "gelu", origin);
  const std::string pos = get_string(j, "position_embedding_type", "absolute", origin);
  TESSERA_CHECK(pos == "absolute", origin, ": position_embedding_type='", pos,
                "' is not supported (absolute)");
  TESSERA_CHECK(!get_bool(j, "is_decoder", false, origin) &&
                    !get_bool(j, "add_cross_attention", false, origin),
                origin, ": is_decoder / add_cross_attention BERT models are not encoders");
  c.absolute_positions = true;
  c.rotary = false;
  c.pre_norm = false;
  c.norm_bias = c.attention_bias = c.mlp_bias = true;
  c.glu_mlp = false;
  c.first_attn_norm = true;
  c.final_norm = false;
  c.layer_windows.assign(c.num_hidden_layers, -1);
}

// ModernBERT, in both config layouts transformers has written: global_rope_theta /
// local_rope_theta / global_attn_every_n_layers, or layer_types + rope_parameters.
void read_modernbert(const json& j, EncoderConfig& c, const std::string& origin) {
  c.intermediate_size = get_int(j, "intermediate_size", origin, 1152);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", origin, 8192);
  c.norm_eps = get_double(j, "norm_eps", 1e-5, origin);
  c.hidden_act = activation(j, "hidden_activation", "gelu", origin);
  c.norm_bias = get_bool(j, "norm_bias", false, origin);
  c.attention_bias = get_bool(j, "attention_bias", false, origin);
  c.mlp_bias = get_bool(j, "mlp_bias", false, origin);
  c.classifier_bias = get_bool(j, "classifier_bias", false, origin);
  c.classifier_activation = activation(j, "classifier_activation", "gelu", origin);
  const std::string pooling = get_string(j, "classifier_pooling", "cls", origin);
  TESSERA_CHECK(pooling == "cls" || pooling == "mean", origin, ": classifier_pooling='", pooling,
                "' is not supported (cls, mean)");
  c.classifier_pooling = pooling == "cls" ? ClassifierPooling::kCls : ClassifierPooling::kMean;
  c.absolute_positions = false;
  c.rotary = true;
  c.pre_norm = true;
  c.glu_mlp = true;
  c.first_attn_norm = false;
  c.final_norm = true;
  c.type_vocab_size = 0;

  const int64_t every = get_int(j, "global_attn_every_n_layers", origin, 3);
  TESSERA_CHECK(every >= 1, origin, ": global_attn_every_n_layers must be >= 1, got ", every);
  const int64_t local = get_int(j, "local_attention", origin, 128);
  TESSERA_CHECK(local >= 0, origin, ": local_attention must be >= 0, got ", local);
  // Layer i is global iff i % every == 0 (transformers' ModernBertAttention); layer_types, when
  // given, must say the same (it picks the rope base; a disagreement has no single meaning).
  std::vector<bool> global(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) global[i] = i % every == 0;
  if (present(j, "layer_types")) {
    const json& t = j["layer_types"];
    TESSERA_CHECK(t.is_array() && static_cast<int64_t>(t.size()) == c.num_hidden_layers, origin,
                  ": layer_types must list num_hidden_layers=", c.num_hidden_layers,
                  " entries, got ", t.dump());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      const bool full = t[i] == "full_attention";
      TESSERA_CHECK((full || t[i] == "sliding_attention") && full == global[i], origin,
                    ": layer_types[", i, "]=", t[i].dump(), " disagrees with",
                    " global_attn_every_n_layers=", every, " (layer ", i, " is ",
                    global[i] ? "full_attention" : "sliding_attention", ")");
    }
  }
  double global_theta = get_double(j, "global_rope_theta", 160000.0, origin);
  double local_theta = get_double(j, "local_rope_theta", 10000.0, origin);
  if (present(j, "rope_parameters")) {
    const json& rp = j["rope_parameters"];
    TESSERA_CHECK(rp.is_object(), origin, ": rope_parameters must be an object, got ", rp.dump());
    for (const char* kind : {"full_attention", "sliding_attention"}) {
      if (!present(rp, kind)) continue;
      const json& p = rp[kind];
      const std::string where = origin + ": rope_parameters." + kind;
      TESSERA_CHECK(p.is_object(), where, " must be an object, got ", p.dump());
      const std::string type = get_string(p, "rope_type", "default", where);
      TESSERA_CHECK(type == "default", where, ".rope_type='", type, "' is not supported (default)");
      double& theta = std::string(kind) == "full_attention" ? global_theta : local_theta;
      theta = get_double(p, "rope_theta", theta, where);
    }
  }
  if (present(j, "rope_scaling")) {
    TESSERA_FAIL(origin, ": rope_scaling=", j["rope_scaling"].dump(),
                 " is not supported for modernbert");
  }
  TESSERA_CHECK(global_theta > 0 && local_theta > 0, origin,
                ": rope thetas must be positive, got global ", global_theta, ", local ",
                local_theta);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    c.layer_windows.push_back(global[i] ? -1 : local / 2);
    c.layer_rope_theta.push_back(global[i] ? global_theta : local_theta);
  }
}

void read_attention_choice(const json& j, EncoderConfig& c, const std::string& origin) {
  if (!present(j, "tessera_attention")) return;
  const json& a = j["tessera_attention"];
  const std::string where = origin + ": tessera_attention";
  TESSERA_CHECK(a.is_object(), where, " must be an object, got ", a.dump());
  const std::string type = get_string(a, "type", "dense", where);
  TESSERA_CHECK(type == "dense" || type == "cluster", where, ".type='", type,
                "' is not supported (dense, cluster)");
  c.attention.kind = type == "dense" ? EncoderAttentionChoice::Kind::kDense
                                     : EncoderAttentionChoice::Kind::kCluster;
  c.attention.cluster_size = get_int(a, "cluster_size", where, c.attention.cluster_size);
  c.attention.nearest_clusters =
      get_int(a, "nearest_clusters", where, c.attention.nearest_clusters);
}

}  // namespace

const char* problem_type_name(ProblemType p) {
  switch (p) {
    case ProblemType::kUnset:
      return "unset";
    case ProblemType::kRegression:
      return "regression";
    case ProblemType::kSingleLabel:
      return "single_label_classification";
    case ProblemType::kMultiLabel:
      return "multi_label_classification";
  }
  return "?";
}

EncoderConfig EncoderConfig::from_json_text(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    TESSERA_FAIL(origin, ": not valid JSON: ", e.what());
  }
  TESSERA_CHECK(j.is_object(), origin, ": must be a JSON object");
  EncoderConfig c;
  c.model_type = get_string(j, "model_type", "", origin);
  TESSERA_CHECK(!c.model_type.empty(), origin, ": config field 'model_type' is missing");
  if (c.model_type == "bert") {
    c.family = EncoderFamily::kBert;
  } else if (c.model_type == "modernbert") {
    c.family = EncoderFamily::kModernBert;
  } else {
    TESSERA_FAIL(origin, ": model_type='", c.model_type, "' is not an encoder Tessera runs (",
                 kEncoderTypes, ")");
  }
  if (present(j, "architectures")) {
    const json& a = j["architectures"];
    TESSERA_CHECK(a.is_array() && a.size() == 1 && a[0].is_string(), origin,
                  ": config field 'architectures' must list one class name, got ", a.dump());
    c.architecture = a[0].get<std::string>();
  }
  c.vocab_size = get_int(j, "vocab_size", origin);
  c.hidden_size = get_int(j, "hidden_size", origin);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", origin);
  c.num_attention_heads = get_int(j, "num_attention_heads", origin);
  c.pad_token_id = present(j, "pad_token_id") ? get_int(j, "pad_token_id", origin) : -1;
  TESSERA_CHECK(
      c.num_attention_heads > 0 && c.hidden_size > 0 && c.hidden_size % c.num_attention_heads == 0,
      origin, ": hidden_size=", c.hidden_size,
      " must be a positive multiple of num_attention_heads=", c.num_attention_heads);
  c.head_dim = c.hidden_size / c.num_attention_heads;
  TESSERA_CHECK(c.num_hidden_layers > 0 && c.num_hidden_layers <= EncoderConfig::kMaxLayers, origin,
                ": num_hidden_layers must be in [1, ", EncoderConfig::kMaxLayers, "], got ",
                c.num_hidden_layers);
  if (c.family == EncoderFamily::kBert) {
    read_bert(j, c, origin);
  } else {
    read_modernbert(j, c, origin);
  }
  read_classifier(j, c, origin);
  read_attention_choice(j, c, origin);
  c.validate();
  return c;
}

EncoderConfig EncoderConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  TESSERA_CHECK(in.good(), "cannot read model config '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_text(ss.str(), path);
}

bool EncoderConfig::is_encoder_config(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return false;
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("model_type") || !j["model_type"].is_string()) return false;
  const auto t = j["model_type"].get<std::string>();
  return t == "bert" || t == "modernbert";
}

void EncoderConfig::validate() const {
  TESSERA_CHECK(vocab_size > 0, "vocab_size must be positive, got ", vocab_size);
  TESSERA_CHECK(intermediate_size > 0, "intermediate_size must be positive, got ",
                intermediate_size);
  TESSERA_CHECK(max_position_embeddings > 0, "max_position_embeddings must be positive, got ",
                max_position_embeddings);
  TESSERA_CHECK(type_vocab_size >= 0, "type_vocab_size must be >= 0, got ", type_vocab_size);
  TESSERA_CHECK(norm_eps > 0 && std::isfinite(norm_eps), "norm eps must be positive, got ",
                norm_eps);
  TESSERA_CHECK(!rotary || head_dim % 2 == 0, "rotary positions need an even head_dim, got ",
                head_dim);
  TESSERA_CHECK(static_cast<int64_t>(layer_windows.size()) == num_hidden_layers,
                "layer windows must cover num_hidden_layers=", num_hidden_layers);
  TESSERA_CHECK(attention.cluster_size >= 1, "tessera_attention.cluster_size must be >= 1, got ",
                attention.cluster_size);
  TESSERA_CHECK(attention.nearest_clusters >= 1,
                "tessera_attention.nearest_clusters must be >= 1, got ",
                attention.nearest_clusters);
}

void EncoderConfig::check_tensor_parallel(int tp) const {
  TESSERA_CHECK(tp >= 1, "tensor-parallel size must be >= 1, got ", tp);
  TESSERA_CHECK(num_attention_heads % tp == 0, "num_attention_heads=", num_attention_heads,
                " is not divisible by ", tp, " tensor-parallel ranks");
  TESSERA_CHECK(intermediate_size % tp == 0, "intermediate_size=", intermediate_size,
                " is not divisible by ", tp, " tensor-parallel ranks");
}

double EncoderConfig::attention_scale() const {
  return 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace tessera::models
