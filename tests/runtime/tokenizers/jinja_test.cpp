// Chat-template failures name the template line; templates load from model folders.
// (Renderings are compared with transformers' jinja2 in chat_template_test.)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "runtime/tokenizers/chat_template.h"

namespace tessera::tokenizers {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::string& source, const nlohmann::json& messages = {}) {
  try {
    ChatTemplate::from_string(source).render(
        messages.is_null() ? nlohmann::json::array() : messages, false);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(ChatTemplateErrors, NameTheLine) {
  EXPECT_EQ(error_of("a\nb\n{% frobnicate %}"), "chat template line 3: unknown tag 'frobnicate'");
  EXPECT_EQ(error_of("{{ x | shout }}"), "chat template line 1: no filter named 'shout'");
  EXPECT_EQ(error_of("\n{% if x is frozen %}{% endif %}"),
            "chat template line 2: no test named 'frozen'");
  EXPECT_EQ(error_of("{% include 'other.jinja' %}"),
            "chat template line 1: the 'include' tag is not supported in chat templates");
  EXPECT_EQ(error_of("{% for m in messages %}\n{{ m }}"),
            "chat template line 2: unexpected end of template, expected 'endfor'");
  EXPECT_EQ(error_of("{{ (1 + }}"), "chat template line 1: unexpected '}', expected ')'");
  EXPECT_EQ(error_of("x\n{{ raise_exception('Only user roles') }}"),
            "chat template line 2: raise_exception: Only user roles");
  EXPECT_EQ(error_of("{{ messages[0].content.strip() }}", nlohmann::json::array({{{"role", "u"}}})),
            "chat template line 1: 'dict object' has no attribute 'content'");
  EXPECT_EQ(error_of("{{ 'a' + 1 }}"),
            "chat template line 1: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(error_of("{{ [].append(1) }}"),
            "chat template line 1: access to attribute 'append' of 'list' object is unsafe");
}

// Hostile templates and messages end in one error, not a stack overflow.
TEST(ChatTemplateErrors, DeepNestingAndRecursionAreRefused) {
  EXPECT_EQ(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"),
            "chat template line 1: the template nests deeper than 200 levels");
  std::string ifs;
  for (int i = 0; i < 1000; ++i) ifs += "{% if true %}";
  EXPECT_EQ(error_of(ifs), "chat template line 1: the template nests deeper than 200 levels");
  EXPECT_EQ(error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "chat template line 1: maximum recursion depth exceeded in macro 'f'");
  nlohmann::json deep = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) deep = nlohmann::json::array({deep});
  EXPECT_EQ(error_of("{{ messages }}", deep), "chat messages nest deeper than 128 levels");
}

std::string render(const std::string& source) {
  return ChatTemplate::from_string(source).render(nlohmann::json::array(), false);
}

// Namespaces are the one value a template changes after making it: one may hold itself (the
// fuzzer's stack overflow in repr) or head a chain as long as a loop makes it. Printing follows
// Python (jinja2 gives the same strings); nothing recurses without bound, nothing leaks (ASan's
// leak check in the fuzz and sanitizer builds).
TEST(ChatTemplateErrors, NamespacesThatHoldThemselvesOrChainAreSafe) {
  EXPECT_EQ(render("{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns }}"),
            "<Namespace {'a': <Namespace {...}>}>");
  EXPECT_EQ(render("{% set ns = namespace(a=1) %}{% set ns.a = [ns, (ns,)] %}{{ ns }}|{{ ns.a }}"),
            "<Namespace {'a': [<Namespace {...}>, (<Namespace {...}>,)]}>|[<Namespace {'a': "
            "[...]}>, (<Namespace {'a': [...]}>,)]");
  EXPECT_EQ(render("{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns == ns.a }}"), "True");
  EXPECT_EQ(error_of("{% set ns = namespace(a=1) %}{{ ns | tojson }}"),
            "chat template line 1: Object of type Namespace is not JSON serializable");
  // A chain of 100,000 namespaces: made, read and freed without a deep recursion.
  EXPECT_EQ(render("{% set h = namespace(x=none) %}{% for i in range(100000) %}"
                   "{% set h.x = namespace(p=h.x, i=i) %}{% endfor %}{{ h.x.p.i }}"),
            "99998");
  // Printing it is refused (Python: RecursionError), as is a list nested past the limit.
  EXPECT_EQ(error_of("{% set h = namespace(x=none) %}{% for i in range(1000) %}"
                     "{% set h.x = namespace(p=h.x) %}{% endfor %}{{ h }}"),
            "chat template line 1: a value to print nests deeper than 256 levels");
  EXPECT_EQ(error_of("{% set h = namespace(x=[]) %}{% for i in range(1000) %}"
                     "{% set h.x = [h.x] %}{% endfor %}"),
            "chat template line 1: a list nests deeper than 256 levels");
}

TEST(ChatTemplateFolder, ReadsTokenizerConfig) {
  char tmpl[] = "/tmp/tessera_chat_folder_XXXXXX";
  const fs::path dir = mkdtemp(tmpl);
  std::ofstream(dir / "tokenizer_config.json") << R"({
    "bos_token": {"content": "<B>", "lstrip": false}, "eos_token": "<E>",
    "chat_template": [{"name": "tool_use", "template": "tools"},
                      {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}]})";
  const auto t = ChatTemplate::from_folder(dir.string());
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.render(nlohmann::json::parse(R"([{"role":"user","content":"hi"}])"), true),
            "<B>hi<E>");
  EXPECT_EQ(t.render(nlohmann::json::array(), true, {{"bos_token", "[x]"}}), "[x]");

  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<E>"})";
  const auto none = ChatTemplate::from_folder(dir.string());
  EXPECT_TRUE(none.empty());
  EXPECT_THROW(none.render(nlohmann::json::array(), true), Error);

  std::ofstream(dir / "chat_template.jinja") << "{% if %}";
  try {
    ChatTemplate::from_folder(dir.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("chat_template.jinja: chat template line 1"), std::string::npos)
        << e.message();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tessera::tokenizers
