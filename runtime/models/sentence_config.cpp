#include "runtime/models/sentence_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"

namespace tessera::models {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::optional<json> read_json(const fs::path& path) {
  if (!fs::exists(path)) return std::nullopt;
  std::ifstream in(path);
  TESSERA_CHECK(in.good(), "cannot read '", path.string(), "'");
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  TESSERA_CHECK(!j.is_discarded(), "'", path.string(), "' is not valid JSON");
  return j;
}

bool flag(const json& j, const char* key, bool fallback, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  TESSERA_CHECK(j[key].is_boolean(), origin, ": '", key, "' must be true or false, got ",
                j[key].dump());
  return j[key].get<bool>();
}

PoolingConfig read_pooling(const json& j, const std::string& origin) {
  TESSERA_CHECK(j.is_object(), origin, ": must be a JSON object");
  PoolingConfig p;
  p.cls = flag(j, "pooling_mode_cls_token", false, origin);
  p.max = flag(j, "pooling_mode_max_tokens", false, origin);
  p.mean = flag(j, "pooling_mode_mean_tokens", true, origin);
  p.mean_sqrt_len = flag(j, "pooling_mode_mean_sqrt_len_tokens", false, origin);
  p.weighted_mean = flag(j, "pooling_mode_weightedmean_tokens", false, origin);
  p.last_token = flag(j, "pooling_mode_lasttoken", false, origin);
  p.include_prompt = flag(j, "include_prompt", true, origin);
  // The compact form overrides the flags (Pooling(pooling_mode=...)).
  if (j.contains("pooling_mode") && !j["pooling_mode"].is_null()) {
    TESSERA_CHECK(j["pooling_mode"].is_string(), origin, ": 'pooling_mode' must be a string, got ",
                  j["pooling_mode"].dump());
    std::string m = j["pooling_mode"].get<std::string>();
    std::transform(m.begin(), m.end(), m.begin(), [](unsigned char c) { return std::tolower(c); });
    TESSERA_CHECK(m == "cls" || m == "lasttoken" || m == "max" || m == "mean" ||
                      m == "mean_sqrt_len_tokens" || m == "weightedmean",
                  origin, ": pooling_mode='", m,
                  "' is not supported (cls, lasttoken, max, mean, mean_sqrt_len_tokens, "
                  "weightedmean)");
    p.cls = m == "cls";
    p.max = m == "max";
    p.mean = m == "mean";
    p.mean_sqrt_len = m == "mean_sqrt_len_tokens";
    p.weighted_mean = m == "weightedmean";
    p.last_token = m == "lasttoken";
  }
  for (auto& [key, value] : j.items()) {
    const bool known = key == "word_embedding_dimension" || key == "include_prompt" ||
                       key == "pooling_mode" || key == "pooling_mode_cls_token" ||
                       key == "pooling_mode_max_tokens" || key == "pooling_mode_mean_tokens" ||
                       key == "pooling_mode_mean_sqrt_len_tokens" ||
                       key == "pooling_mode_weightedmean_tokens" || key == "pooling_mode_lasttoken";
    TESSERA_CHECK(known, origin, ": '", key, "' is not a pooling setting Tessera knows");
  }
  if (j.contains("word_embedding_dimension") && !j["word_embedding_dimension"].is_null()) {
    TESSERA_CHECK(j["word_embedding_dimension"].is_number_integer(), origin,
                  ": 'word_embedding_dimension' must be an integer");
    p.word_embedding_dimension = j["word_embedding_dimension"].get<int64_t>();
  }
  TESSERA_CHECK(p.modes() > 0, origin, ": no pooling mode is enabled");
  return p;
}

}  // namespace

int PoolingConfig::modes() const {
  return cls + max + mean + mean_sqrt_len + weighted_mean + last_token;
}

std::string PoolingConfig::mode_string() const {
  std::vector<std::string> m;
  if (cls) m.push_back("cls");
  if (max) m.push_back("max");
  if (mean) m.push_back("mean");
  if (mean_sqrt_len) m.push_back("mean_sqrt_len_tokens");
  if (weighted_mean) m.push_back("weightedmean");
  if (last_token) m.push_back("lasttoken");
  std::string out;
  for (size_t i = 0; i < m.size(); ++i) out += (i ? "+" : "") + m[i];
  return out;
}

std::string SentenceConfig::transformer_folder(const std::string& dir) {
  auto modules = read_json(fs::path(dir) / "modules.json");
  if (!modules || !modules->is_array()) return dir;
  for (const auto& m : *modules) {
    if (m.is_object() && m.contains("type") &&
        m["type"] == "sentence_transformers.models.Transformer" && m.contains("path") &&
        m["path"].is_string() && !m["path"].get<std::string>().empty()) {
      return (fs::path(dir) / m["path"].get<std::string>()).string();
    }
  }
  return dir;
}

