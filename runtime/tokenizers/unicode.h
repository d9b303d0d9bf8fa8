// UTF-8 handling and Unicode character classes for the tokenizers, from ICU's data (never from
// tables written here). Each class says which definition of the Rust `tokenizers` crate (or of
// Python, for the chat templates) it reproduces.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera::tokenizers::unicode {

// Decodes the code point at s[i] and advances i. The input must be valid UTF-8.
inline char32_t next_cp(std::string_view s, size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  if (c < 0xE0) {
    const char32_t cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    const char32_t cp = ((c & 0x0Fu) << 12) |
                        ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                        (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return cp;
  }
  const char32_t cp = ((c & 0x07u) << 18) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                      ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                      (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return cp;
}

// Byte length of the UTF-8 sequence that starts with `lead` (1 for a stray continuation byte).
inline size_t seq_len(unsigned char lead) {
  return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void append_utf8(std::string& out, char32_t cp);
std::string to_utf8(char32_t cp);

// What a UTF-8 lead byte says: the sequence's length in bytes (0: not a lead byte, 1: ASCII) and
// the range its second byte must fall in (so no overlong form, surrogate or code point past
// U+10FFFF is valid); the bytes after the second are 0x80-0xBF.
struct Utf8Lead {
  uint8_t length;
  unsigned char lo, hi;
};
inline Utf8Lead utf8_lead(unsigned char c) {
  if (c < 0x80) return {1, 0x80, 0xBF};
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c >= 0xE0 && c <= 0xEF) {
    return {3, static_cast<unsigned char>(c == 0xE0 ? 0xA0 : 0x80),
            static_cast<unsigned char>(c == 0xED ? 0x9F : 0xBF)};
  }
  if (c >= 0xF0 && c <= 0xF4) {
    return {4, static_cast<unsigned char>(c == 0xF0 ? 0x90 : 0x80),
            static_cast<unsigned char>(c == 0xF4 ? 0x8F : 0xBF)};
  }
  return {0, 0x80, 0xBF};
}

bool is_valid_utf8(std::string_view s);
// Invalid sequences become U+FFFD, one per maximal subpart (Unicode's recommended practice, which
// Rust's String::from_utf8_lossy and Python's bytes.decode(errors="replace") both follow).
std::string to_valid_utf8(std::string_view bytes);
// Length of the longest prefix of `s` that does not end inside an incomplete (but so far valid)
// UTF-8 sequence: what a stream may emit before it knows the next bytes.
size_t complete_utf8_prefix(std::string_view s);

// --- Character classes --------------------------------------------------------------------
// The Rust crate takes general categories from the crate unicode_categories (Unicode 8.0 data)
// and normalization and combining marks from unicode-normalization-alignments (Unicode 9.0);
// Rust's std (whitespace, numeric, case) is current. ICU has current data, so the classes below
// that stand for those crates keep only characters ICU says were assigned by that version
// (u_charAge), which reproduces the crate for every code point but a handful whose category
// changed later (listed in tokenizers_test).

bool is_whitespace(char32_t c);   // Rust char::is_whitespace: White_Space
bool is_numeric(char32_t c);      // Rust char::is_numeric: Nd, Nl, No
bool is_alphabetic(char32_t c);   // Alphabetic
bool is_punctuation(char32_t c);  // any P* category, as of Unicode 8.0
bool is_ascii_punctuation(char32_t c);
bool is_other(char32_t c);               // Cc, Co, Cs, or Cf as of Unicode 8.0 (never Cn)
bool is_mark_nonspacing(char32_t c);     // Mn, as of Unicode 8.0 (unicode_categories)
bool is_combining_mark(char32_t c);      // Mn, Mc, Me, as of Unicode 9.0
bool is_regex_word(char32_t c);          // Rust regex \w: Alphabetic, M*, Nd, Pc, Join_Control
bool is_cjk_ideograph_bert(char32_t c);  // the blocks BertNormalizer pads with spaces
bool py_isspace(char32_t c);             // Python str.isspace: Zs, or bidi class WS, B or S

// --- Transformations ------------------------------------------------------------------------
enum class NormForm { kNFC, kNFD, kNFKC, kNFKD };
// `s` must be valid UTF-8. Characters assigned after Unicode 9.0 pass unchanged, as in the crate.
std::string normalize(std::string_view s, NormForm form);
// Rust char::to_lowercase applied to each char (no final-sigma context), as the crate's
// Lowercase normalizer does.
void append_lowercase_char(std::string& out, char32_t c);
// Python str.lower()/upper()/title()/capitalize() (full case mappings, final sigma in lower).
std::string py_lower(std::string_view s);
std::string py_upper(std::string_view s);
std::string py_title(std::string_view s);
std::string py_capitalize(std::string_view s);

}  // namespace tessera::tokenizers::unicode
