#include "runtime/tokenizers/jinja_lexer.h"

#include <algorithm>
#include <cstdlib>

#include "common/error.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {

[[noreturn]] void fail_at(int line, const std::string& msg) {
  TESSERA_FAIL("chat template line ", line, ": ", msg);
}

namespace {

bool py_space_at(const std::string& s, size_t i, size_t* len) {
  size_t j = i;
  const char32_t c = unicode::next_cp(s, j);
  if (!unicode::py_isspace(c)) return false;
  *len = j - i;
  return true;
}

// Python's str.rstrip().
std::string py_rstrip(const std::string& s) {
  size_t end = s.size();
  while (end > 0) {
    size_t k = end - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t j = k;
    if (!unicode::py_isspace(unicode::next_cp(s, j))) break;
    end = k;
  }
  return s.substr(0, end);
}

bool all_py_space(const std::string& s, size_t from) {
  if (from >= s.size()) return false;  // \s+ needs one character
  size_t i = from, len;
  while (i < s.size()) {
    if (!py_space_at(s, i, &len)) return false;
    i += len;
  }
  return true;
}

size_t skip_py_space(const std::string& s, size_t i) {
  size_t len;
  while (i < s.size() && py_space_at(s, i, &len)) i += len;
  return i;
}

int count_newlines(const std::string& s, size_t a, size_t b) {
  return static_cast<int>(std::count(s.begin() + static_cast<std::ptrdiff_t>(a),
                                     s.begin() + static_cast<std::ptrdiff_t>(b), '\n'));
}

bool is_name_start(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
bool is_name_char(unsigned char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }

// Python's "unicode-escape" decoding of a string literal's body.
std::string unescape(const std::string& s, int line) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    const char e = s[++i];
    auto hex = [&](size_t n) {
      const std::string h = s.substr(i + 1, n);
      if (h.size() != n || h.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
        fail_at(line, "invalid escape in string literal");
      }
      i += n;
      return static_cast<char32_t>(std::strtoul(h.c_str(), nullptr, 16));
    };
    switch (e) {
      case '\n':
        break;
      case '\\':
        out += '\\';
        break;
      case '\'':
        out += '\'';
        break;
      case '"':
        out += '"';
        break;
      case 'a':
        out += '\a';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'v':
        out += '\v';
        break;
      case 'x':
        unicode::append_utf8(out, hex(2));
        break;
      case 'u':
        unicode::append_utf8(out, hex(4));
        break;
      case 'U':
        unicode::append_utf8(out, hex(8));
        break;
      default:
        if (e >= '0' && e <= '7') {
          int v = e - '0', n = 1;
          while (n < 3 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7') {
            v = v * 8 + (s[++i] - '0');
            ++n;
          }
          unicode::append_utf8(out, static_cast<char32_t>(v));
        } else {
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    // Newlines are \n; one trailing newline goes (keep_trailing_newline=False).
    std::string s;
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\r') {
        s += '\n';
        if (i + 1 < src_.size() && src_[i + 1] == '\n') ++i;
      } else {
        s += src_[i];
      }
    }
    if (!s.empty() && s.back() == '\n') s.pop_back();
    src_.swap(s);
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) root();
    toks_.push_back({Tok::kEof, "", line_});
    return std::move(toks_);
  }

 private:
  void emit_data(std::string text, int line) {
    if (!text.empty()) toks_.push_back({Tok::kData, std::move(text), line});
  }

  // Text up to the next tag, with lstrip_blocks / '-' applied to its end.
  void root() {
    size_t p = std::string::npos;
    for (size_t k = pos_; k + 1 < src_.size(); ++k) {
      if (src_[k] == '{' && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) {
        p = k;
        break;
      }
    }
    if (p == std::string::npos) {
      emit_data(src_.substr(pos_), line_);
      line_ += count_newlines(src_, pos_, src_.size());
      pos_ = src_.size();
      return;
    }
    const char kind = src_[p + 1];
    const char sign =
        p + 2 < src_.size() && (src_[p + 2] == '-' || src_[p + 2] == '+') ? src_[p + 2] : 0;
    std::string text = src_.substr(pos_, p - pos_);
    const int text_line = line_;
    line_ += count_newlines(src_, pos_, p);
    size_t raw_end = 0;
    const bool raw = kind == '%' && is_raw_begin(p, &raw_end);
    strip_before(text, sign, kind != '{');
    emit_data(std::move(text), text_line);
    line_starting_ = false;
    if (raw) {
      lex_raw(raw_end);
    } else if (kind == '#') {
      lex_comment(p + 2 + (sign ? 1 : 0));
    } else {
      lex_tag(kind, p + 2 + (sign ? 1 : 0));
    }
  }

  void strip_before(std::string& text, char sign, bool block_or_comment) {
    if (sign == '-') {
      text = py_rstrip(text);
    } else if (sign != '+' && block_or_comment) {  // lstrip_blocks
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && all_py_space(text, l_pos)) text.resize(l_pos);
    }
  }

  // {% raw %} (or {%- raw -%}) at p: sets *end past it.
  bool is_raw_begin(size_t p, size_t* end) {
    size_t i = p + 2;
    if (i < src_.size() && (src_[i] == '-' || src_[i] == '+')) ++i;
    i = skip_py_space(src_, i);
    if (src_.compare(i, 3, "raw") != 0) return false;
    i += 3;
    if (i < src_.size() && is_name_char(static_cast<unsigned char>(src_[i]))) return false;
    i = skip_py_space(src_, i);
    if (src_.compare(i, 3, "-%}") == 0) {
      *end = skip_py_space(src_, i + 3);
      return true;
    }
    if (src_.compare(i, 2, "%}") == 0) {
      *end = i + 2;
      return true;
    }
    return false;
  }

  void lex_raw(size_t from) {
    line_ += count_newlines(src_, pos_, from);
    line_starting_ = from > 0 && src_[from - 1] == '\n';
    for (size_t k = from; k + 1 < src_.size(); ++k) {
      if (src_[k] != '{' || src_[k + 1] != '%') continue;
      size_t i = k + 2;
      const char sign = i < src_.size() && (src_[i] == '-' || src_[i] == '+') ? src_[i] : 0;
      if (sign) ++i;
      i = skip_py_space(src_, i);
      if (src_.compare(i, 6, "endraw") != 0) continue;
      i = skip_py_space(src_, i + 6);
      size_t end;
      if (src_.compare(i, 3, "+%}") == 0) {
        end = i + 3;
      } else if (src_.compare(i, 3, "-%}") == 0) {
        end = skip_py_space(src_, i + 3);
      } else if (src_.compare(i, 2, "%}") == 0) {
        end = i + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      std::string text = src_.substr(from, k - from);
      strip_before(text, sign, true);
      emit_data(std::move(text), line_);
      line_ += count_newlines(src_, from, end);
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    fail_at(line_, "missing end of raw directive");
  }

  void lex_comment(size_t from) {
    for (size_t q = src_.find("#}", from); q != std::string::npos; q = src_.find("#}", q + 1)) {
      size_t end;
      if (q > from && src_[q - 1] == '+') {
        end = q + 2;
      } else if (q > from && src_[q - 1] == '-') {
        end = skip_py_space(src_, q + 2);
      } else {
        end = q + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;  // trim_blocks
      }
      line_ += count_newlines(src_, pos_, end);
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    fail_at(line_, "missing end of comment tag");
  }

  void lex_tag(char kind, size_t from) {
    const bool block = kind == '%';
    toks_.push_back({block ? Tok::kBlockBegin : Tok::kVarBegin, "", line_});
    size_t i = from;
    std::vector<char> balance;
    while (true) {
      if (i >= src_.size()) fail_at(line_, block ? "missing '%}'" : "missing '}}'");
      if (balance.empty()) {
        size_t end = 0;
        if (block) {
          if (src_.compare(i, 3, "+%}") == 0) {
            end = i + 3;
          } else if (src_.compare(i, 3, "-%}") == 0) {
            end = skip_py_space(src_, i + 3);
          } else if (src_.compare(i, 2, "%}") == 0) {
            end = i + 2;
            if (end < src_.size() && src_[end] == '\n') ++end;  // trim_blocks
          }
        } else {
          if (src_.compare(i, 3, "-}}") == 0) {
            end = skip_py_space(src_, i + 3);
          } else if (src_.compare(i, 2, "}}") == 0) {
            end = i + 2;
          }
        }
        if (end) {
          toks_.push_back({block ? Tok::kBlockEnd : Tok::kVarEnd, "", line_});
          line_ += count_newlines(src_, i, end);
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          return;
        }
      }
      size_t len;
      if (py_space_at(src_, i, &len)) {
        size_t j = skip_py_space(src_, i);
        line_ += count_newlines(src_, i, j);
        i = j;
        continue;
      }
      const unsigned char c = static_cast<unsigned char>(src_[i]);
      if (c >= '0' && c <= '9') {
        i = lex_number(i);
        continue;
      }
      if (is_name_start(c)) {
        size_t j = i;
        while (j < src_.size() && is_name_char(static_cast<unsigned char>(src_[j]))) ++j;
        toks_.push_back({Tok::kName, src_.substr(i, j - i), line_});
        i = j;
        continue;
      }
      if (c == '\'' || c == '"') {
        size_t j = i + 1;
        while (j < src_.size() && src_[j] != static_cast<char>(c)) j += src_[j] == '\\' ? 2 : 1;
        if (j >= src_.size()) fail_at(line_, "unterminated string literal");
        toks_.push_back({Tok::kString, unescape(src_.substr(i + 1, j - i - 1), line_), line_});
        line_ += count_newlines(src_, i, j);
        i = j + 1;
        continue;
      }
      static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/",
                                   "*",  "%",  "~",  "[",  "]",  "(",  ")", "{", "}",
                                   ">",  "<",  "=",  ".",  ":",  "|",  ",", ";"};
      const char* op = nullptr;
      for (const char* o : kOps) {
        if (src_.compare(i, std::char_traits<char>::length(o), o) == 0) {
          op = o;
          break;
        }
      }
      if (!op) fail_at(line_, std::string("unexpected character '") + src_[i] + "'");
      const std::string o(op);
      if (o == "(" || o == "[" || o == "{") {
        balance.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
      } else if (o == ")" || o == "]" || o == "}") {
        if (balance.empty()) fail_at(line_, "unexpected '" + o + "'");
        if (balance.back() != o[0]) {
          fail_at(line_,
                  "unexpected '" + o + "', expected '" + std::string(1, balance.back()) + "'");
        }
        balance.pop_back();
      }
      toks_.push_back({Tok::kOp, o, line_});
      i += o.size();
    }
  }

  size_t lex_number(size_t i) {
    size_t j = i;
    auto digits = [&](size_t k) {
      while (k < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[k])) ||
                                 (src_[k] == '_' && k + 1 < src_.size() &&
                                  std::isdigit(static_cast<unsigned char>(src_[k + 1]))))) {
        ++k;
      }
      return k;
    };
    j = digits(j);
    bool is_float = false;
    if (j + 1 < src_.size() && src_[j] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[j + 1]))) {
      j = digits(j + 1);
      is_float = true;
    }
    if (j < src_.size() && (src_[j] == 'e' || src_[j] == 'E')) {
      size_t k = j + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && std::isdigit(static_cast<unsigned char>(src_[k]))) {
        j = digits(k);
        is_float = true;
      }
    }
    std::string text = src_.substr(i, j - i);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Token t{is_float ? Tok::kFloat : Tok::kInt, text, line_};
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      t.ival = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail_at(line_, "integer literal " + text + " is too large");
    }
    toks_.push_back(t);
    return j;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> toks_;
};

}  // namespace

std::vector<Token> lex(const std::string& source) { return Lexer(source).run(); }

}  // namespace tessera::tokenizers::jinja