SentenceConfig SentenceConfig::from_folder(const std::string& dir, int64_t model_max_positions) {
  SentenceConfig c;
  c.transformer_dir = dir;
  const fs::path root(dir);
  if (auto modules = read_json(root / "modules.json")) {
    const std::string origin = (root / "modules.json").string();
    TESSERA_CHECK(modules->is_array(), origin, ": must be a list of modules");
    c.has_modules_json = true;
    c.pooling.mean = false;
    bool transformer = false, pooling = false;
    for (size_t i = 0; i < modules->size(); ++i) {
      const json& m = (*modules)[i];
      TESSERA_CHECK(m.is_object() && m.contains("type") && m["type"].is_string(), origin,
                    ": module ", i, " needs a string 'type'");
      const std::string type = m["type"].get<std::string>();
      const std::string path =
          m.contains("path") && m["path"].is_string() ? m["path"].get<std::string>() : "";
      if (type == "sentence_transformers.models.Transformer") {
        TESSERA_CHECK(i == 0, origin, ": the Transformer module must come first");
        transformer = true;
        if (!path.empty()) c.transformer_dir = (root / path).string();
      } else if (type == "sentence_transformers.models.Pooling") {
        TESSERA_CHECK(transformer && !pooling && !c.normalize, origin,
                      ": Pooling must follow the Transformer module, once");
        pooling = true;
        const fs::path cfg = root / path / "config.json";
        auto pj = read_json(cfg);
        TESSERA_CHECK(pj.has_value(), origin, ": the Pooling module's '", cfg.string(),
                      "' is missing");
        c.pooling = read_pooling(*pj, cfg.string());
      } else if (type == "sentence_transformers.models.Normalize") {
        TESSERA_CHECK(pooling, origin, ": Normalize must follow the Pooling module");
        c.normalize = true;
      } else {
        TESSERA_FAIL(origin, ": module type '", type,
                     "' is not supported (sentence_transformers.models.Transformer, Pooling, "
                     "Normalize)");
      }
    }
    TESSERA_CHECK(transformer, origin, ": no sentence_transformers.models.Transformer module");
    TESSERA_CHECK(pooling, origin, ": no sentence_transformers.models.Pooling module");
  }

  // sentence_bert_config.json sits beside the Transformer module's files.
  const fs::path tdir(c.transformer_dir);
  int64_t max_len = 0;
  if (auto sb = read_json(tdir / "sentence_bert_config.json")) {
    const std::string origin = (tdir / "sentence_bert_config.json").string();
    TESSERA_CHECK(sb->is_object(), origin, ": must be a JSON object");
    if (sb->contains("max_seq_length") && !(*sb)["max_seq_length"].is_null()) {
      TESSERA_CHECK(
          (*sb)["max_seq_length"].is_number_integer() && (*sb)["max_seq_length"].get<int64_t>() > 0,
          origin, ": 'max_seq_length' must be a positive integer, got ",
          (*sb)["max_seq_length"].dump());
      max_len = (*sb)["max_seq_length"].get<int64_t>();
    }
    c.do_lower_case = flag(*sb, "do_lower_case", false, origin);
  }
  if (max_len == 0) {
    // sentence-transformers: min(max_position_embeddings, the tokenizer's model_max_length).
    max_len = model_max_positions;
    if (auto tc = read_json(tdir / "tokenizer_config.json")) {
      if (tc->is_object() && tc->contains("model_max_length") &&
          (*tc)["model_max_length"].is_number()) {
        const double m = (*tc)["model_max_length"].get<double>();
        if (m > 0 && m < static_cast<double>(max_len)) max_len = static_cast<int64_t>(m);
      }
    }
  }
  c.max_seq_length = std::min(max_len, model_max_positions);

  if (auto st = read_json(root / "config_sentence_transformers.json")) {
    const std::string origin = (root / "config_sentence_transformers.json").string();
    TESSERA_CHECK(st->is_object(), origin, ": must be a JSON object");
    if (st->contains("prompts") && !(*st)["prompts"].is_null()) {
      const json& p = (*st)["prompts"];
      TESSERA_CHECK(p.is_object(), origin, ": 'prompts' must map names to strings");
      for (auto& [name, text] : p.items()) {
        TESSERA_CHECK(text.is_string(), origin, ": prompts['", name, "'] must be a string");
        c.prompts[name] = text.get<std::string>();
      }
    }
    if (st->contains("default_prompt_name") && !(*st)["default_prompt_name"].is_null()) {
      TESSERA_CHECK((*st)["default_prompt_name"].is_string(), origin,
                    ": 'default_prompt_name' must be a string");
      c.default_prompt_name = (*st)["default_prompt_name"].get<std::string>();
      TESSERA_CHECK(c.prompts.count(c.default_prompt_name) > 0, origin, ": default_prompt_name '",
                    c.default_prompt_name, "' is not in 'prompts'");
    }
  }
  return c;
}

std::string SentenceConfig::prompt(const std::string& name) const {
  if (name.empty()) {
    return default_prompt_name.empty() ? "" : prompts.at(default_prompt_name);
  }
  auto it = prompts.find(name);
  if (it == prompts.end()) {
    std::string known;
    for (const auto& [k, v] : prompts) known += (known.empty() ? "" : ", ") + k;
    TESSERA_FAIL("prompt name '", name, "' is not among the model's prompts (",
                 known.empty() ? "none" : known, ")");
  }
  return it->second;
}

}  // namespace tessera::models
