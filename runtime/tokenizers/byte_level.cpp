#include "runtime/tokenizers/byte_level.h"

#include <array>

#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

struct Tables {
  std::array<std::string, 256> chars;  // byte → UTF-8 of its character
  std::array<int16_t, 512> bytes;      // code point (< 512) → byte, or -1
  Tables() {
    bytes.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      chars[b] = unicode::to_utf8(cp);
      bytes[cp] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

std::string_view byte_char(unsigned char b) { return tables().chars[b]; }

void bytes_to_unicode(std::string_view in, std::string& out) {
  const auto& t = tables();
  out.clear();
  out.reserve(in.size() * 2);
  for (unsigned char b : in) out += t.chars[b];
}

bool unicode_to_bytes(std::string_view token, std::string& out) {
  const auto& t = tables();
  const size_t mark = out.size();
  size_t i = 0;
  while (i < token.size()) {
    const char32_t c = unicode::next_cp(token, i);
    if (c >= 512 || t.bytes[c] < 0) {
      out.resize(mark);
      return false;
    }
    out.push_back(static_cast<char>(t.bytes[c]));
  }
  return true;
}

const Regex& gpt2_regex() {
  static const Regex re(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  return re;
}

}  // namespace tessera::tokenizers
