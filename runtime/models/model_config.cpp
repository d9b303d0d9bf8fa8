#include "runtime/models/model_config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

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

// model_type -> the transformers class that reads it.
constexpr std::pair<const char*, const char*> kFamilies[] = {
    {"llama", "LlamaForCausalLM"},
    {"mistral", "MistralForCausalLM"},
    {"qwen2", "Qwen2ForCausalLM"},
    {"gemma2", "Gemma2ForCausalLM"},
};

std::vector<int64_t> token_ids(const json& j, const char* key, const std::string& origin) {
  std::vector<int64_t> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  const json& v = j[key];
  auto one = [&](const json& x) {
    TESSERA_CHECK(x.is_number_integer() && x.get<int64_t>() >= 0, origin, ": config field '", key,
                  "' must be a non-negative integer or a list of them, got ", v.dump());
    out.push_back(x.get<int64_t>());
  };
  if (v.is_array()) {
    for (const auto& x : v) one(x);
  } else {
    one(v);
  }
  return out;
}

Activation parse_activation(const json& j, const std::string& origin, std::string act) {
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    TESSERA_CHECK(j[key].is_string(), origin, ": config field '", key, "' must be a string, got ",
                  j[key].dump());
    act = j[key].get<std::string>();
    break;
  }
  if (act == "silu" || act == "swish") return Activation::kSilu;
  if (act == "gelu") return Activation::kGelu;
  if (act == "gelu_pytorch_tanh" || act == "gelu_new") return Activation::kGeluTanh;
  TESSERA_FAIL(origin, ": hidden_act='", act,
               "' is not supported (silu, gelu, gelu_pytorch_tanh, gelu_new)");
}

