#include "runtime/tokenizers/jinja_parser.h"

#include <algorithm>

#include "common/error.h"
#include "runtime/tokenizers/jinja_lexer.h"

namespace tessera::tokenizers::jinja {
namespace {

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
  Parser parser(lex(source));
  return parser.parse();
}

}  // namespace tessera::tokenizers::jinja
