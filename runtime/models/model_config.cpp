#include "runtime/models/model_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "common/error.h"

namespace tessera::models {

namespace {

using nlohmann::json;

int64_t get_int(const json& j, const char* key, const std::string& origin,
                std::optional<int64_t> fallback = std::nullopt) {
  if (!j.contains(key) || j[key].is_null()) {
    TESSERA_CHECK(fallback.has_value(), origin, ": config field '", key, "' is missing");
    return *fallback;
  }
  TESSERA_CHECK(j[key].is_number_integer(), origin, ": config field '", key,
                "' must be an integer, got ", j[key].dump());
  return j[key].get<int64_t>();
}

double get_double(const json& j, const char* key, double fallback, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  TESSERA_CHECK(j[key].is_number(), origin, ": config field '", key, "' must be a number, got ",
                j[key].dump());
  return j[key].get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  TESSERA_CHECK(j[key].is_boolean(), origin, ": config field '", key,
                "' must be true or false, got ", j[key].dump());
  return j[key].get<bool>();
}

int64_t first_token_id(const json& j, const char* key, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return -1;
  if (j[key].is_array() && j[key].empty()) return -1;
  const json& v = j[key].is_array() ? j[key][0] : j[key];
  TESSERA_CHECK(v.is_number_integer(), origin, ": config field '", key,
                "' must be an integer or a list of integers, got ", j[key].dump());
  return v.get<int64_t>();
}

}  // namespace

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    TESSERA_FAIL(origin, ": not valid JSON: ", e.what());
  }
  TESSERA_CHECK(j.is_object(), origin, ": config must be a JSON object");
  ModelConfig c;
  if (j.contains("model_type") && !j["model_type"].is_null()) {
    TESSERA_CHECK(j["model_type"].is_string(), origin,
                  ": config field 'model_type' must be a string, got ", j["model_type"].dump());
    c.model_type = j["model_type"].get<std::string>();
  } else {
    c.model_type = "llama";
  }
  TESSERA_CHECK(c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2",
                origin, ": model_type='", c.model_type,
                "' is not supported (supported: llama, mistral, qwen2)");
  c.vocab_size = get_int(j, "vocab_size", origin);
  c.hidden_size = get_int(j, "hidden_size", origin);
  c.intermediate_size = get_int(j, "intermediate_size", origin);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", origin);
  c.num_attention_heads = get_int(j, "num_attention_heads", origin);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", origin, c.num_attention_heads);
  TESSERA_CHECK(c.num_attention_heads > 0, origin, ": num_attention_heads must be positive, got ",
                c.num_attention_heads);
  c.head_dim = get_int(j, "head_dim", origin, c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", origin, 2048);
  c.rope_theta = get_double(j, "rope_theta", 10000.0, origin);
  c.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6, origin);
  c.attention_bias = get_bool(j, "attention_bias", c.model_type == "qwen2", origin);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, origin);
  c.bos_token_id = first_token_id(j, "bos_token_id", origin);
  c.eos_token_id = first_token_id(j, "eos_token_id", origin);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    TESSERA_FAIL(origin, ": rope_scaling=", j["rope_scaling"].dump(), " is not supported yet");
  }

  // Sliding windows: explicit layer_types (transformers >= 4.53) win; otherwise Mistral applies
  // sliding_window to every layer and Qwen2 to layers >= max_window_layers when enabled.
  int64_t window = 0;
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    window = get_int(j, "sliding_window", origin);
    TESSERA_CHECK(window > 0, origin, ": sliding_window must be positive or null, got ", window);
  }
  c.layer_windows.assign(c.num_hidden_layers > 0 ? c.num_hidden_layers : 0, 0);
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const auto& types = j["layer_types"];
    TESSERA_CHECK(types.is_array() && static_cast<int64_t>(types.size()) == c.num_hidden_layers,
                  origin, ": layer_types must list num_hidden_layers=", c.num_hidden_layers,
                  " entries, got ", types.dump());
    for (size_t i = 0; i < types.size(); ++i) {
      const std::string t = types[i].is_string() ? types[i].get<std::string>() : types[i].dump();
      if (t == "sliding_attention") {
        TESSERA_CHECK(window > 0, origin, ": layer_types[", i,
                      "]='sliding_attention' needs a positive sliding_window");
        c.layer_windows[i] = window;
      } else {
        TESSERA_CHECK(t == "full_attention", origin, ": layer_types[", i, "]='", t,
                      "' is not supported (full_attention, sliding_attention)");
      }
    }
  } else if (window > 0) {
    if (c.model_type == "mistral") {
      c.layer_windows.assign(c.layer_windows.size(), window);
    } else if (c.model_type == "qwen2" && get_bool(j, "use_sliding_window", false, origin)) {
      const int64_t first = get_int(j, "max_window_layers", origin, c.num_hidden_layers);
      TESSERA_CHECK(first >= 0, origin, ": max_window_layers must be >= 0, got ", first);
      for (int64_t i = first; i < c.num_hidden_layers; ++i) c.layer_windows[i] = window;
    }
  }
  c.validate();
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  TESSERA_CHECK(in.good(), "cannot read model config '", path, "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_text(ss.str(), path);
}

