// ChatTemplate against transformers' jinja2 rendering: chat_reference.py renders templates that
// use every supported construct, and the public LLaMA 3 / 3.2, Mistral, Qwen2 and Gemma templates,
// on 60 message lists each; this test renders the same and compares byte for byte (and, where
// Python raised, checks that Tessera raises too with the same message).
#include "runtime/tokenizers/chat_template.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "common/error.h"

namespace tessera::tokenizers {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

TEST(ChatTemplateReference, RendersLikeTransformersJinja2) {
  const char* py = std::getenv("TESSERA_VENV_PYTHON");
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  if (!py || !src || !fs::exists(py) ||
      std::system((std::string(py) + " -c 'import transformers, jinja2' 2>/dev/null").c_str()) !=
          0) {
    GTEST_SKIP() << "the test venv (TESSERA_VENV_PYTHON with transformers) is missing";
  }
  char tmpl[] = "/tmp/tessera_chat_ref_XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string cmd =
      std::string(py) + " " + src + "/tests/runtime/tokenizers/chat_reference.py " + dir + " 60";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  const ojson templates = ojson::parse(std::ifstream(fs::path(dir) / "templates.json"));
  const ojson specials = {
      {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}, {"pad_token", "<pad>"}};
  std::map<std::string, ChatTemplate> compiled;
  for (auto it = templates.begin(); it != templates.end(); ++it) {
    compiled[it.key()] = ChatTemplate::from_string(it.value().get<std::string>(), specials);
  }
  std::ifstream in(fs::path(dir) / "cases.jsonl");
  std::string line;
  std::map<std::string, int> count, errors, mismatches;
  int shown = 0;
  while (std::getline(in, line)) {
    const ojson c = ojson::parse(line);
    const std::string name = c["template"].get<std::string>();
    ++count[name];
    std::string got, error;
    try {
      got = compiled.at(name).render(c["messages"], c["add_generation_prompt"].get<bool>(),
                                     c["extra"]);
    } catch (const Error& e) {
      error = e.message();
    }
    bool ok;
    if (c["error"].is_null()) {
      ok = error.empty() && got == c["expected"].get<std::string>();
    } else {
      ++errors[name];
      // "TemplateError: <message>": raise_exception's message must come through.
      std::string want = c["error"].get<std::string>();
      const bool raised = want.rfind("TemplateError: ", 0) == 0;
      want = want.substr(want.find(": ") + 2);
      ok = !error.empty() && (!raised || error.find(want) != std::string::npos);
    }
    if (!ok) {
      ++mismatches[name];
      if (shown++ < 6) {
        ADD_FAILURE() << name << " differs for messages " << c["messages"].dump()
                      << " add_generation_prompt=" << c["add_generation_prompt"] << "\n--- tessera"
                      << (error.empty() ? "" : " (error: " + error + ")") << ":\n"
                      << got << "\n--- jinja2"
                      << (c["error"].is_null() ? ""
                                               : " (error: " + c["error"].get<std::string>() + ")")
                      << ":\n"
                      << (c["expected"].is_null() ? "" : c["expected"].get<std::string>());
      }
    }
  }
  for (const auto& [name, n] : count) {
    std::printf("%-13s %d message lists (%d raise in jinja2 too): %d mismatches\n", name.c_str(), n,
                errors[name], mismatches[name]);
    EXPECT_GE(n, 50) << name;
    EXPECT_EQ(mismatches[name], 0) << name;
  }
  EXPECT_EQ(count.size(), 9u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::tokenizers