RopeScaling parse_rope_scaling(const json& j, const std::string& origin) {
  RopeScaling r;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return r;
  const json& s = j["rope_scaling"];
  TESSERA_CHECK(s.is_object(), origin, ": rope_scaling must be an object or null, got ", s.dump());
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (s.contains(key) && s[key].is_string()) {
      type = s[key].get<std::string>();
      break;
    }
  }
  const std::string where = origin + ": rope_scaling";
  if (type == "default") return r;
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
  } else if (type == "dynamic") {
    r.type = RopeScaling::Type::kDynamic;
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::kLlama3;
  } else if (type == "yarn") {
    r.type = RopeScaling::Type::kYarn;
  } else {
    TESSERA_FAIL(origin, ": rope_scaling=", s.dump(), " is not supported (rope_type default, ",
                 "linear, dynamic, llama3, yarn)");
  }
  TESSERA_CHECK(s.contains("factor") && s["factor"].is_number(), where,
                " needs a numeric 'factor', got ", s.dump());
  r.factor = s["factor"].get<double>();
  TESSERA_CHECK(r.factor >= 1.0, where, ".factor must be >= 1, got ", r.factor);
  if (r.type == RopeScaling::Type::kLlama3) {
    r.low_freq_factor = get_double(s, "low_freq_factor", 1.0, where);
    r.high_freq_factor = get_double(s, "high_freq_factor", 4.0, where);
    r.original_max_position_embeddings =
        get_int(s, "original_max_position_embeddings", where, 8192);
    TESSERA_CHECK(r.high_freq_factor > r.low_freq_factor && r.low_freq_factor > 0, where,
                  ": high_freq_factor=", r.high_freq_factor,
                  " must exceed low_freq_factor=", r.low_freq_factor, " > 0");
    TESSERA_CHECK(r.original_max_position_embeddings > 0, where,
                  ".original_max_position_embeddings must be positive, got ",
                  r.original_max_position_embeddings);
  }
  if (r.type == RopeScaling::Type::kYarn) {
    // transformers treats 0 / null as "use the default" here ("or 32", "or 1").
    const double fast = get_double(s, "beta_fast", 0.0, where);
    const double slow = get_double(s, "beta_slow", 0.0, where);
    r.beta_fast = fast != 0.0 ? fast : 32.0;
    r.beta_slow = slow != 0.0 ? slow : 1.0;
    if (s.contains("attention_factor") && !s["attention_factor"].is_null()) {
      r.attention_factor = get_double(s, "attention_factor", 1.0, where);
    }
  }
  return r;
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
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const auto& a = j["architectures"];
    TESSERA_CHECK(a.is_array() && (a.empty() || a[0].is_string()), origin,
                  ": config field 'architectures' must be a list of strings, got ", a.dump());
    if (!a.empty()) c.architecture = a[0].get<std::string>();
  }
  if (j.contains("model_type") && !j["model_type"].is_null()) {
    TESSERA_CHECK(j["model_type"].is_string(), origin,
                  ": config field 'model_type' must be a string, got ", j["model_type"].dump());
    c.model_type = j["model_type"].get<std::string>();
  } else {
    c.model_type = "llama";
    for (const auto& [type, arch] : kFamilies) {
      if (c.architecture == arch) c.model_type = type;
    }
  }
  const char* expected_arch = nullptr;
  for (const auto& [type, arch] : kFamilies) {
    if (c.model_type == type) expected_arch = arch;
  }
  TESSERA_CHECK(expected_arch != nullptr, origin, ": model_type='", c.model_type,
                "' is not supported (supported: llama, mistral, qwen2, gemma2)");
  TESSERA_CHECK(c.architecture.empty() || c.architecture == expected_arch, origin,
                ": architectures[0]='", c.architecture, "' is not supported for model_type='",
                c.model_type, "' (supported: ", expected_arch, ")");
  c.vocab_size = get_int(j, "vocab_size", origin);
  c.hidden_size = get_int(j, "hidden_size", origin);
  c.intermediate_size = get_int(j, "intermediate_size", origin);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", origin);
  // Per-layer tables are sized by it before anything else is checked (a fuzzer's find: 222 million
  // layers took 1.7 GB and 13 s to refuse).
  TESSERA_CHECK(c.num_hidden_layers <= ModelConfig::kMaxLayers, origin,
                ": num_hidden_layers=", c.num_hidden_layers, " is more than this build supports (",
                ModelConfig::kMaxLayers, ")");
  c.num_attention_heads = get_int(j, "num_attention_heads", origin);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", origin, c.num_attention_heads);
  TESSERA_CHECK(c.num_attention_heads > 0, origin, ": num_attention_heads must be positive, got ",
                c.num_attention_heads);
  c.head_dim = get_int(j, "head_dim", origin, c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", origin, 2048);
  c.rope_theta = get_double(j, "rope_theta", 10000.0, origin);
  c.rms_norm_eps = get_double(j, "rms_norm_eps", 1e-6, origin);
  const bool gemma2 = c.model_type == "gemma2";
  // transformers' Gemma 2 ties by default (save_pretrained then omits the key).
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", gemma2, origin);
  c.bos_token_id = first_token_id(j, "bos_token_id", origin);
  c.eos_token_ids = token_ids(j, "eos_token_id", origin);
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  }
  c.hidden_act = parse_activation(j, origin, gemma2 ? "gelu_pytorch_tanh" : "silu");
  c.rope_scaling = parse_rope_scaling(j, origin);
  const double partial_rotary = get_double(j, "partial_rotary_factor", 1.0, origin);
  TESSERA_CHECK(partial_rotary == 1.0, origin, ": partial_rotary_factor=", partial_rotary,
                " is not supported (rotary embeddings over the whole head only)");

  // Biases as each family's transformers module creates them.
  const bool attention_bias = get_bool(j, "attention_bias", false, origin);
  const bool mlp_bias = get_bool(j, "mlp_bias", false, origin);
  if (c.model_type == "llama" || gemma2) {
    c.qkv_bias = c.o_bias = attention_bias;
    TESSERA_CHECK(!gemma2 || !mlp_bias, origin,
                  ": mlp_bias=true is not supported for model_type='gemma2' (its MLP has no "
                  "biases)");
    c.mlp_bias = mlp_bias;
  } else {
    TESSERA_CHECK(!mlp_bias, origin, ": mlp_bias=true is not supported for model_type='",
                  c.model_type, "' (its MLP has no biases)");
    c.qkv_bias = c.model_type == "qwen2";
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
    } else if (gemma2) {
      // Gemma2DecoderLayer: the even layers slide, the odd ones attend globally.
      for (size_t i = 0; i < c.layer_windows.size(); i += 2) c.layer_windows[i] = window;
    } else if (c.model_type == "qwen2" && get_bool(j, "use_sliding_window", false, origin)) {
      const int64_t first = get_int(j, "max_window_layers", origin, c.num_hidden_layers);
      TESSERA_CHECK(first >= 0, origin, ": max_window_layers must be >= 0, got ", first);
      for (int64_t i = first; i < c.num_hidden_layers; ++i) c.layer_windows[i] = window;
    }
  }
  if (gemma2) {
    // An absent key takes Gemma2Config's default; null switches the cap off.
    auto cap = [&](const char* key, double fallback) {
      if (!j.contains(key)) return fallback;
      if (j[key].is_null()) return 0.0;
      const double v = get_double(j, key, fallback, origin);
      TESSERA_CHECK(std::isfinite(v) && v > 0, origin, ": config field '", key,
                    "' must be a positive number or null, got ", j[key].dump());
      return v;
    };
    c.attn_logit_softcapping = cap("attn_logit_softcapping", 50.0);
    c.final_logit_softcapping = cap("final_logit_softcapping", 30.0);
    c.query_pre_attn_scalar = get_double(j, "query_pre_attn_scalar", 224.0, origin);
    TESSERA_CHECK(c.query_pre_attn_scalar > 0, origin,
                  ": config field 'query_pre_attn_scalar' must be positive, got ",
                  c.query_pre_attn_scalar);
    c.embedding_multiplier = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
    c.norm_weight_offset = true;
    c.sandwich_norms = true;
  } else {
    for (const char* key : {"attn_logit_softcapping", "final_logit_softcapping"}) {
      TESSERA_CHECK(!j.contains(key) || j[key].is_null(), origin, ": config field '", key,
                    "'=", j.contains(key) ? j[key].dump() : "",
                    " is not supported for model_type='", c.model_type,
                    "' (only gemma2 soft-caps)");
    }
  }
  c.validate();
  return c;
}

