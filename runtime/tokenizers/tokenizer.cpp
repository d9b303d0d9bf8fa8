#include "runtime/tokenizers/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "runtime/tokenizers/added_vocabulary.h"
#include "runtime/tokenizers/byte_tokenizer.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TESSERA_CHECK(in.good(), "cannot read '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json parse_json(const std::string& text, const std::string& origin) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL(origin, " is not valid JSON: ", e.what());
  }
}

std::vector<AddedToken> parse_added_tokens(const Field& list) {
  std::vector<AddedToken> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const Field t = list.element(i);
    t.expect_object();
    t.at("id").integer();  // required by the format, though ids are recomputed (see add())
    AddedToken a;
    a.content = t.at("content").str();
    a.special = t.bool_or("special", false);
    a.single_word = t.bool_or("single_word", false);
    a.lstrip = t.bool_or("lstrip", false);
    a.rstrip = t.bool_or("rstrip", false);
    a.normalized = t.bool_or("normalized", !a.special);
    out.push_back(std::move(a));
  }
  return out;
}

// A special token in tokenizer_config.json: "<s>", or {"content": "<s>", ...}, or null.
std::optional<std::string> config_token(const nlohmann::json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  TESSERA_FAIL("tokenizer_config.json: field '", key,
               "' must be a string or {\"content\": ...}, got ", describe_json(*it));
}

std::vector<int32_t> config_ids(const nlohmann::json& cfg, const char* key,
                                const std::string& file) {
  std::vector<int32_t> ids;
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return ids;
  auto one = [&](const nlohmann::json& v) {
    TESSERA_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
                  file, ": field '", key, "' must be a token id or a list of them, got ",
                  describe_json(v));
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  };
  if (it->is_array()) {
    for (const auto& v : *it) one(v);
  } else {
    one(*it);
  }
  return ids;
}

nlohmann::json read_json_if_exists(const fs::path& p) {
  if (!fs::exists(p)) return nlohmann::json::object();
  auto j = parse_json(read_file(p.string()), p.string());
  TESSERA_CHECK(j.is_object(), p.string(), " must hold a JSON object, got ", j.type_name());
  return j;
}

