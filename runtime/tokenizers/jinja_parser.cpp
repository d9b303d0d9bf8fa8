#include "runtime/tokenizers/jinja_parser.h"

#include <algorithm>
#include <cstdlib>

#include "common/error.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {
namespace {

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

[[noreturn]] void fail_at(int line, const std::string& msg) {
  TESSERA_FAIL("chat template line ", line, ": ", msg);
}

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

NodePtr make(NodeKind k, int line) {
  auto n = std::make_unique<Node>();
  n->kind = k;
  n->line = line;
  return n;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> t) : t_(std::move(t)) {}

  NodePtr parse() {
    auto root = make(NodeKind::kTemplate, 1);
    std::string end;
    root->body = body({}, &end);
    return root;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& look() const { return t_[std::min(i_ + 1, t_.size() - 1)]; }
  Token next() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }
  bool is_op(const char* o) const { return cur().type == Tok::kOp && cur().text == o; }
  bool is_name(const char* n) const { return cur().type == Tok::kName && cur().text == n; }
  bool skip_op(const char* o) {
    if (!is_op(o)) return false;
    ++i_;
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    ++i_;
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::kEof:
        return "end of template";
      case Tok::kBlockEnd:
        return "end of statement block";
      case Tok::kVarEnd:
        return "end of print statement";
      case Tok::kData:
        return "template data";
      default:
        return "'" + t.text + "'";
    }
  }
  void expect_op(const char* o) {
    if (!skip_op(o))
      fail_at(cur().line, std::string("expected '") + o + "', got " + describe(cur()));
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) fail_at(cur().line, "expected a name, got " + describe(cur()));
    return next().text;
  }
  void expect_block_end() {
    if (cur().type != Tok::kBlockEnd) {
      fail_at(cur().line, "expected end of statement block, got " + describe(cur()));
    }
    ++i_;
  }

  // Statements until a {% <one of ends> %} tag; its name goes to *end (the tag itself is eaten up
  // to its name).
  std::vector<NodePtr> body(const std::vector<std::string>& ends, std::string* end) {
    const Depth depth(*this, cur().line);
    std::vector<NodePtr> out;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty())
          fail_at(t.line, "unexpected end of template, expected '" + ends[0] + "'");
        return out;
      }
      if (t.type == Tok::kData) {
        auto d = make(NodeKind::kData, t.line);
        d->name = t.text;
        out.push_back(std::move(d));
        ++i_;
      } else if (t.type == Tok::kVarBegin) {
        ++i_;
        auto o = make(NodeKind::kOutput, t.line);
        o->kids.push_back(tuple_expr(true));
        if (cur().type != Tok::kVarEnd) {
          fail_at(cur().line, "expected end of print statement, got " + describe(cur()));
        }
        ++i_;
        out.push_back(std::move(o));
      } else if (t.type == Tok::kBlockBegin) {
        ++i_;
        if (cur().type != Tok::kName) fail_at(cur().line, "expected a tag name");
        const std::string name = cur().text;
        if (std::find(ends.begin(), ends.end(), name) != ends.end()) {
          ++i_;
          *end = name;
          return out;
        }
        out.push_back(statement());
      } else {
        fail_at(t.line, "unexpected " + describe(t));
      }
    }
  }

  NodePtr statement() {
    const Token t = next();
    const std::string& n = t.text;
    if (n == "if") return if_stmt(t.line);
    if (n == "for") return for_stmt(t.line);
    if (n == "set") return set_stmt(t.line);
    if (n == "macro") return macro_stmt(t.line);
    if (n == "filter") return filter_stmt(t.line);
    if (n == "with") return with_stmt(t.line);
    if (n == "break" || n == "continue") {
      expect_block_end();
      return make(n == "break" ? NodeKind::kBreak : NodeKind::kContinue, t.line);
    }
    if (n == "generation") {  // transformers' assistant-mask marker: renders its body
      expect_block_end();
      auto w = make(NodeKind::kWith, t.line);
      std::string end;
      w->body = body({"endgeneration"}, &end);
      expect_block_end();
      return w;
    }
    static const char* kUnsupported[] = {"include", "import", "from",       "extends",
                                         "block",   "call",   "autoescape", "do"};
    for (const char* u : kUnsupported) {
      if (n == u) fail_at(t.line, "the '" + n + "' tag is not supported in chat templates");
    }
    fail_at(t.line, "unknown tag '" + n + "'");
  }

  NodePtr if_stmt(int line) {
    auto node = make(NodeKind::kIf, line);
    node->kids.push_back(tuple_expr(true));
    expect_block_end();
    std::string end;
    node->body = body({"elif", "else", "endif"}, &end);
    if (end == "elif") {
      node->else_body.push_back(if_stmt(cur().line));
      return node;
    }
    if (end == "else") {
      expect_block_end();
      node->else_body = body({"endif"}, &end);
    }
    expect_block_end();
    return node;
  }

  // A name, or a comma-separated tuple of names (optionally in parentheses).
  std::vector<std::string> targets() {
    std::vector<std::string> out;
    const bool paren = skip_op("(");
    do {
      if (paren && is_op(")")) break;
      out.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return out;
  }

  NodePtr for_stmt(int line) {
    auto node = make(NodeKind::kFor, line);
    node->names = targets();
    if (!skip_name("in")) fail_at(cur().line, "expected 'in' in for loop, got " + describe(cur()));
    node->kids.push_back(tuple_expr(false, {"recursive"}));
    if (skip_name("if")) {
      node->kw.push_back(expression());
    }
    if (is_name("recursive")) fail_at(cur().line, "recursive for loops are not supported");
    expect_block_end();
    std::string end;
    node->body = body({"endfor", "else"}, &end);
    if (end == "else") {
      expect_block_end();
      node->else_body = body({"endfor"}, &end);
    }
    expect_block_end();
    return node;
  }

  NodePtr set_stmt(int line) {
    // {% set ns.attr = ... %}
    if (cur().type == Tok::kName && look().type == Tok::kOp && look().text == ".") {
      auto node = make(NodeKind::kSet, line);
      node->flag = true;
      node->names.push_back(next().text);
      ++i_;
      node->names.push_back(expect_name());
      expect_op("=");
      node->kids.push_back(tuple_expr(true));
      expect_block_end();
      return node;
    }
    auto names = targets();
    if (skip_op("=")) {
      auto node = make(NodeKind::kSet, line);
      node->names = std::move(names);
      node->kids.push_back(tuple_expr(true));
      expect_block_end();
      return node;
    }
    if (names.size() != 1) fail_at(line, "a block set assigns one name");
    auto node = make(NodeKind::kSetBlock, line);
    node->names = std::move(names);
    if (is_op("|")) node->kids.push_back(filter_chain(nullptr));
    expect_block_end();
    std::string end;
    node->body = body({"endset"}, &end);
    expect_block_end();
    return node;
  }

  NodePtr macro_stmt(int line) {
    auto node = make(NodeKind::kMacro, line);
    node->name = expect_name();
    expect_op("(");
    bool defaults = false;
    while (!is_op(")")) {
      if (!node->names.empty()) expect_op(",");
      if (is_op(")")) break;
      node->names.push_back(expect_name());
      if (skip_op("=")) {
        node->kw.push_back(expression());
        defaults = true;
      } else {
        if (defaults) fail_at(cur().line, "non-default argument follows default argument");
        node->kw.push_back(nullptr);
      }
    }
    expect_op(")");
    expect_block_end();
    std::string end;
    node->body = body({"endmacro"}, &end);
    expect_block_end();
    return node;
  }

  NodePtr filter_stmt(int line) {
    auto node = make(NodeKind::kFilterBlock, line);
    node->kids.push_back(filter_chain(nullptr, true));
    expect_block_end();
    std::string end;
    node->body = body({"endfilter"}, &end);
    expect_block_end();
    return node;
  }

  NodePtr with_stmt(int line) {
    auto node = make(NodeKind::kWith, line);
    while (cur().type != Tok::kBlockEnd) {
      if (!node->names.empty()) expect_op(",");
      node->names.push_back(expect_name());
      expect_op("=");
      node->kids.push_back(expression());
    }
    expect_block_end();
    std::string end;
    node->body = body({"endwith"}, &end);
    expect_block_end();
    return node;
  }

  // --- expressions (jinja2's parser.py, same precedence) ---

  bool tuple_end(const std::vector<std::string>& extra) const {
    const Token& t = cur();
    if (t.type == Tok::kVarEnd || t.type == Tok::kBlockEnd || t.type == Tok::kEof) return true;
    if (t.type == Tok::kOp && (t.text == ")" || t.text == "]" || t.text == "}")) return true;
    return t.type == Tok::kName && std::find(extra.begin(), extra.end(), t.text) != extra.end();
  }

  NodePtr tuple_expr(bool with_condexpr, const std::vector<std::string>& extra_end = {},
                     bool explicit_parens = false) {
    const int line = cur().line;
    std::vector<NodePtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (tuple_end(extra_end)) break;
      items.push_back(with_condexpr ? expression() : or_expr());
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail_at(line, "expected an expression, got " + describe(cur()));
    }
    auto t = make(NodeKind::kTuple, line);
    t->kids = std::move(items);
    return t;
  }

  NodePtr expression() {
    const Depth depth(*this, cur().line);
    const int line = cur().line;
    NodePtr e = or_expr();
    while (skip_name("if")) {
      auto c = make(NodeKind::kCondExpr, line);
      c->kids.push_back(or_expr());  // condition
      c->kids.push_back(std::move(e));
      if (skip_name("else")) c->kids.push_back(expression());
      e = std::move(c);
    }
    return e;
  }

  NodePtr or_expr() {
    NodePtr l = and_expr();
    while (is_name("or")) {
      auto n = make(NodeKind::kOr, next().line);
      n->kids.push_back(std::move(l));
      n->kids.push_back(and_expr());
      l = std::move(n);
    }
    return l;
  }

  NodePtr and_expr() {
    NodePtr l = not_expr();
    while (is_name("and")) {
      auto n = make(NodeKind::kAnd, next().line);
      n->kids.push_back(std::move(l));
      n->kids.push_back(not_expr());
      l = std::move(n);
    }
    return l;
  }

  NodePtr not_expr() {
    const Depth depth(*this, cur().line);
    if (is_name("not")) {
      auto n = make(NodeKind::kNot, next().line);
      n->kids.push_back(not_expr());
      return n;
    }
    return compare_expr();
  }

  NodePtr compare_expr() {
    const int line = cur().line;
    NodePtr e = math1();
    NodePtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::kOp &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = next().text;
      } else if (skip_name("in")) {
        op = "in";
      } else if (is_name("not") && look().type == Tok::kName && look().text == "in") {
        i_ += 2;
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(NodeKind::kCompare, line);
        cmp->kids.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->kids.push_back(math1());
    }
    return cmp ? std::move(cmp) : std::move(e);
  }

  NodePtr binary(const std::string& op, NodePtr l, NodePtr r, int line) {
    auto n = make(NodeKind::kBinary, line);
    n->name = op;
    n->kids.push_back(std::move(l));
    n->kids.push_back(std::move(r));
    return n;
  }

  NodePtr math1() {
    NodePtr l = concat();
    while (is_op("+") || is_op("-")) {
      const Token t = next();
      l = binary(t.text, std::move(l), concat(), t.line);
    }
    return l;
  }

  NodePtr concat() {
    const int line = cur().line;
    NodePtr first = math2();
    if (!is_op("~")) return first;
    auto n = make(NodeKind::kConcat, line);
    n->kids.push_back(std::move(first));
    while (skip_op("~")) n->kids.push_back(math2());
    return n;
  }

  NodePtr math2() {
    NodePtr l = pow_expr();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token t = next();
      l = binary(t.text, std::move(l), pow_expr(), t.line);
    }
    return l;
  }

  NodePtr pow_expr() {
    NodePtr l = unary(true);
    while (is_op("**")) {
      const Token t = next();
      l = binary("**", std::move(l), unary(true), t.line);
    }
    return l;
  }

  NodePtr unary(bool with_filter) {
    const Depth depth(*this, cur().line);
    NodePtr n;
    if (is_op("-") || is_op("+")) {
      const Token t = next();
      n = make(t.text == "-" ? NodeKind::kNeg : NodeKind::kPos, t.line);
      n->kids.push_back(unary(false));
    } else {
      n = primary();
    }
    n = postfix(std::move(n));
    if (with_filter) n = filter_expr(std::move(n));
    return n;
  }

  NodePtr primary() {
    const Token t = cur();
    if (t.type == Tok::kName) {
      ++i_;
      auto n = make(NodeKind::kConst, t.line);
      if (t.text == "true" || t.text == "True") {
        n->value = Value::boolean(true);
      } else if (t.text == "false" || t.text == "False") {
        n->value = Value::boolean(false);
      } else if (t.text == "none" || t.text == "None") {
        n->value = Value::none();
      } else {
        n->kind = NodeKind::kName;
        n->name = t.text;
      }
      return n;
    }
    if (t.type == Tok::kString) {
      std::string s;
      while (cur().type == Tok::kString) s += next().text;  // adjacent literals concatenate
      auto n = make(NodeKind::kConst, t.line);
      n->value = Value::string(std::move(s));
      return n;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      ++i_;
      auto n = make(NodeKind::kConst, t.line);
      n->value = t.type == Tok::kInt ? Value::integer(t.ival) : Value::number(t.fval);
      return n;
    }
    if (skip_op("(")) {
      auto n = tuple_expr(true, {}, true);
      expect_op(")");
      return n;
    }
    if (skip_op("[")) {
      auto n = make(NodeKind::kList, t.line);
      while (!is_op("]")) {
        if (!n->kids.empty()) expect_op(",");
        if (is_op("]")) break;
        n->kids.push_back(expression());
      }
      expect_op("]");
      return n;
    }
    if (skip_op("{")) {
      auto n = make(NodeKind::kDict, t.line);
      while (!is_op("}")) {
        if (!n->kids.empty()) expect_op(",");
        if (is_op("}")) break;
        n->kids.push_back(expression());
        expect_op(":");
        n->kw.push_back(expression());
      }
      expect_op("}");
      return n;
    }
    fail_at(t.line, "unexpected " + describe(t));
  }

  void call_args(Node& n) {
    expect_op("(");
    bool kw = false;
    size_t parsed = 0;
    while (!is_op(")")) {
      if (parsed++ > 0) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail_at(cur().line, "*args and **kwargs are not supported");
      if (cur().type == Tok::kName && look().type == Tok::kOp && look().text == "=") {
        n.names.push_back(next().text);
        ++i_;
        n.kw.push_back(expression());
        kw = true;
      } else {
        if (kw) fail_at(cur().line, "invalid syntax for function call expression");
        n.kids.push_back(expression());
      }
    }
    expect_op(")");
  }

  NodePtr postfix(NodePtr n) {
    while (true) {
      if (is_op(".")) {
        const int line = next().line;
        if (cur().type == Tok::kName) {
          auto g = make(NodeKind::kGetattr, line);
          g->name = next().text;
          g->kids.push_back(std::move(n));
          n = std::move(g);
        } else if (cur().type == Tok::kInt) {
          auto g = make(NodeKind::kGetitem, line);
          auto k = make(NodeKind::kConst, line);
          k->value = Value::integer(next().ival);
          g->kids.push_back(std::move(n));
          g->kids.push_back(std::move(k));
          n = std::move(g);
        } else {
          fail_at(line, "expected name or number after '.'");
        }
      } else if (is_op("[")) {
        n = subscript(std::move(n));
      } else if (is_op("(")) {
        auto c = make(NodeKind::kCall, cur().line);
        c->kids.push_back(std::move(n));
        call_args(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }

  NodePtr subscript(NodePtr obj) {
    const int line = next().line;  // '['
    auto slice_part = [&]() -> NodePtr {
      if (is_op(":") || is_op("]") || is_op(",")) return nullptr;
      return expression();
    };
    NodePtr first = slice_part();
    if (!is_op(":")) {
      if (!first) fail_at(line, "expected subscript expression");
      if (is_op(",")) fail_at(line, "tuple subscripts are not supported");
      expect_op("]");
      auto g = make(NodeKind::kGetitem, line);
      g->kids.push_back(std::move(obj));
      g->kids.push_back(std::move(first));
      return g;
    }
    auto s = make(NodeKind::kSlice, line);
    s->kids.push_back(std::move(obj));
    s->kids.push_back(std::move(first));
    ++i_;  // ':'
    s->kids.push_back(slice_part());
    if (skip_op(":")) {
      s->kids.push_back(slice_part());
    } else {
      s->kids.push_back(nullptr);
    }
    expect_op("]");
    return s;
  }

  // | name(args) | name ... ; with `start_inline` the first '|' is absent ({% filter %}).
  NodePtr filter_chain(NodePtr n, bool start_inline = false) {
    while (is_op("|") || start_inline) {
      if (!start_inline) ++i_;
      start_inline = false;
      auto f = make(NodeKind::kFilter, cur().line);
      f->name = expect_name();
      while (skip_op(".")) f->name += "." + expect_name();
      f->kids.push_back(std::move(n));  // may be null in a filter block
      if (is_op("(")) {
        Node args;
        call_args(args);
        for (auto& a : args.kids) f->kids.push_back(std::move(a));
        f->names = std::move(args.names);
        f->kw = std::move(args.kw);
      }
      n = std::move(f);
    }
    return n;
  }

  NodePtr filter_expr(NodePtr n) {
    while (true) {
      if (is_op("|")) {
        n = filter_chain(std::move(n));
      } else if (is_name("is")) {
        const int line = next().line;
        auto t = make(NodeKind::kTest, line);
        t->flag = skip_name("not");
        t->name = expect_name();
        while (skip_op(".")) t->name += "." + expect_name();
        t->kids.push_back(std::move(n));
        if (is_op("(")) {
          Node args;
          call_args(args);
          for (auto& a : args.kids) t->kids.push_back(std::move(a));
          t->names = std::move(args.names);
          t->kw = std::move(args.kw);
        } else if ((cur().type == Tok::kName || cur().type == Tok::kString ||
                    cur().type == Tok::kInt || cur().type == Tok::kFloat || is_op("[") ||
                    is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail_at(cur().line, "you cannot chain multiple tests with is");
          t->kids.push_back(postfix(primary()));
        }
        n = std::move(t);
      } else if (is_op("(")) {
        auto c = make(NodeKind::kCall, cur().line);
        c->kids.push_back(std::move(n));
        call_args(*c);
        n = std::move(c);
      } else {
        return n;
      }
    }
  }

  // Recursion depth of the parser: templates nest a few levels; a hostile one must not overflow
  // the stack.
  struct Depth {
    Depth(Parser& p, int line) : p_(p) {
      if (++p_.depth_ > kMaxDepth) fail_at(line, "the template nests deeper than 200 levels");
    }
    ~Depth() { --p_.depth_; }
    Parser& p_;
  };
  static constexpr int kMaxDepth = 200;

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

NodePtr parse_template(const std::string& source) {
  Lexer lexer(source);
  Parser parser(lexer.run());
  return parser.parse();
}

}  // namespace tessera::tokenizers::jinja
