// `tessera tokenize`: a model folder's tokenizer and chat template from the command line, like
// llama.cpp's tokenize tool. Text → ids (or, with --decode, ids → text), one input from --text or
// one per line of --jsonl; --chat renders the chat template on a message list.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/error.h"
#include "launch/cli/commands.h"
#include "runtime/models/model_folder.h"
#include "runtime/tokenizers/chat_template.h"
#include "runtime/tokenizers/tokenizer.h"

namespace tessera::cli {

namespace {

namespace fs = std::filesystem;
using tokenizers::ChatTemplate;
using tokenizers::Tokenizer;

struct TokenizeArgs {
  std::string model = "tiny";
  std::string text, jsonl, chat;
  bool json = false, decode = false, no_special = false, keep_special = false;
};

struct Loaded {
  std::unique_ptr<Tokenizer> tok;
  std::string dir;  // the model folder ("" for a bare tokenizer.json)
};

Loaded load(const std::string& model) {
  Loaded l;
  if (model == "tiny") {
    l.dir = models::ModelFolder::resolve(model).dir();
  } else if (fs::is_regular_file(model)) {
    l.tok = Tokenizer::from_file(model);
    return l;
  } else {
    TESSERA_CHECK(fs::is_directory(model), "--model: '", model,
                  "' is neither a model folder, a tokenizer.json nor 'tiny'");
    l.dir = model;
  }
  l.tok = Tokenizer::from_folder(l.dir);
  return l;
}

std::vector<int32_t> parse_ids(const std::string& s, const Tokenizer& tok, const char* what) {
  std::vector<int32_t> ids;
  std::string t = s;
  for (char& c : t) {
    if (c == '[' || c == ']' || c == ',') c = ' ';
  }
  std::istringstream in(t);
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (...) {
      used = 0;
    }
    TESSERA_CHECK(used == word.size() && v >= 0, what, ": '", word, "' is not a token id");
    TESSERA_CHECK(v < tok.vocab_size(), what, ": token id ", v, " is outside the vocabulary [0, ",
                  tok.vocab_size(), ")");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

nlohmann::json ids_json(const std::vector<int32_t>& ids) { return nlohmann::json(ids); }

std::string ids_line(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s;
}

// One input (text to encode, or ids to decode) → one line of output.
std::string process(const TokenizeArgs& a, const Tokenizer& tok, const std::string& text,
                    const std::vector<int32_t>* ids_in) {
  if (a.decode) {
    const std::string out = tok.decode(*ids_in, !a.keep_special);
    return a.json ? nlohmann::json{{"text", out}}.dump() : out;
  }
  const auto ids = tok.encode(text, !a.no_special);
  if (!a.json) return ids_line(ids);
  nlohmann::json tokens = nlohmann::json::array();
  for (int32_t id : ids) tokens.push_back(tok.id_to_token(id).value_or(""));
  return nlohmann::json{{"ids", ids_json(ids)}, {"tokens", tokens}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::vector<std::string> run_jsonl(const TokenizeArgs& a, const Tokenizer& tok) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (a.jsonl != "-") {
    file.open(a.jsonl);
    TESSERA_CHECK(file.good(), "--jsonl: cannot read '", a.jsonl, "'");
    in = &file;
  }
  std::vector<std::string> out;
  std::string line;
  size_t n = 0;
  while (std::getline(*in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      TESSERA_FAIL("--jsonl: line ", n, " is not valid JSON: ", e.what());
    }
    const std::string where = "--jsonl line " + std::to_string(n);
    if (a.decode) {
      const auto& ids = j.is_object() && j.contains("ids") ? j["ids"] : j;
      TESSERA_CHECK(ids.is_array(), where, ": expected a list of ids or {\"ids\": [...]}");
      const auto parsed = parse_ids(ids.dump(), tok, where.c_str());
      out.push_back(process(a, tok, "", &parsed));
    } else {
      const auto& text = j.is_object() && j.contains("text") ? j["text"] : j;
      TESSERA_CHECK(text.is_string(), where, ": expected a string or {\"text\": \"...\"}");
      out.push_back(process(a, tok, text.get<std::string>(), nullptr));
    }
  }
  return out;
}

std::vector<std::string> run_chat(const TokenizeArgs& a, const Loaded& l) {
  TESSERA_CHECK(!l.dir.empty(),
                "--chat needs --model to be a model folder (the chat template "
                "is in its tokenizer_config.json)");
  std::ifstream in(a.chat);
  TESSERA_CHECK(in.good(), "--chat: cannot read '", a.chat, "'");
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    TESSERA_FAIL("--chat: '", a.chat, "' is not valid JSON: ", e.what());
  }
  // A message list, or {"messages": [...], "add_generation_prompt": bool, other variables...}.
  nlohmann::ordered_json messages = j, extra = nlohmann::ordered_json::object();
  bool add_generation_prompt = true;
  if (j.is_object()) {
    TESSERA_CHECK(j.contains("messages"), "--chat: '", a.chat, "' has no \"messages\"");
    messages = j["messages"];
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() == "add_generation_prompt") {
        TESSERA_CHECK(it->is_boolean(), "--chat: add_generation_prompt must be true or false");
        add_generation_prompt = it->get<bool>();
      } else if (it.key() != "messages") {
        extra[it.key()] = it.value();
      }
    }
  }
  const auto tpl = ChatTemplate::from_folder(l.dir);
  TESSERA_CHECK(!tpl.empty(), "--chat: model folder '", l.dir, "' has no chat template");
  const std::string text = tpl.render(messages, add_generation_prompt, extra);
  if (!a.json) return {text};
  // As transformers' apply_chat_template(tokenize=True): the template writes the special tokens.
  const auto ids = l.tok->encode(text, false);
  return {nlohmann::json{{"text", text}, {"ids", ids_json(ids)}}.dump()};
}

}  // namespace

