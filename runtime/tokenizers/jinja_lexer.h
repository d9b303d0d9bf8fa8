// The lexer of the chat-template engine (jinja2 3.1's rules with trim_blocks and lstrip_blocks):
// template text → data and tag tokens, whitespace control applied.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::tokenizers::jinja {

enum class Tok {
  kData,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type;
  std::string text;
  int line;
  int64_t ival = 0;
  double fval = 0;
};

// Throws tessera::Error "chat template line N: ..." on malformed tags.
std::vector<Token> lex(const std::string& source);

[[noreturn]] void fail_at(int line, const std::string& msg);

}  // namespace tessera::tokenizers::jinja
