#include "runtime/tokenizers/unicode.h"

#include <unicode/bytestream.h>

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/uniset.h>
#include <unicode/unistr.h>
#include <memory>

#include "common/error.h"

namespace tessera::tokenizers::unicode {

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string to_utf8(char32_t cp) {
  std::string s;
  append_utf8(s, cp);
  return s;
}

namespace {

// Number of bytes of the (possibly incomplete) sequence at s[i] that are valid so far, and its
// full length; valid == full for a complete character. valid == 0 for a byte that cannot start
// a character.
struct SeqCheck {
  size_t valid;
  size_t full;
};

SeqCheck check_seq(std::string_view s, size_t i) {
  const Utf8Lead lead = utf8_lead(static_cast<unsigned char>(s[i]));
  if (lead.length == 0) return {0, 1};
  const size_t full = lead.length;
  size_t valid = 1;
  for (size_t k = 1; k < full; ++k) {
    if (i + k >= s.size()) break;
    const auto b = static_cast<unsigned char>(s[i + k]);
    const bool ok = k == 1 ? (b >= lead.lo && b <= lead.hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) break;
    ++valid;
  }
  return {valid, full};
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const auto c = check_seq(s, i);
    if (c.valid != c.full) return false;
    i += c.full;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = check_seq(s, i);
    if (c.valid == c.full) {
      out.append(s.data() + i, c.full);
      i += c.full;
    } else {
      out += "\xEF\xBF\xBD";
      i += c.valid == 0 ? 1 : c.valid;
    }
  }
  return out;
}

size_t complete_utf8_prefix(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t i = n - back;
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) return n;
    if (b >= 0xC0) {
      const auto c = check_seq(s, i);
      // Cut only a sequence that is valid so far and merely unfinished.
      if (c.valid == back && c.full > back) return i;
      return n;
    }
  }
  return n;
}

// --- Character classes ----------------------------------------------------------------------

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto mask = U_GET_GC_MASK(static_cast<UChar32>(c));
  return (mask & (U_GC_ND_MASK | U_GC_NL_MASK | U_GC_NO_MASK)) != 0;
}

bool is_alphabetic(char32_t c) {
  if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC);
}

bool is_ascii_punctuation(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}

namespace {

// Whether `c` was assigned by Unicode major.minor.
bool assigned_by(char32_t c, uint8_t major, uint8_t minor) {
  UVersionInfo v;
  u_charAge(static_cast<UChar32>(c), v);
  return v[0] < major || (v[0] == major && v[1] <= minor);
}

}  // namespace

bool is_punctuation(char32_t c) {
  if (c < 0x80) return is_ascii_punctuation(c);
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_P_MASK) != 0 && assigned_by(c, 8, 0);
}

bool is_other(char32_t c) {
  const auto mask = U_GET_GC_MASK(static_cast<UChar32>(c));
  if (mask & (U_GC_CC_MASK | U_GC_CO_MASK | U_GC_CS_MASK)) return true;
  return (mask & U_GC_CF_MASK) != 0 && assigned_by(c, 8, 0);
}

bool is_mark_nonspacing(char32_t c) {
  if (c < 0x80) return false;
  return u_charType(static_cast<UChar32>(c)) == U_NON_SPACING_MARK && assigned_by(c, 8, 0);
}

bool is_combining_mark(char32_t c) {
  if (c < 0x80) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_M_MASK) != 0 && assigned_by(c, 9, 0);
}

bool is_regex_word(char32_t c) {
  if (c < 0x80) {
    return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c >= '0' && c <= '9') || c == '_';
  }
  const auto x = static_cast<UChar32>(c);
  const auto mask = U_GET_GC_MASK(x);
  return (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(x, UCHAR_ALPHABETIC) || u_hasBinaryProperty(x, UCHAR_JOIN_CONTROL);
}

bool is_cjk_ideograph_bert(char32_t c) {
  // The ranges BERT's original tokenizer (and the crate) name "Chinese characters".
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool py_isspace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  const auto x = static_cast<UChar32>(c);
  if (u_charType(x) == U_SPACE_SEPARATOR) return true;
  const auto d = u_charDirection(x);
  return d == U_WHITE_SPACE_NEUTRAL || d == U_BLOCK_SEPARATOR || d == U_SEGMENT_SEPARATOR;
}