// Nesting deeper than any real tokenizer.json (whose Sequences nest a few levels) is refused
// before the recursive section readers could exhaust the stack.
void check_depth(const nlohmann::json& j, const std::string& origin) {
  constexpr size_t kMaxDepth = 64;
  std::vector<std::pair<const nlohmann::json*, size_t>> stack{{&j, 1}};
  while (!stack.empty()) {
    auto [v, depth] = stack.back();
    stack.pop_back();
    TESSERA_CHECK(depth <= kMaxDepth, origin, ": JSON nesting is deeper than ", kMaxDepth,
                  " levels");
    if (v->is_structured()) {
      for (const auto& child : *v) {
        if (child.is_structured()) stack.push_back({&child, depth + 1});
      }
    }
  }
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path) {
  TESSERA_CHECK(fs::is_regular_file(path), "tokenizer file '", path, "' does not exist");
  return from_json_text(read_file(path), path);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json_text(const std::string& text,
                                                     const std::string& origin) {
  const nlohmann::json j = parse_json(text, origin);
  check_depth(j, origin);
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  try {
    const Field root(j, "");
    root.expect_object();
    if (auto v = root.optional("version"); v && v->str() != "1.0") {
      v->fail("must be \"1.0\" (the only tokenizer.json version)");
    }
    static const nlohmann::json kNull;
    auto section = [&](const char* key) {
      return root.has(key) ? root.at(key) : Field(kNull, key);
    };
    t->model_ = make_model(root.at("model"));
    t->normalizer_ = make_normalizer(section("normalizer"));
    t->pre_tokenizer_ = make_pre_tokenizer(section("pre_tokenizer"));
    t->post_processor_ = make_post_processor(section("post_processor"));
    t->decoder_ = make_decoder(section("decoder"));
    t->holds_byte_runs_ = t->decoder_ && t->decoder_->holds_invalid_byte_runs();
    t->added_ = std::make_unique<AddedVocabulary>();
    std::vector<AddedToken> added;
    if (auto a = root.optional("added_tokens")) added = parse_added_tokens(*a);
    t->added_->add(added, *t->model_, t->normalizer_.get());
  } catch (const Error& e) {
    TESSERA_FAIL(origin, ": ", e.message());
  }
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::byte_tokenizer() {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->byte_mode_ = true;
  t->bos_id_ = static_cast<int32_t>(ByteTokenizer::kBos);
  t->eos_ids_ = {static_cast<int32_t>(ByteTokenizer::kEos)};
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::from_folder(const std::string& dir) {
  const fs::path d(dir);
  TESSERA_CHECK(fs::is_directory(d), "model folder '", dir, "' does not exist");
  if (fs::exists(d / "tokenizer.json")) {
    auto t = from_file((d / "tokenizer.json").string());
    t->load_folder_config(dir);
    return t;
  }
  for (const char* other : {"tokenizer.model", "vocab.json", "vocab.txt", "spiece.model"}) {
    TESSERA_CHECK(!fs::exists(d / other), "model folder '", dir, "' has ", other,
                  " but no tokenizer.json; Tessera reads tokenizer.json (transformers writes one "
                  "with AutoTokenizer.from_pretrained(...).save_pretrained(dir))");
  }
  return byte_tokenizer();
}

void Tokenizer::load_folder_config(const std::string& dir) {
  const fs::path d(dir);
  const auto cfg = read_json_if_exists(d / "tokenizer_config.json");
  const auto gen = read_json_if_exists(d / "generation_config.json");
  const auto model_cfg = read_json_if_exists(d / "config.json");
  auto id_of = [&](const std::optional<std::string>& tok,
                   const char* key) -> std::optional<int32_t> {
    if (!tok) return std::nullopt;
    auto id = token_to_id(*tok);
    TESSERA_CHECK(id.has_value(), (d / "tokenizer_config.json").string(), ": field '", key,
                  "' names token '", *tok, "' that the tokenizer does not know");
    return id;
  };
  const auto bos = config_token(cfg, "bos_token");
  const auto eos = config_token(cfg, "eos_token");
  bos_id_ = id_of(bos, "bos_token");
  if (!bos_id_) {
    auto ids = config_ids(model_cfg, "bos_token_id", (d / "config.json").string());
    if (!ids.empty()) bos_id_ = ids[0];
  }
  eos_ids_.clear();
  if (auto e = id_of(eos, "eos_token")) eos_ids_.push_back(*e);
  auto add_eos = [&](const std::vector<int32_t>& ids) {
    for (int32_t id : ids) {
      if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) eos_ids_.push_back(id);
    }
  };
  add_eos(config_ids(gen, "eos_token_id", (d / "generation_config.json").string()));
  if (eos_ids_.empty())
    add_eos(config_ids(model_cfg, "eos_token_id", (d / "config.json").string()));

  // transformers' Llama and Gemma tokenizers rebuild the post-processor from add_bos_token and
  // add_eos_token (defaults true and false) whatever tokenizer.json says.
  static const char* kRebuilding[] = {"LlamaTokenizer",     "LlamaTokenizerFast",
                                      "CodeLlamaTokenizer", "CodeLlamaTokenizerFast",
                                      "GemmaTokenizer",     "GemmaTokenizerFast"};
  auto cls = cfg.find("tokenizer_class");
  if (cls != cfg.end() && cls->is_string() &&
      std::find(std::begin(kRebuilding), std::end(kRebuilding), cls->get<std::string>()) !=
          std::end(kRebuilding)) {
    auto flag = [&](const char* key, bool def) {
      auto it = cfg.find(key);
      if (it == cfg.end() || it->is_null()) return def;
      TESSERA_CHECK(it->is_boolean(), "tokenizer_config.json: field '", key,
                    "' must be a boolean, got ", describe_json(*it));
      return it->get<bool>();
    };
    const bool add_bos = flag("add_bos_token", true), add_eos_tok = flag("add_eos_token", false);
    TESSERA_CHECK(!add_bos || bos_id_,
                  "tokenizer_config.json: add_bos_token is true but "
                  "bos_token is not set");
    TESSERA_CHECK(!add_eos_tok || !eos_ids_.empty(),
                  "tokenizer_config.json: add_eos_token is "
                  "true but eos_token is not set");
    std::vector<int32_t> prefix, suffix;
    if (add_bos) prefix.push_back(*bos_id_);
    if (add_eos_tok) suffix.push_back(eos_ids_[0]);
    post_processor_ = make_affix_processor(std::move(prefix), std::move(suffix));
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (!unicode::is_valid_utf8(text)) {
    repaired = unicode::to_valid_utf8(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  if (byte_mode_) {
    ids.reserve(text.size() + 1);
    if (add_special_tokens) ids.push_back(static_cast<int32_t>(ByteTokenizer::kBos));
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  }
  Pieces pieces;
  added_->split(text, normalizer_.get(), pieces);
  if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
  ids.reserve(text.size() / 3 + 4);
  for (const auto& p : pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      model_->tokenize(p.text, ids);
    }
  }
  if (post_processor_) post_processor_->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  if (byte_mode_) {
    std::string bytes;
    for (int32_t id : ids) {
      if (id >= 0 && id < 256) {
        bytes.push_back(static_cast<char>(id));
      } else if (!skip_special_tokens && id == ByteTokenizer::kBos) {
        bytes += "<bos>";
      } else if (!skip_special_tokens && id == ByteTokenizer::kEos) {
        bytes += "<eos>";
      }
    }
    return unicode::to_valid_utf8(bytes);
  }
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* s = nullptr;
    if (const AddedToken* a = added_->by_id(id)) {
      s = &a->content;
    } else {
      s = model_->id_to_token(id);
    }
    if (!s) continue;
    if (skip_special_tokens && added_->is_special(*s)) continue;
    tokens.push_back(*s);
  }
  std::string out;
  if (decoder_) {
    decoder_->decode_chain(tokens);
    for (const auto& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
  }
  return out;
}

int32_t Tokenizer::vocab_size() const {
  if (byte_mode_) return static_cast<int32_t>(ByteTokenizer::kVocabSize);
  // The post-processor's ids too: a tokenizer.json may give its special tokens ids past both
  // (as the `tokenizers` crate, encode returns them).
  const int32_t post = post_processor_ ? post_processor_->max_id() : -1;
  return std::max({model_->max_id(), added_->max_id(), post}) + 1;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (byte_mode_) {
    if (token == "<bos>") return static_cast<int32_t>(ByteTokenizer::kBos);
    if (token == "<eos>") return static_cast<int32_t>(ByteTokenizer::kEos);
    return std::nullopt;
  }
  if (auto id = added_->token_to_id(token)) return id;
  return model_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (byte_mode_) {
    if (id == ByteTokenizer::kBos) return "<bos>";
    if (id == ByteTokenizer::kEos) return "<eos>";
    if (id < 0 || id >= 256) return std::nullopt;
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", id);
    return std::string(buf);
  }
  if (const AddedToken* a = added_->by_id(id)) return a->content;
  if (const std::string* s = model_->id_to_token(id)) return *s;
  return std::nullopt;
}

bool Tokenizer::decode_is_prefix_stable() const {
  return byte_mode_ || (decoder_ && decoder_->prefix_stable());
}

int Tokenizer::held_fallback_byte(int32_t id) const {
  if (!holds_byte_runs_) return -1;
  if (const AddedToken* a = added_->by_id(id)) return byte_fallback_value(a->content);
  const std::string* s = model_->id_to_token(id);
  return s ? byte_fallback_value(*s) : -1;
}

bool Tokenizer::is_special(int32_t id) const {
  if (byte_mode_) return id == ByteTokenizer::kBos || id == ByteTokenizer::kEos;
  auto t = id_to_token(id);
  return t && added_->is_special(*t);
}

}  // namespace tessera::tokenizers