Command register_tokenize(CLI::App& root) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* app = root.add_subcommand(
      "tokenize",
      "Encode or decode text with a model folder's tokenizer, or render its chat "
      "template");
  app->add_option("--model", args->model,
                  "Model folder (tokenizer.json + tokenizer_config.json), a tokenizer.json, or "
                  "'tiny'")
      ->capture_default_str();
  auto* text =
      app->add_option("--text", args->text, "Text to encode (ids to decode with --decode)");
  auto* jsonl = app->add_option("--jsonl", args->jsonl,
                                "File with one JSON string / {\"text\"} (or, with --decode, list "
                                "of ids / {\"ids\"}) per line; '-' reads stdin");
  auto* chat = app->add_option("--chat", args->chat,
                               "JSON file with a message list (or {\"messages\", "
                               "\"add_generation_prompt\", ...}): print the rendered template");
  text->excludes(jsonl)->excludes(chat);
  jsonl->excludes(chat);
  app->add_flag("--json", args->json, "One JSON object per input");
  app->add_flag("--decode", args->decode, "Ids → text");
  app->add_flag("--no-special", args->no_special, "Encode without the post-processor's tokens");
  app->add_flag("--keep-special", args->keep_special, "Decode special tokens as text too");

  Action action = [args, text, jsonl, chat](launch::World& w) -> int {
    TESSERA_CHECK(text->count() + jsonl->count() + chat->count() == 1,
                  "tokenize needs one of --text, --jsonl or --chat");
    const Loaded l = load(args->model);
    std::vector<std::string> lines;
    if (chat->count()) {
      lines = run_chat(*args, l);
    } else if (jsonl->count()) {
      lines = run_jsonl(*args, *l.tok);
    } else if (args->decode) {
      const auto ids = parse_ids(args->text, *l.tok, "--text");
      lines.push_back(process(*args, *l.tok, "", &ids));
    } else {
      lines.push_back(process(*args, *l.tok, args->text, nullptr));
    }
    if (w.rank == 0) {
      for (const auto& s : lines) std::printf("%s\n", s.c_str());
    }
    return 0;
  };
  return {app, action, false};
}

}  // namespace tessera::cli
