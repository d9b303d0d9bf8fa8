// The regular expressions of tokenizer.json (Split and Replace patterns, the GPT-2 pattern of
// ByteLevel), run by PCRE2 with its JIT. The Rust crate runs them with Oniguruma, whose Unicode
// classes differ from PCRE2's in places; patterns are rewritten so PCRE2 matches what Oniguruma
// matches (see translate_oniguruma in regex.cpp).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::tokenizers {

struct Match {
  size_t start, end;  // byte offsets
};

class Regex {
 public:
  // Throws tessera::Error naming the pattern when PCRE2 refuses it.
  explicit Regex(const std::string& pattern);
  static Regex literal(const std::string& text);  // matches `text` exactly
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Every match, left to right, as Oniguruma's iterator in the Rust `onig` crate yields them (an
  // empty match right after the previous match is skipped). `text` must be valid UTF-8.
  void find_all(std::string_view text, std::vector<Match>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string pattern_;
};

// The pattern rewritten for PCRE2 (exposed for tests).
std::string translate_oniguruma(const std::string& pattern);

}  // namespace tessera::tokenizers
