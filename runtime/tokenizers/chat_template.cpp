#include "runtime/tokenizers/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace tessera::tokenizers {
namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  TESSERA_CHECK(in.good(), "cannot read '", p.string(), "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::ordered_json read_json(const fs::path& p) {
  try {
    return nlohmann::ordered_json::parse(read_text(p));
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL(p.string(), " is not valid JSON: ", e.what());
  }
}

// "chat_template": a string, or [{"name": "default", "template": "..."}, ...].
std::string pick_template(const nlohmann::ordered_json& v, const std::string& file) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    for (const auto& t : v) {
      if (t.is_object() && t.contains("name") && t["name"] == "default" && t.contains("template") &&
          t["template"].is_string()) {
        return t["template"].get<std::string>();
      }
    }
    TESSERA_FAIL(file, ": field 'chat_template' lists no template named \"default\"");
  }
  TESSERA_FAIL(file, ": field 'chat_template' must be a string or a list of {name, template}, got ",
               v.type_name());
}

template <typename J>
std::string render_impl(const jinja::Template& tpl, const jinja::Dict& defaults,
                        const std::string& origin, const J& messages, bool add_generation_prompt,
                        const J& extra) {
  TESSERA_CHECK(!origin.empty(),
                "the model has no chat template (tokenizer_config.json has no "
                "'chat_template')");
  TESSERA_CHECK(messages.is_array(), "chat messages must be a JSON array, got ",
                messages.type_name());
  TESSERA_CHECK(extra.is_null() || extra.is_object(),
                "chat template variables must be a JSON "
                "object, got ",
                extra.type_name());
  jinja::Dict vars = defaults;
  vars.set("messages", jinja::from_json(messages));
  vars.set("tools", jinja::Value::none());
  vars.set("documents", jinja::Value::none());
  vars.set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      vars.set(it.key(), jinja::from_json(it.value()));
    }
  }
  return tpl.render(vars);
}

}  // namespace

ChatTemplate ChatTemplate::from_string(const std::string& source,
                                       const nlohmann::ordered_json& special_tokens) {
  ChatTemplate t;
  t.source_ = source;
  t.origin_ = "chat template";
  t.tpl_ = jinja::Template::parse(source);
  if (special_tokens.is_object()) {
    for (auto it = special_tokens.begin(); it != special_tokens.end(); ++it) {
      t.defaults_.set(it.key(), jinja::from_json(it.value()));
    }
  }
  return t;
}

ChatTemplate ChatTemplate::from_folder(const std::string& dir, const std::string& given,
                                       const std::string& given_origin) {
  const fs::path d(dir);
  nlohmann::ordered_json cfg = nlohmann::ordered_json::object();
  if (fs::exists(d / "tokenizer_config.json")) cfg = read_json(d / "tokenizer_config.json");
  TESSERA_CHECK(cfg.is_object(), (d / "tokenizer_config.json").string(),
                " must hold a JSON object");
  std::string source, origin;
  if (!given.empty()) {
    source = given;
    origin = given_origin.empty() ? "the given chat template" : given_origin;
  } else if (fs::exists(d / "chat_template.jinja")) {
    source = read_text(d / "chat_template.jinja");
    origin = (d / "chat_template.jinja").string();
  } else if (fs::exists(d / "chat_template.json")) {
    const auto j = read_json(d / "chat_template.json");
    TESSERA_CHECK(j.is_object() && j.contains("chat_template"), (d / "chat_template.json").string(),
                  ": field 'chat_template' is missing");
    source = pick_template(j["chat_template"], (d / "chat_template.json").string());
    origin = (d / "chat_template.json").string();
  } else if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
    source = pick_template(cfg["chat_template"], (d / "tokenizer_config.json").string());
    origin = (d / "tokenizer_config.json").string();
  }
  ChatTemplate t;
  if (source.empty()) return t;
  // transformers' special_tokens_map: the special tokens that are set, as strings.
  nlohmann::ordered_json specials = nlohmann::ordered_json::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    if (!cfg.contains(key) || cfg[key].is_null()) continue;
    const auto& v = cfg[key];
    if (v.is_string()) {
      specials[key] = v;
    } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
      specials[key] = v["content"];
    }
  }
  if (cfg.contains("additional_special_tokens") && cfg["additional_special_tokens"].is_array()) {
    nlohmann::ordered_json extra = nlohmann::ordered_json::array();
    for (const auto& v : cfg["additional_special_tokens"]) {
      if (v.is_string()) extra.push_back(v);
      if (v.is_object() && v.contains("content")) extra.push_back(v["content"]);
    }
    if (!extra.empty()) specials["additional_special_tokens"] = extra;
  }
  try {
    t = from_string(source, specials);
  } catch (const Error& e) {
    TESSERA_FAIL(origin, ": ", e.message());
  }
  t.origin_ = origin;
  return t;
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra) const {
  return render_impl(tpl_, defaults_, origin_, messages, add_generation_prompt, extra);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  return render_impl(tpl_, defaults_, origin_, messages, add_generation_prompt, extra);
}

}  // namespace tessera::tokenizers