const char* activation_name(Activation act) {
  switch (act) {
    case Activation::kSilu:
      return "silu";
    case Activation::kGelu:
      return "gelu";
    case Activation::kGeluTanh:
      return "gelu_pytorch_tanh";
  }
  return "?";
}

const char* rope_type_name(RopeScaling::Type type) {
  switch (type) {
    case RopeScaling::Type::kDefault:
      return "default";
    case RopeScaling::Type::kLinear:
      return "linear";
    case RopeScaling::Type::kDynamic:
      return "dynamic";
    case RopeScaling::Type::kLlama3:
      return "llama3";
    case RopeScaling::Type::kYarn:
      return "yarn";
  }
  return "?";
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
  TESSERA_CHECK(num_hidden_layers > 0 && num_hidden_layers <= kMaxLayers,
                "num_hidden_layers must be in [1, ", kMaxLayers, "], got ", num_hidden_layers);
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
  TESSERA_CHECK(!o_bias || qkv_bias, "o_bias without qkv_bias is not a known family layout");
  TESSERA_CHECK(static_cast<int64_t>(layer_windows.size()) == num_hidden_layers,
                "layer_windows has ", layer_windows.size(), " entries, expected ",
                num_hidden_layers);
}

void ModelConfig::check_tensor_parallel(int tp) const {
  TESSERA_CHECK(tp >= 1, "tensor-parallel size must be positive, got ", tp);
  TESSERA_CHECK(num_attention_heads % tp == 0, "num_attention_heads=", num_attention_heads,
                " is not divisible by ", tp, " tensor-parallel ranks");
  TESSERA_CHECK(num_key_value_heads % tp == 0 || tp % num_key_value_heads == 0,
                "num_key_value_heads=", num_key_value_heads, " is not divisible by ", tp,
                " tensor-parallel ranks (nor a divisor of it, for decode context parallel)");
  TESSERA_CHECK(intermediate_size % tp == 0, "intermediate_size=", intermediate_size,
                " is not divisible by ", tp, " tensor-parallel ranks");
}

int ModelConfig::decode_context_parallel(int tp) const {
  check_tensor_parallel(tp);
  return tp > num_key_value_heads ? static_cast<int>(tp / num_key_value_heads) : 1;
}