void ModelConfig::validate() const {
  TESSERA_CHECK(vocab_size > 0, "vocab_size must be positive, got ", vocab_size);
  TESSERA_CHECK(hidden_size > 0, "hidden_size must be positive, got ", hidden_size);
  TESSERA_CHECK(intermediate_size > 0, "intermediate_size must be positive, got ",
                intermediate_size);
  TESSERA_CHECK(num_hidden_layers > 0, "num_hidden_layers must be positive, got ",
                num_hidden_layers);
  TESSERA_CHECK(num_key_value_heads > 0, "num_key_value_heads must be positive, got ",
                num_key_value_heads);
  TESSERA_CHECK(num_attention_heads % num_key_value_heads == 0,
                "num_attention_heads=", num_attention_heads,
                " is not a multiple of num_key_value_heads=", num_key_value_heads);
  TESSERA_CHECK(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even, got ",
                head_dim);
  TESSERA_CHECK(max_position_embeddings > 0, "max_position_embeddings must be positive, got ",
                max_position_embeddings);
  TESSERA_CHECK(rms_norm_eps > 0, "rms_norm_eps must be positive, got ", rms_norm_eps);
  TESSERA_CHECK(rope_theta > 0, "rope_theta must be positive, got ", rope_theta);
  TESSERA_CHECK(static_cast<int64_t>(layer_windows.size()) == num_hidden_layers,
                "layer_windows has ", layer_windows.size(), " entries, expected ",
                num_hidden_layers);
}

void ModelConfig::check_tensor_parallel(int tp) const {
  TESSERA_CHECK(tp >= 1, "tensor-parallel size must be positive, got ", tp);
  TESSERA_CHECK(num_attention_heads % tp == 0, "num_attention_heads=", num_attention_heads,
                " is not divisible by ", tp, " tensor-parallel ranks");
  TESSERA_CHECK(num_key_value_heads % tp == 0, "num_key_value_heads=", num_key_value_heads,
                " is not divisible by ", tp, " tensor-parallel ranks");
  TESSERA_CHECK(intermediate_size % tp == 0, "intermediate_size=", intermediate_size,
                " is not divisible by ", tp, " tensor-parallel ranks");
}

int64_t ModelConfig::num_params() const {
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  int64_t per_layer = hidden_size * (q + 2 * kv) + q * hidden_size +
                      3 * hidden_size * intermediate_size + 2 * hidden_size;
  if (attention_bias) per_layer += q + 2 * kv;
  const int64_t embed = vocab_size * hidden_size;
  return num_hidden_layers * per_layer + embed * (tie_word_embeddings ? 1 : 2) + hidden_size;
}

std::string ModelConfig::to_json_text() const {
  nlohmann::ordered_json j;
  const bool qwen = model_type == "qwen2";
  j["architectures"] = {
      qwen ? "Qwen2ForCausalLM"
           : (model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM")};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rope_theta"] = rope_theta;
  j["rms_norm_eps"] = rms_norm_eps;
  j["hidden_act"] = "silu";
  if (!qwen) j["attention_bias"] = attention_bias;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = "float32";
  int64_t window = 0;
  nlohmann::ordered_json types = nlohmann::ordered_json::array();
  for (auto w : layer_windows) {
    types.push_back(w > 0 ? "sliding_attention" : "full_attention");
    if (w > 0) window = w;
  }
  j["sliding_window"] = window > 0 ? nlohmann::ordered_json(window) : nlohmann::ordered_json();
  if (qwen) {
    j["use_sliding_window"] = window > 0;
    j["max_window_layers"] = num_hidden_layers;
  }
  j["layer_types"] = types;
  return j.dump(2);
}

}  // namespace tessera::models
