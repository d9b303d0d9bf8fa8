#include "runtime/tokenizers/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "common/error.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {

// Oniguruma (as the Rust `onig` crate builds it: Oniguruma syntax, UTF-8, no options) and PCRE2
// (UTF + UCP) agree on \p{..}, \d, '.', case folding of single characters and look-arounds, and
// the Unicode version (14.0 in both, Debian's PCRE2 10.42 and the crate's Oniguruma 6.9.8). They
// differ where measured against the `tokenizers` package over every code point:
//  - \s: Oniguruma's is White_Space (25 characters); PCRE2's adds U+180E;
//  - \w: Oniguruma's is Alphabetic, marks, Nd, Pc and the Latin-1 digits/fractions
//    (U+00B2, U+00B3, U+00B9, U+00BC-U+00BE); PCRE2 10.42's is L, N and '_';
//  - \h: a hexadecimal digit in Oniguruma, horizontal space in PCRE2;
//  - ^ and $ match at every line in Oniguruma (PCRE2_MULTILINE).
// Multi-character case folding ((?i)ss matching U+00DF) exists only in Oniguruma; no pattern of
// the public tokenizers relies on it.
std::string translate_oniguruma(const std::string& p) {
  static const std::string kSpace = "\\p{White_Space}";
  static const std::string kWord =
      "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
  static const std::string kHex = "0-9a-fA-F";
  std::string out;
  out.reserve(p.size() + 32);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      const bool in_class = class_depth > 0;
      auto put = [&](const std::string& body, bool negate) {
        if (in_class) {
          out += body;
        } else {
          out += negate ? "[^" : "[";
          out += body;
          out += "]";
        }
      };
      if (e == 's') {
        put(kSpace, false);
      } else if (e == 'S') {
        if (in_class) {
          out += "\\P{White_Space}";
        } else {
          put(kSpace, true);
        }
      } else if (e == 'w') {
        put(kWord, false);
      } else if (e == 'W' && !in_class) {
        put(kWord, true);
      } else if (e == 'h') {
        put(kHex, false);
      } else if (e == 'H' && !in_class) {
        put(kHex, true);
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal member.
      if (i + 1 < p.size() && p[i + 1] == '^') {
        out += '^';
        ++i;
      }
      if (i + 1 < p.size() && p[i + 1] == ']') {
        out += ']';
        ++i;
      }
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

struct Regex::Impl {
  pcre2_code* code = nullptr;
  std::string literal;  // non-empty: a plain substring search instead of PCRE2
  ~Impl() {
    if (code) pcre2_code_free(code);
  }
};

namespace {

// Per-thread match data and JIT stack, shared by every Regex (matching is re-entrant per thread).
struct ThreadMatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadMatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
  }
};

ThreadMatchState& match_state() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

Regex::Regex(const std::string& pattern) : impl_(std::make_unique<Impl>()), pattern_(pattern) {
  const std::string translated = translate_oniguruma(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_compile_context* cctx = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cctx, PCRE2_NEWLINE_LF);
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_off, cctx);
  pcre2_compile_context_free(cctx);
  if (!impl_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    TESSERA_FAIL("regex pattern '", pattern, "' is invalid: ", reinterpret_cast<char*>(msg),
                 " at offset ", err_off);
  }
  // Without JIT (an unsupported CPU) PCRE2's interpreter runs the same pattern, only slower.
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);
}

Regex Regex::literal(const std::string& text) {
  if (text.empty()) return Regex(std::string());  // the empty pattern: matches at every position
  Regex r;
  r.impl_ = std::make_unique<Impl>();
  r.impl_->literal = text;
  r.pattern_ = text;
  return r;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

void Regex::find_all(std::string_view text, std::vector<Match>& out) const {
  out.clear();
  if (!impl_->literal.empty()) {
    const auto& lit = impl_->literal;
    size_t pos = 0;
    while ((pos = text.find(lit, pos)) != std::string_view::npos) {
      out.push_back({pos, pos + lit.size()});
      pos += lit.size();
    }
    return;
  }
  auto& st = match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t search_from = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (search_from <= text.size()) {
    const int rc = pcre2_match(impl_->code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK,
                               st.data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      TESSERA_FAIL("regex pattern '", pattern_, "' failed: ", reinterpret_cast<char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t s = ov[0], e = ov[1];
    if (s == e && have_last && last_end == e) {
      // The `onig` crate's iterator: an empty match right after the previous match is skipped by
      // moving the search start one character on.
      if (search_from >= text.size()) break;
      search_from += unicode::seq_len(static_cast<unsigned char>(text[search_from]));
      continue;
    }
    out.push_back({s, e});
    search_from = e;
    last_end = e;
    have_last = true;
  }
}

}  // namespace tessera::tokenizers
