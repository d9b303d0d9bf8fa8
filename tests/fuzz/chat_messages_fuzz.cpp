// Chat messages from the network (the "messages" of /v1/chat/completions, any JSON a client
// sends) rendered by fixed public chat templates (tests/fuzz_corpus/chat_template/: LLaMA 3, 3.2,
// Mistral, Qwen2, Gemma and the constructs chat_template_test checks against jinja2). Properties:
// every rendering gives a string or a tessera::Error (a template's raise_exception, a missing
// field, a wrong type), never another exception, a crash or undefined behaviour; the rendering is
// deterministic.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "common/error.h"
#include "runtime/tokenizers/chat_template.h"
#include "tests/fuzz/fuzz_target.h"

using nlohmann::ordered_json;
using tessera::tokenizers::ChatTemplate;

namespace {
const std::map<std::string, ChatTemplate>& templates() {
  static const auto all = [] {
    std::map<std::string, ChatTemplate> m;
    const auto specials =
        ordered_json::parse(R"({"bos_token":"<s>","eos_token":"</s>","unk_token":"<unk>"})");
    for (const auto& e :
         std::filesystem::directory_iterator(TESSERA_FUZZ_CORPUS_DIR "/chat_template")) {
      if (e.path().extension() != ".jinja") continue;
      std::ifstream in(e.path());
      std::stringstream ss;
      ss << in.rdbuf();
      m[e.path().stem().string()] = ChatTemplate::from_string(ss.str(), specials);
    }
    TESSERA_FUZZ_ASSERT(m.size() >= 6, "tests/fuzz_corpus/chat_template/ holds " +
                                           std::to_string(m.size()) + " templates");
    return m;
  }();
  return all;
}
}  // namespace

TESSERA_FUZZ_TARGET(chat_messages) {
  const auto messages = ordered_json::parse(data, data + size, nullptr, false);
  if (messages.is_discarded()) return 0;
  for (const auto& [name, tpl] : templates()) {
    for (bool gen : {false, true}) {
      std::string first;
      try {
        first = tpl.render(messages, gen);
      } catch (const tessera::Error&) {
        continue;
      }
      TESSERA_FUZZ_ASSERT(tpl.render(messages, gen) == first,
                          name + ": two renderings of the same messages differ");
    }
  }
  return 0;
}