// --- Transformations ------------------------------------------------------------------------

namespace {

// The form restricted to characters of Unicode 9.0 (ICU's FilteredNormalizer2 over [:age=9.0:],
// the mechanism ICU offers for normalizing as an older Unicode version did).
struct Filtered {
  icu::UnicodeSet set;
  std::unique_ptr<icu::FilteredNormalizer2> n[4];
  Filtered() {
    UErrorCode status = U_ZERO_ERROR;
    set.applyPattern(icu::UnicodeString(u"[:age=9.0:]"), status);
    TESSERA_CHECK(U_SUCCESS(status), "ICU [:age=9.0:] unavailable: ", u_errorName(status));
    set.freeze();
    const icu::Normalizer2* base[4] = {
        icu::Normalizer2::getNFCInstance(status), icu::Normalizer2::getNFDInstance(status),
        icu::Normalizer2::getNFKCInstance(status), icu::Normalizer2::getNFKDInstance(status)};
    TESSERA_CHECK(U_SUCCESS(status), "ICU normalizers unavailable: ", u_errorName(status));
    for (int i = 0; i < 4; ++i) n[i] = std::make_unique<icu::FilteredNormalizer2>(*base[i], set);
  }
};

const icu::Normalizer2& normalizer(NormForm form) {
  static const Filtered f;
  return *f.n[static_cast<int>(form)];
}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

std::string from_icu(const icu::UnicodeString& u) {
  std::string out;
  u.toUTF8String(out);
  return out;
}

}  // namespace

std::string normalize(std::string_view s, NormForm form) {
  if (is_ascii(s)) return std::string(s);  // every normalization form leaves ASCII unchanged
  const auto& n = normalizer(form);
  UErrorCode status = U_ZERO_ERROR;
  const icu::StringPiece piece(s.data(), static_cast<int32_t>(s.size()));
  if (n.isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  icu::StringByteSink<std::string> sink(&out);
  n.normalizeUTF8(0, piece, sink, nullptr, status);
  TESSERA_CHECK(U_SUCCESS(status), "ICU normalization failed: ", u_errorName(status));
  return out;
}

void append_lowercase_char(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
    return;
  }
  // The only unconditional multi-character lowercase mapping in Unicode (SpecialCasing.txt).
  if (c == 0x130) {
    out += "i\xCC\x87";
    return;
  }
  append_utf8(out, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
}

std::string py_lower(std::string_view s) {
  if (is_ascii(s)) {
    std::string out(s);
    for (auto& ch : out) {
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch + 32);
    }
    return out;
  }
  auto u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  return from_icu(u.toLower(icu::Locale::getRoot()));
}

std::string py_upper(std::string_view s) {
  if (is_ascii(s)) {
    std::string out(s);
    for (auto& ch : out) {
      if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 32);
    }
    return out;
  }
  auto u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
  return from_icu(u.toUpper(icu::Locale::getRoot()));
}

namespace {

std::string char_title(char32_t c) {
  icu::UnicodeString u(static_cast<UChar32>(c));
  u.toTitle(nullptr, icu::Locale::getRoot(),
            U_TITLECASE_NO_LOWERCASE | U_TITLECASE_NO_BREAK_ADJUSTMENT);
  return from_icu(u);
}

std::string char_lower(char32_t c) {
  icu::UnicodeString u(static_cast<UChar32>(c));
  return from_icu(u.toLower(icu::Locale::getRoot()));
}

}  // namespace

std::string py_title(std::string_view s) {
  std::string out;
  bool previous_cased = false;
  size_t i = 0;
  while (i < s.size()) {
    const char32_t c = next_cp(s, i);
    out += previous_cased ? char_lower(c) : char_title(c);
    previous_cased = u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_CASED);
  }
  return out;
}

std::string py_capitalize(std::string_view s) {
  if (s.empty()) return {};
  size_t i = 0;
  const char32_t first = next_cp(s, i);
  return char_title(first) + py_lower(s.substr(i));
}

}  // namespace tessera::tokenizers::unicode