int64_t ModelConfig::derived_max_model_len() const {
  switch (rope_scaling.type) {
    case RopeScaling::Type::kLinear:
    case RopeScaling::Type::kDynamic:
    case RopeScaling::Type::kYarn:
      return static_cast<int64_t>(static_cast<double>(max_position_embeddings) *
                                  rope_scaling.factor);
    default:
      return max_position_embeddings;
  }
}

double ModelConfig::attention_scale() const {
  if (query_pre_attn_scalar > 0) return 1.0 / std::sqrt(query_pre_attn_scalar);
  return 1.0 / std::sqrt(static_cast<double>(head_dim));
}

int64_t ModelConfig::num_params() const {
  // The same sum in double first: huge (valid) dimensions would overflow int64, undefined
  // behaviour (a fuzzer's find: hidden_size 409633330000).
  {
    const double h = static_cast<double>(hidden_size), i = static_cast<double>(intermediate_size);
    const double qd = static_cast<double>(num_attention_heads) * static_cast<double>(head_dim);
    const double kvd = static_cast<double>(num_key_value_heads) * static_cast<double>(head_dim);
    const double layer = h * (qd + 2 * kvd) + qd * h + 3 * h * i + 4 * h + qd + 2 * kvd + 2 * i;
    const double total = static_cast<double>(num_hidden_layers) * layer +
                         2 * static_cast<double>(vocab_size) * h + h;
    TESSERA_CHECK(total < 0x1p62, "config describes about ", total,
                  " parameters, more than this build counts (2^62)");
  }
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  int64_t per_layer = hidden_size * (q + 2 * kv) + q * hidden_size +
                      3 * hidden_size * intermediate_size + (sandwich_norms ? 4 : 2) * hidden_size;
  if (qkv_bias) per_layer += q + 2 * kv;
  if (o_bias) per_layer += hidden_size;
  if (mlp_bias) per_layer += 2 * intermediate_size + hidden_size;
  const int64_t embed = vocab_size * hidden_size;
  return num_hidden_layers * per_layer + embed * (tie_word_embeddings ? 1 : 2) + hidden_size;
}

std::string ModelConfig::to_json_text() const {
  nlohmann::ordered_json j;
  const bool qwen = model_type == "qwen2";
  const bool gemma2 = model_type == "gemma2";
  j["architectures"] = {
      qwen     ? "Qwen2ForCausalLM"
      : gemma2 ? "Gemma2ForCausalLM"
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
  j["hidden_act"] = hidden_act == Activation::kSilu
                        ? "silu"
                        : (hidden_act == Activation::kGelu ? "gelu" : "gelu_pytorch_tanh");
  if (!qwen) j["attention_bias"] = qkv_bias;
  if (model_type == "llama") j["mlp_bias"] = mlp_bias;
  if (rope_scaling.type != RopeScaling::Type::kDefault) {
    nlohmann::ordered_json r;
    r["rope_type"] = rope_type_name(rope_scaling.type);
    r["factor"] = rope_scaling.factor;
    if (rope_scaling.type == RopeScaling::Type::kLlama3) {
      r["low_freq_factor"] = rope_scaling.low_freq_factor;
      r["high_freq_factor"] = rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    if (rope_scaling.type == RopeScaling::Type::kYarn) {
      r["beta_fast"] = rope_scaling.beta_fast;
      r["beta_slow"] = rope_scaling.beta_slow;
      if (rope_scaling.attention_factor) r["attention_factor"] = *rope_scaling.attention_factor;
    }
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_ids.size() == 1 ? nlohmann::ordered_json(eos_token_ids[0])
                                                : nlohmann::ordered_json(eos_token_ids);
  j["torch_dtype"] = torch_dtype.empty() ? "float32" : torch_dtype;
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
  if (gemma2) {
    auto or_null = [](double v) {
      return v > 0 ? nlohmann::ordered_json(v) : nlohmann::ordered_json();
    };
    j["hidden_activation"] = j["hidden_act"];
    j["attn_logit_softcapping"] = or_null(attn_logit_softcapping);
    j["final_logit_softcapping"] = or_null(final_logit_softcapping);
    j["query_pre_attn_scalar"] = query_pre_attn_scalar;
  }
  return j.dump(2);
}

}  // namespace tessera::models
