// The chat-template interpreter: statements, expressions with Python's operator semantics, and
// the filters, tests, globals and str/dict/list methods chat templates call.
#include <unicode/uchar.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "common/error.h"
#include "runtime/tokenizers/jinja.h"
#include "runtime/tokenizers/jinja_parser.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {
namespace {

using unicode::next_cp;

constexpr const char* kLinePrefix = "chat template line ";

[[noreturn]] void fail(const std::string& msg) { TESSERA_FAIL(msg); }

// --- strings as Python sees them (code points) -------------------------------------------------

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    const size_t b = i;
    next_cp(s, i);
    out.push_back(s.substr(b, i - b));
  }
  return out;
}

size_t py_len(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool in_chars(char32_t c, const std::string* chars) {
  if (!chars) return unicode::py_isspace(c);
  size_t i = 0;
  while (i < chars->size()) {
    if (next_cp(*chars, i) == c) return true;
  }
  return false;
}

std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  auto cps = code_points(s);
  size_t b = 0, e = cps.size();
  auto cp = [&](size_t k) {
    size_t j = 0;
    return next_cp(cps[k], j);
  };
  if (left) {
    while (b < e && in_chars(cp(b), chars)) ++b;
  }
  if (right) {
    while (e > b && in_chars(cp(e - 1), chars)) --e;
  }
  std::string out;
  for (size_t k = b; k < e; ++k) out += cps[k];
  return out;
}

std::vector<std::string> py_split(const std::string& s, const std::string* sep, int64_t max) {
  std::vector<std::string> out;
  if (sep) {
    if (sep->empty()) fail("empty separator");
    size_t pos = 0, f;
    while ((max < 0 || static_cast<int64_t>(out.size()) < max) &&
           (f = s.find(*sep, pos)) != std::string::npos) {
      out.push_back(s.substr(pos, f - pos));
      pos = f + sep->size();
    }
    out.push_back(s.substr(pos));
    return out;
  }
  // Runs of whitespace separate; no empty strings.
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (unicode::py_isspace(next_cp(s, j))) {
      i = j;
      continue;
    }
    if (max >= 0 && static_cast<int64_t>(out.size()) == max) {
      // The rest, right-stripped of whitespace only at its end.
      out.push_back(py_strip(s.substr(i), nullptr, false, true));
      return out;
    }
    size_t k = i;
    while (k < s.size()) {
      size_t m = k;
      if (unicode::py_isspace(next_cp(s, m))) break;
      k = m;
    }
    out.push_back(s.substr(i, k - i));
    i = k;
  }
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  while (i < s.size()) {
    const size_t b = i;
    const char32_t c = next_cp(s, i);
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D ||
                     c == 0x1E || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    size_t end = i;
    if (c == '\r' && i < s.size() && s[i] == '\n') end = ++i;
    out.push_back(s.substr(start, (keepends ? end : b) - start));
    start = i;
  }
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to,
                        int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    auto cps = code_points(s);
    int64_t n = 0;
    for (const auto& c : cps) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      out += c;
    }
    if (count < 0 || n < count) out += to;
    return out;
  }
  size_t pos = 0, f;
  int64_t n = 0;
  while ((count < 0 || n < count) && (f = s.find(from, pos)) != std::string::npos) {
    out.append(s, pos, f - pos);
    out += to;
    pos = f + from.size();
    ++n;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// jinja2's title filter: words split at runs of whitespace, '-', '(', '{', '[', '<'.
std::string jinja_title(const std::string& s) {
  std::string out, word;
  auto flush = [&] {
    if (word.empty()) return;
    size_t i = 0;
    next_cp(word, i);
    out += unicode::py_upper(word.substr(0, i)) + unicode::py_lower(word.substr(i));
    word.clear();
  };
  size_t i = 0;
  while (i < s.size()) {
    const size_t b = i;
    const char32_t c = next_cp(s, i);
    const bool delim =
        unicode::py_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (delim) {
      flush();
      out.append(s, b, i - b);
    } else {
      word.append(s, b, i - b);
    }
  }
  flush();
  return out;
}

// Python's %-formatting for the conversions templates use: %s %r %d %i %f %%.
std::string percent_format(const std::string& fmt, const Value& args) {
  std::vector<Value> list;
  if (args.is_tuple()) {
    list = args.items();
  } else {
    list.push_back(args);
  }
  std::string out;
  size_t next = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) fail("incomplete format");
    const char c = fmt[i];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (next >= list.size()) fail("not enough arguments for format string");
    const Value& v = list[next++];
    if (c == 's') {
      out += v.to_str();
    } else if (c == 'r') {
      out += v.repr();
    } else if (c == 'd' || c == 'i') {
      if (!v.is_number()) fail("%d format: a real number is required, not " + v.type_name());
      out += std::to_string(v.is_float() ? static_cast<int64_t>(v.as_double()) : v.as_int());
    } else if (c == 'f') {
      if (!v.is_number()) fail("%f format: a real number is required, not " + v.type_name());
      char buf[64];
      std::snprintf(buf, sizeof buf, "%f", v.as_double());
      out += buf;
    } else {
      fail(std::string("unsupported format character '") + c + "'");
    }
  }
  if (next < list.size()) fail("not all arguments converted during string formatting");
  return out;
}

// Python's str.format with {} / {0} / {name} fields (no format specs).
std::string brace_format(const std::string& fmt, const Args& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    const char c = fmt[i];
    if (c == '{' && i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out += '{';
      ++i;
      continue;
    }
    if (c == '}' && i + 1 < fmt.size() && fmt[i + 1] == '}') {
      out += '}';
      ++i;
      continue;
    }
    if (c != '{') {
      out += c;
      continue;
    }
    const size_t end = fmt.find('}', i);
    if (end == std::string::npos) fail("single '{' encountered in format string");
    const std::string field = fmt.substr(i + 1, end - i - 1);
    if (field.find_first_of(":!") != std::string::npos) fail("format specs are not supported");
    if (field.empty()) {
      if (auto_index >= a.pos.size()) fail("format: not enough positional arguments");
      out += a.pos[auto_index++].to_str();
    } else if (std::all_of(field.begin(), field.end(), ::isdigit)) {
      const size_t k = std::stoul(field);
      if (k >= a.pos.size()) fail("format: not enough positional arguments");
      out += a.pos[k].to_str();
    } else {
      bool found = false;
      for (const auto& [k, v] : a.kw) {
        if (k == field) {
          out += v.to_str();
          found = true;
        }
      }
      if (!found) fail("format: missing argument '" + field + "'");
    }
    i = end;
  }
  return out;
}

// --- argument helpers --------------------------------------------------------------------------

// Positional-or-keyword parameter `i` named `name`, or null.
const Value* arg(const Args& a, size_t i, const char* name) {
  for (const auto& [k, v] : a.kw) {
    if (k == name) return &v;
  }
  return i < a.pos.size() ? &a.pos[i] : nullptr;
}

int64_t int_arg(const Args& a, size_t i, const char* name, int64_t def) {
  const Value* v = arg(a, i, name);
  if (!v || v->is_none()) return def;
  if (!v->is_int() && !v->is_bool())
    fail(std::string("argument '") + name + "' must be an integer");
  return v->as_int();
}

bool bool_arg(const Args& a, size_t i, const char* name, bool def) {
  const Value* v = arg(a, i, name);
  return v ? v->truthy() : def;
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      return v.items();
    case Value::Kind::kString: {
      std::vector<Value> out;
      for (auto& c : code_points(v.str())) out.push_back(Value::string(std::move(c)));
      return out;
    }
    case Value::Kind::kDict: {
      std::vector<Value> out;
      for (const auto& [k, x] : v.dict().items) out.push_back(Value::string(k));
      return out;
    }
    default:
      fail("'" + v.type_name() + "' object is not iterable");
  }
}

int64_t length_of(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(py_len(v.str()));
    case Value::Kind::kList:
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict().items.size());
    default:
      fail("object of type '" + v.type_name() + "' has no len()");
  }
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kUndefined:
      return false;
    case Value::Kind::kString:
      if (!item.is_string()) {
        fail("'in <string>' requires string as left operand, not " + item.type_name());
      }
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::kList:
      for (const auto& x : container.items()) {
        if (equal(x, item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      return item.is_string() && container.dict().find(item.str()) != nullptr;
    default:
      fail("argument of type '" + container.type_name() + "' is not iterable");
  }
}

int64_t checked(long double r) {
  if (r > static_cast<long double>(INT64_MAX) || r < static_cast<long double>(INT64_MIN)) {
    fail("integer overflow");
  }
  return static_cast<int64_t>(r);
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) {
    fail((a.is_undefined() ? a : b).hint().empty() ? "an undefined value was used"
                                                   : (a.is_undefined() ? a : b).hint());
  }
  const bool ints = (a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool());
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) return Value::string(a.str() + b.str());
    if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
      auto items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return Value::list(std::move(items), a.is_tuple());
    }
    if (a.is_string()) fail("can only concatenate str (not \"" + b.type_name() + "\") to str");
    fail("unsupported operand type(s) for +: '" + a.type_name() + "' and '" + b.type_name() + "'");
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() - b.as_double());
  } else if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() * b.as_double());
    const Value* seq = a.is_string() || a.is_list()   ? &a
                       : b.is_string() || b.is_list() ? &b
                                                      : nullptr;
    const Value* n = seq == &a ? &b : &a;
    if (seq && (n->is_int() || n->is_bool())) {
      const int64_t k = std::max<int64_t>(0, n->as_int());
      if (k > (1 << 20)) fail("repetition count too large");
      if (seq->is_string()) {
        std::string out;
        for (int64_t i = 0; i < k; ++i) out += seq->str();
        return Value::string(std::move(out));
      }
      std::vector<Value> out;
      for (int64_t i = 0; i < k; ++i)
        out.insert(out.end(), seq->items().begin(), seq->items().end());
      return Value::list(std::move(out), seq->is_tuple());
    }
  } else if (op == "/") {
    if (nums) {
      if (b.as_double() == 0) fail("division by zero");
      return Value::number(a.as_double() / b.as_double());
    }
  } else if (op == "//") {
    if (nums) {
      if (b.as_double() == 0) fail("integer division or modulo by zero");
      if (ints) {
        const int64_t x = a.as_int(), y = b.as_int();
        int64_t q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return Value::integer(q);
      }
      return Value::number(std::floor(a.as_double() / b.as_double()));
    }
  } else if (op == "%") {
    if (a.is_string()) return Value::string(percent_format(a.str(), b));
    if (nums) {
      if (b.as_double() == 0) fail("integer division or modulo by zero");
      if (ints) {
        const int64_t x = a.as_int(), y = b.as_int();
        int64_t m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return Value::integer(m);
      }
      const double x = a.as_double(), y = b.as_double();
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::number(m);
    }
  } else if (op == "**") {
    if (ints && b.as_int() >= 0) {
      return Value::integer(checked(
          std::pow(static_cast<long double>(a.as_int()), static_cast<long double>(b.as_int()))));
    }
    if (nums) return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  fail("unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() +
       "'");
}

// --- the interpreter ---------------------------------------------------------------------------

const std::set<std::string>& known_filters() {
  static const std::set<std::string> k = {
      "abs",      "attr",     "batch", "capitalize", "center", "count",      "d",
      "default",  "dictsort", "e",     "escape",     "first",  "float",      "forceescape",
      "format",   "indent",   "int",   "items",      "join",   "last",       "length",
      "list",     "lower",    "map",   "max",        "min",    "reject",     "rejectattr",
      "replace",  "reverse",  "round", "safe",       "select", "selectattr", "sort",
      "string",   "sum",      "title", "tojson",     "trim",   "unique",     "upper",
      "wordcount"};
  return k;
}

const std::set<std::string>& known_tests() {
  static const std::set<std::string> k = {
      "boolean",  "callable", "defined",  "divisibleby", "eq",    "equalto", "==",  "escaped",
      "even",     "false",    "float",    "ge",          ">=",    "gt",      ">",   "greaterthan",
      "in",       "integer",  "iterable", "le",          "<=",    "lower",   "lt",  "<",
      "lessthan", "mapping",  "ne",       "!=",          "none",  "number",  "odd", "sameas",
      "sequence", "string",   "true",     "undefined",   "upper", "filter",  "test"};
  return k;
}

// Rejects unknown filters and tests when the template is compiled, as jinja2 does.
void validate(const Node& n) {
  if (n.kind == NodeKind::kFilter && !known_filters().count(n.name)) {
    TESSERA_FAIL(kLinePrefix, n.line, ": no filter named '", n.name, "'");
  }
  if (n.kind == NodeKind::kTest && !known_tests().count(n.name)) {
    TESSERA_FAIL(kLinePrefix, n.line, ": no test named '", n.name, "'");
  }
  for (const auto* list : {&n.kids, &n.kw, &n.body, &n.else_body}) {
    for (const auto& k : *list) {
      if (k) validate(*k);
    }
  }
}

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const Dict& vars) {
    scopes_.push_back(std::make_shared<Dict>(vars));
    root_ = scopes_.front();
  }

  std::string run(const Node& root) {
    std::string out;
    exec_body(root.body, out);
    return out;
  }

 private:
  using Scope = std::shared_ptr<Dict>;

  // Runs `f`, putting "chat template line N: " before an error that has no line yet.
  template <typename F>
  auto at_line(int line, F f) -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      if (e.message().rfind(kLinePrefix, 0) == 0) throw;
      TESSERA_FAIL(kLinePrefix, line, ": ", e.message());
    }
  }

  Flow exec_body(const std::vector<NodePtr>& body, std::string& out) {
    for (const auto& n : body) {
      const Flow f = exec(*n, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case NodeKind::kData:
        out += n.name;
        return Flow::kNormal;
      case NodeKind::kOutput:
        out += at_line(n.line, [&] { return eval(*n.kids[0]).to_str(); });
        return Flow::kNormal;
      case NodeKind::kIf:
        if (at_line(n.line, [&] { return eval(*n.kids[0]).truthy(); })) {
          return exec_body(n.body, out);
        }
        return exec_body(n.else_body, out);
      case NodeKind::kFor:
        return at_line(n.line, [&] { return exec_for(n, out); });
      case NodeKind::kSet:
        at_line(n.line, [&] { exec_set(n); });
        return Flow::kNormal;
      case NodeKind::kSetBlock: {
        std::string captured;
        exec_body(n.body, captured);
        Value v = Value::string(std::move(captured));
        if (!n.kids.empty()) v = at_line(n.line, [&] { return eval_filter(*n.kids[0], &v); });
        scopes_.back()->set(n.names[0], std::move(v));
        return Flow::kNormal;
      }
      case NodeKind::kMacro:
        define_macro(n);
        return Flow::kNormal;
      case NodeKind::kFilterBlock: {
        std::string captured;
        const Flow f = exec_body(n.body, captured);
        Value v = Value::string(std::move(captured));
        out += at_line(n.line, [&] { return eval_filter(*n.kids[0], &v).to_str(); });
        return f;
      }
      case NodeKind::kBreak:
        return Flow::kBreak;
      case NodeKind::kContinue:
        return Flow::kContinue;
      case NodeKind::kWith: {
        scopes_.push_back(std::make_shared<Dict>());
        for (size_t i = 0; i < n.names.size(); ++i) {
          Value v = at_line(n.line, [&] { return eval(*n.kids[i]); });
          scopes_.back()->set(n.names[i], std::move(v));
        }
        const Flow f = exec_body(n.body, out);
        scopes_.pop_back();
        return f;
      }
      default:
        TESSERA_FAIL(kLinePrefix, n.line, ": unexpected node");
    }
  }

  void bind(const std::vector<std::string>& targets, const Value& v, Dict& scope) {
    if (targets.size() == 1) {
      scope.set(targets[0], v);
      return;
    }
    if (!v.is_list() && !v.is_string()) {
      fail("cannot unpack non-iterable " + v.type_name() + " object");
    }
    const auto items = iterate(v);
    if (items.size() != targets.size()) {
      fail(items.size() > targets.size()
               ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
               : "not enough values to unpack (expected " + std::to_string(targets.size()) +
                     ", got " + std::to_string(items.size()) + ")");
    }
    for (size_t i = 0; i < targets.size(); ++i) scope.set(targets[i], items[i]);
  }

  Flow exec_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.kids[0]);
    if (seq.is_none()) fail("'NoneType' object is not iterable");
    std::vector<Value> items = iterate(seq);
    if (!n.kw.empty()) {  // {% for x in xs if cond %}: filter before counting
      std::vector<Value> kept;
      for (const auto& it : items) {
        scopes_.push_back(std::make_shared<Dict>());
        bind(n.names, it, *scopes_.back());
        const bool keep = eval(*n.kw[0]).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(it);
      }
      items.swap(kept);
    }
    if (items.empty()) {
      scopes_.push_back(std::make_shared<Dict>());
      const Flow f = exec_body(n.else_body, out);
      scopes_.pop_back();
      return f == Flow::kBreak || f == Flow::kContinue ? Flow::kNormal : f;
    }
    const auto len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      // Each iteration gets a fresh scope: a `set` inside the body does not outlive it.
      scopes_.push_back(std::make_shared<Dict>());
      bind(n.names, items[static_cast<size_t>(i)], *scopes_.back());
      Dict loop;
      loop.set("index", Value::integer(i + 1));
      loop.set("index0", Value::integer(i));
      loop.set("revindex", Value::integer(len - i));
      loop.set("revindex0", Value::integer(len - i - 1));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i == len - 1));
      loop.set("length", Value::integer(len));
      loop.set("depth", Value::integer(1));
      loop.set("depth0", Value::integer(0));
      loop.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                 : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)]
                                       : Value::undefined("there is no next item"));
      loop.set("cycle", Value::function("loop.cycle", [i](Args& a) {
                 if (a.pos.empty()) fail("no items for cycling given");
                 return a.pos[static_cast<size_t>(i) % a.pos.size()];
               }));
      scopes_.back()->set("loop", Value::dict(std::move(loop)));
      const Flow f = exec_body(n.body, out);
      scopes_.pop_back();
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void exec_set(const Node& n) {
    Value v = eval(*n.kids[0]);
    if (n.flag) {  // ns.attr = v
      const Value target = lookup(n.names[0]);
      if (!target.is_namespace()) {
        fail("cannot assign attribute on non-namespace object '" + n.names[0] + "'");
      }
      target.mutable_dict().set(n.names[1], std::move(v));
      return;
    }
    bind(n.names, v, *scopes_.back());
  }

  void define_macro(const Node& n) {
    const Node* node = &n;
    Renderer* self = this;
    scopes_.back()->set(
        n.name, Value::function(n.name, [self, node](Args& a) {
          if (self->macro_depth_ >= kMaxMacroDepth) {
            fail("maximum recursion depth exceeded in macro '" + node->name + "'");
          }
          struct Count {
            explicit Count(int& d) : d_(d) { ++d_; }
            ~Count() { --d_; }
            int& d_;
          } count(self->macro_depth_);
          // A macro sees the template's globals and its own arguments, not the caller's locals.
          auto saved = std::move(self->scopes_);
          self->scopes_ = {self->root_, std::make_shared<Dict>()};
          Dict& locals = *self->scopes_.back();
          if (a.pos.size() > node->names.size()) {
            self->scopes_ = std::move(saved);
            fail("macro '" + node->name + "' takes not more than " +
                 std::to_string(node->names.size()) + " argument(s)");
          }
          std::string out;
          try {
            for (size_t i = 0; i < node->names.size(); ++i) {
              const Value* given = arg(a, i, node->names[i].c_str());
              if (given) {
                locals.set(node->names[i], *given);
              } else if (node->kw[i]) {
                locals.set(node->names[i], self->eval(*node->kw[i]));
              } else {
                locals.set(node->names[i],
                           Value::undefined("parameter '" + node->names[i] + "' was not provided"));
              }
            }
            for (const auto& [k, v] : a.kw) {
              if (std::find(node->names.begin(), node->names.end(), k) == node->names.end()) {
                fail("macro '" + node->name + "' takes no keyword argument '" + k + "'");
              }
            }
            self->exec_body(node->body, out);
          } catch (...) {
            self->scopes_ = std::move(saved);
            throw;
          }
          self->scopes_ = std::move(saved);
          return Value::string(std::move(out));
        }));
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      if (const Value* v = (*it)->find(name)) return *v;
    }
    if (name == "range") {
      return Value::function("range", [](Args& a) {
        int64_t start = 0, stop, step = 1;
        auto num = [](const Value& v) {
          if (!v.is_int() && !v.is_bool()) fail("range() arguments must be integers");
          return v.as_int();
        };
        if (a.pos.size() == 1) {
          stop = num(a.pos[0]);
        } else if (a.pos.size() == 2 || a.pos.size() == 3) {
          start = num(a.pos[0]);
          stop = num(a.pos[1]);
          if (a.pos.size() == 3) step = num(a.pos[2]);
        } else {
          fail("range expected 1 to 3 arguments");
        }
        if (step == 0) fail("range() arg 3 must not be zero");
        std::vector<Value> out;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
          out.push_back(Value::integer(i));
          if (out.size() > (1u << 20)) fail("range too large");
        }
        return Value::list(std::move(out));
      });
    }
    if (name == "namespace") {
      return Value::function("namespace", [](Args& a) {
        Dict d;
        for (const auto& p : a.pos) {
          if (!p.is_dict()) fail("namespace() takes keyword arguments or a dict");
          for (const auto& [k, v] : p.dict().items) d.set(k, v);
        }
        for (const auto& [k, v] : a.kw) d.set(k, v);
        return Value::ns(std::move(d));
      });
    }
    if (name == "dict") {
      return Value::function("dict", [](Args& a) {
        Dict d;
        for (const auto& p : a.pos) {
          if (!p.is_dict()) fail("dict() takes keyword arguments or a dict");
          for (const auto& [k, v] : p.dict().items) d.set(k, v);
        }
        for (const auto& [k, v] : a.kw) d.set(k, v);
        return Value::dict(std::move(d));
      });
    }
    if (name == "raise_exception") {
      return Value::function("raise_exception", [](Args& a) -> Value {
        fail("raise_exception: " + (a.pos.empty() ? std::string() : a.pos[0].to_str()));
      });
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  Args eval_args(const Node& n, size_t first_pos) {
    Args a;
    for (size_t i = first_pos; i < n.kids.size(); ++i) a.pos.push_back(eval(*n.kids[i]));
    for (size_t i = 0; i < n.kw.size(); ++i) a.kw.emplace_back(n.names[i], eval(*n.kw[i]));
    return a;
  }

  [[noreturn]] static void undefined_error(const Value& v) {
    fail(v.hint().empty() ? "an undefined value was used" : v.hint());
  }

  Value eval(const Node& n) {
    switch (n.kind) {
      case NodeKind::kConst:
        return n.value;
      case NodeKind::kName:
        return lookup(n.name);
      case NodeKind::kGetattr:
        return get_attr(eval(*n.kids[0]), n.name);
      case NodeKind::kGetitem:
        return get_item(eval(*n.kids[0]), eval(*n.kids[1]));
      case NodeKind::kSlice: {
        const Value obj = eval(*n.kids[0]);
        auto opt = [&](size_t k) { return n.kids[k] ? eval(*n.kids[k]) : Value::none(); };
        return slice(obj, opt(1), opt(2), opt(3));
      }
      case NodeKind::kCall: {
        const Value f = eval(*n.kids[0]);
        Args a = eval_args(n, 1);
        if (f.is_undefined()) undefined_error(f);
        if (!f.is_function()) fail("'" + f.type_name() + "' object is not callable");
        return f.fn()(a);
      }
      case NodeKind::kFilter:
        return eval_filter(n, nullptr);
      case NodeKind::kTest: {
        const Value v = eval(*n.kids[0]);
        Args a = eval_args(n, 1);
        const bool r = test(n.name, v, a);
        return Value::boolean(n.flag ? !r : r);
      }
      case NodeKind::kNeg:
      case NodeKind::kPos: {
        const Value v = eval(*n.kids[0]);
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number())
          fail("bad operand type for unary " + std::string(n.kind == NodeKind::kNeg ? "-" : "+") +
               ": '" + v.type_name() + "'");
        if (n.kind == NodeKind::kPos) return v.is_float() ? v : Value::integer(v.as_int());
        return v.is_float() ? Value::number(-v.as_double()) : Value::integer(-v.as_int());
      }
      case NodeKind::kNot:
        return Value::boolean(!eval(*n.kids[0]).truthy());
      case NodeKind::kAnd: {
        Value l = eval(*n.kids[0]);
        return l.truthy() ? eval(*n.kids[1]) : l;
      }
      case NodeKind::kOr: {
        Value l = eval(*n.kids[0]);
        return l.truthy() ? l : eval(*n.kids[1]);
      }
      case NodeKind::kBinary:
        return binary_op(n.name, eval(*n.kids[0]), eval(*n.kids[1]));
      case NodeKind::kConcat: {
        std::string s;
        for (const auto& k : n.kids) s += eval(*k).to_str();
        return Value::string(std::move(s));
      }
      case NodeKind::kCompare: {
        Value left = eval(*n.kids[0]);
        for (size_t i = 0; i < n.ops.size(); ++i) {
          Value right = eval(*n.kids[i + 1]);
          const std::string& op = n.ops[i];
          bool r;
          if (op == "==") {
            r = equal(left, right);
          } else if (op == "!=") {
            r = !equal(left, right);
          } else if (op == "in") {
            r = contains(right, left);
          } else if (op == "notin") {
            r = !contains(right, left);
          } else {
            if (left.is_undefined() || right.is_undefined()) {
              undefined_error(left.is_undefined() ? left : right);
            }
            const int c = compare(left, right);
            r = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
          }
          if (!r) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case NodeKind::kCondExpr:
        if (eval(*n.kids[0]).truthy()) return eval(*n.kids[1]);
        if (n.kids.size() > 2) return eval(*n.kids[2]);
        return Value::undefined(
            "the inline if-expression evaluated to false and no else section "
            "was defined");
      case NodeKind::kList:
      case NodeKind::kTuple: {
        std::vector<Value> items;
        for (const auto& k : n.kids) items.push_back(eval(*k));
        return Value::list(std::move(items), n.kind == NodeKind::kTuple);
      }
      case NodeKind::kDict: {
        Dict d;
        for (size_t i = 0; i < n.kids.size(); ++i) {
          const Value k = eval(*n.kids[i]);
          if (!k.is_string()) fail("dict literal keys must be strings here, got " + k.type_name());
          d.set(k.str(), eval(*n.kw[i]));
        }
        return Value::dict(std::move(d));
      }
      default:
        TESSERA_FAIL(kLinePrefix, n.line, ": unexpected expression");
    }
  }

  // --- attribute and item access ---

  static bool is_dict_method(const std::string& n) {
    return n == "items" || n == "keys" || n == "values" || n == "get";
  }
  static bool is_str_method(const std::string& n) {
    static const std::set<std::string> k = {
        "strip",    "lstrip",  "rstrip",  "split",  "rsplit",  "splitlines", "startswith",
        "endswith", "replace", "title",   "upper",  "lower",   "capitalize", "find",
        "rfind",    "count",   "join",    "format", "isdigit", "isalpha",    "isalnum",
        "isspace",  "isupper", "islower", "index"};
    return k.count(n) != 0;
  }

  Value get_attr(const Value& obj, const std::string& name) {
    if (obj.is_undefined()) undefined_error(obj);
    if (obj.is_dict()) {
      if (!obj.is_namespace() && is_dict_method(name)) return bound_method(obj, name);
      if (const Value* v = obj.dict().find(name)) return *v;
      return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
    }
    if (obj.is_string() && is_str_method(name)) return bound_method(obj, name);
    if (obj.is_list() && (name == "index" || name == "count")) return bound_method(obj, name);
    if (obj.is_list() &&
        (name == "append" || name == "pop" || name == "extend" || name == "insert" ||
         name == "remove" || name == "sort" || name == "reverse" || name == "clear")) {
      fail("access to attribute '" + name + "' of '" + obj.type_name() + "' object is unsafe");
    }
    return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
  }

  static Value index_of(const Value& obj, int64_t i) {
    const int64_t n = obj.is_string() ? static_cast<int64_t>(py_len(obj.str()))
                                      : static_cast<int64_t>(obj.items().size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined("index out of range");
    if (obj.is_string()) return Value::string(code_points(obj.str())[static_cast<size_t>(i)]);
    return obj.items()[static_cast<size_t>(i)];
  }

  Value get_item(const Value& obj, const Value& key) {
    if (obj.is_undefined()) undefined_error(obj);
    if (obj.is_dict()) {
      if (key.is_string()) {
        if (const Value* v = obj.dict().find(key.str())) return *v;
        return get_attr(obj, key.str());
      }
      return Value::undefined("'dict object' has no attribute '" + key.to_str() + "'");
    }
    if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
      return index_of(obj, key.as_int());
    }
    if (key.is_string()) return get_attr(obj, key.str());
    return Value::undefined("'" + obj.type_name() + " object' has no element " + key.repr());
  }

  static Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
    if (obj.is_undefined()) undefined_error(obj);
    if (!obj.is_list() && !obj.is_string()) {
      fail("'" + obj.type_name() + "' object is not subscriptable");
    }
    std::vector<std::string> cps;
    if (obj.is_string()) cps = code_points(obj.str());
    const int64_t n = obj.is_string() ? static_cast<int64_t>(cps.size())
                                      : static_cast<int64_t>(obj.items().size());
    auto num = [](const Value& v, const char* what) {
      if (!v.is_int() && !v.is_bool()) fail(std::string("slice ") + what + " must be an integer");
      return v.as_int();
    };
    const int64_t st = step.is_none() ? 1 : num(step, "step");
    if (st == 0) fail("slice step cannot be zero");
    auto clamp = [&](const Value& v, int64_t def, int64_t lo, int64_t hi) {
      if (v.is_none()) return def;
      int64_t x = num(v, "index");
      if (x < 0) x += n;
      return std::clamp(x, lo, hi);
    };
    const int64_t b = st > 0 ? clamp(start, 0, 0, n) : clamp(start, n - 1, -1, n - 1);
    const int64_t e = st > 0 ? clamp(stop, n, 0, n) : clamp(stop, -1, -1, n - 1);
    std::vector<Value> items;
    std::string s;
    for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
      if (obj.is_string()) {
        s += cps[static_cast<size_t>(i)];
      } else {
        items.push_back(obj.items()[static_cast<size_t>(i)]);
      }
    }
    return obj.is_string() ? Value::string(std::move(s))
                           : Value::list(std::move(items), obj.is_tuple());
  }

  Value bound_method(const Value& obj, const std::string& name) {
    return Value::function(name, [obj, name](Args& a) { return call_method(obj, name, a); });
  }

  static Value call_method(const Value& obj, const std::string& name, Args& a) {
    if (obj.is_dict()) {
      const Dict& d = obj.dict();
      if (name == "items") {
        std::vector<Value> out;
        for (const auto& [k, v] : d.items) out.push_back(Value::list({Value::string(k), v}, true));
        return Value::list(std::move(out));
      }
      if (name == "keys") {
        std::vector<Value> out;
        for (const auto& [k, v] : d.items) out.push_back(Value::string(k));
        return Value::list(std::move(out));
      }
      if (name == "values") {
        std::vector<Value> out;
        for (const auto& [k, v] : d.items) out.push_back(v);
        return Value::list(std::move(out));
      }
      if (name == "get") {
        if (a.pos.empty()) fail("get expected at least 1 argument");
        const Value* v = a.pos[0].is_string() ? d.find(a.pos[0].str()) : nullptr;
        if (v) return *v;
        return a.pos.size() > 1 ? a.pos[1] : Value::none();
      }
    }
    if (obj.is_list()) {
      if (a.pos.empty()) fail(name + " expected an argument");
      int64_t n = 0, first = -1;
      for (size_t i = 0; i < obj.items().size(); ++i) {
        if (equal(obj.items()[i], a.pos[0])) {
          ++n;
          if (first < 0) first = static_cast<int64_t>(i);
        }
      }
      if (name == "count") return Value::integer(n);
      if (first < 0) fail(a.pos[0].repr() + " is not in list");
      return Value::integer(first);
    }
    const std::string& s = obj.str();
    auto str_arg = [&](size_t i, const char* what) -> const std::string* {
      const Value* v = arg(a, i, what);
      if (!v || v->is_none()) return nullptr;
      if (!v->is_string()) fail(name + "() argument must be str, not " + v->type_name());
      return &v->str();
    };
    if (name == "strip") return Value::string(py_strip(s, str_arg(0, "chars"), true, true));
    if (name == "lstrip") return Value::string(py_strip(s, str_arg(0, "chars"), true, false));
    if (name == "rstrip") return Value::string(py_strip(s, str_arg(0, "chars"), false, true));
    if (name == "split" || name == "rsplit") {
      const int64_t max = int_arg(a, 1, "maxsplit", -1);
      if (name == "rsplit" && max >= 0) fail("rsplit with maxsplit is not supported");
      std::vector<Value> out;
      for (auto& p : py_split(s, str_arg(0, "sep"), max))
        out.push_back(Value::string(std::move(p)));
      return Value::list(std::move(out));
    }
    if (name == "splitlines") {
      std::vector<Value> out;
      for (auto& p : py_splitlines(s, bool_arg(a, 0, "keepends", false))) {
        out.push_back(Value::string(std::move(p)));
      }
      return Value::list(std::move(out));
    }
    if (name == "startswith" || name == "endswith") {
      if (a.pos.empty()) fail(name + " takes at least 1 argument");
      std::vector<std::string> cands;
      if (a.pos[0].is_string()) {
        cands.push_back(a.pos[0].str());
      } else if (a.pos[0].is_tuple()) {
        for (const auto& x : a.pos[0].items()) {
          if (!x.is_string()) fail(name + " tuple items must be str");
          cands.push_back(x.str());
        }
      } else {
        fail(name + " first arg must be str or a tuple of str, not " + a.pos[0].type_name());
      }
      for (const auto& c : cands) {
        if (name == "startswith"
                ? s.compare(0, c.size(), c) == 0
                : s.size() >= c.size() && s.compare(s.size() - c.size(), c.size(), c) == 0) {
          return Value::boolean(true);
        }
      }
      return Value::boolean(false);
    }
    if (name == "replace") {
      const std::string* from = str_arg(0, "old");
      const std::string* to = str_arg(1, "new");
      if (!from || !to) fail("replace expected 2 arguments");
      return Value::string(replace_all(s, *from, *to, int_arg(a, 2, "count", -1)));
    }
    if (name == "title") return Value::string(unicode::py_title(s));
    if (name == "upper") return Value::string(unicode::py_upper(s));
    if (name == "lower") return Value::string(unicode::py_lower(s));
    if (name == "capitalize") return Value::string(unicode::py_capitalize(s));
    if (name == "find" || name == "rfind" || name == "index" || name == "count") {
      const std::string* sub = str_arg(0, "sub");
      if (!sub) fail(name + " expected an argument");
      if (name == "count") {
        if (sub->empty()) return Value::integer(static_cast<int64_t>(py_len(s)) + 1);
        int64_t n = 0;
        for (size_t p = s.find(*sub); p != std::string::npos; p = s.find(*sub, p + sub->size()))
          ++n;
        return Value::integer(n);
      }
      const size_t p = name == "rfind" ? s.rfind(*sub) : s.find(*sub);
      if (p == std::string::npos) {
        if (name == "index") fail("substring not found");
        return Value::integer(-1);
      }
      return Value::integer(static_cast<int64_t>(py_len(s.substr(0, p))));
    }
    if (name == "join") {
      if (a.pos.empty()) fail("join expected an argument");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(a.pos[0])) {
        if (!x.is_string())
          fail("sequence item: expected str instance, " + x.type_name() + " found");
        if (!first) out += s;
        out += x.str();
        first = false;
      }
      return Value::string(std::move(out));
    }
    if (name == "format") return Value::string(brace_format(s, a));
    // Predicates over every character (false for the empty string).
    auto all_chars = [&](auto pred) {
      if (s.empty()) return Value::boolean(false);
      size_t i = 0;
      while (i < s.size()) {
        if (!pred(next_cp(s, i))) return Value::boolean(false);
      }
      return Value::boolean(true);
    };
    if (name == "isspace") return all_chars([](char32_t c) { return unicode::py_isspace(c); });
    if (name == "isdigit") {
      return all_chars([](char32_t c) {
        return u_getIntPropertyValue(static_cast<UChar32>(c), UCHAR_NUMERIC_TYPE) == U_NT_DECIMAL ||
               u_getIntPropertyValue(static_cast<UChar32>(c), UCHAR_NUMERIC_TYPE) == U_NT_DIGIT;
      });
    }
    if (name == "isalpha") {
      return all_chars(
          [](char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0; });
    }
    if (name == "isalnum") {
      return all_chars([](char32_t c) {
        return (U_GET_GC_MASK(static_cast<UChar32>(c)) & (U_GC_L_MASK | U_GC_N_MASK)) != 0;
      });
    }
    if (name == "isupper" || name == "islower") {
      bool cased = false, ok = true;
      size_t i = 0;
      while (i < s.size()) {
        const auto c = static_cast<UChar32>(next_cp(s, i));
        if (u_isUUppercase(c) || u_isULowercase(c) || u_istitle(c)) {
          cased = true;
          if (name == "isupper" ? (u_isULowercase(c) || u_istitle(c))
                                : (u_isUUppercase(c) || u_istitle(c)))
            ok = false;
        }
      }
      return Value::boolean(cased && ok);
    }
    fail("'str' object has no method '" + name + "'");
  }

  // --- filters ---

  // A filter chain node; `input` replaces the innermost operand of a {% filter %} / block set.
  Value eval_filter(const Node& n, const Value* input) {
    Value v;
    if (!n.kids[0]) {
      v = *input;
    } else if (n.kids[0]->kind == NodeKind::kFilter) {
      v = eval_filter(*n.kids[0], input);
    } else {
      v = eval(*n.kids[0]);
    }
    Args a = eval_args(n, 1);
    return filter(n.name, v, a);
  }

  // An item's attribute for selectattr/map/sort/...: "a.b" walks dicts; numbers index lists.
  Value attribute_of(const Value& item, const std::string& path) {
    Value cur = item;
    size_t pos = 0;
    while (true) {
      const size_t dot = path.find('.', pos);
      const std::string part =
          path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
      if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) && cur.is_list()) {
        cur = get_item(cur, Value::integer(std::stoll(part)));
      } else {
        cur = get_item(cur, Value::string(part));
      }
      if (dot == std::string::npos) return cur;
      pos = dot + 1;
    }
  }

  // Sort key of jinja2's sort/unique/dictsort: strings lowercased unless case sensitive.
  static Value sort_key(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.is_string()) return Value::string(unicode::py_lower(v.str()));
    return v;
  }

  Value select_like(const Value& seq, Args& a, bool attr_mode, bool select) {
    std::vector<Value> out;
    std::string attr;
    size_t test_at = 0;
    if (attr_mode) {
      if (a.pos.empty()) fail("missing attribute name");
      attr = a.pos[0].to_str();
      test_at = 1;
    }
    std::string test_name;
    Args test_args;
    if (a.pos.size() > test_at) {
      test_name = a.pos[test_at].to_str();
      if (!known_tests().count(test_name)) fail("no test named '" + test_name + "'");
      test_args.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(test_at) + 1, a.pos.end());
    }
    for (const auto& item : iterate(seq)) {
      const Value subject = attr_mode ? attribute_of(item, attr) : item;
      const bool r = test_name.empty() ? subject.truthy() : test(test_name, subject, test_args);
      if (r == select) out.push_back(item);
    }
    return Value::list(std::move(out));
  }

  Value filter(const std::string& name, const Value& v, Args& a) {
    if (name == "default" || name == "d") {
      const Value* def = arg(a, 0, "default_value");
      const bool boolean = bool_arg(a, 1, "boolean", false);
      if (v.is_undefined() || (boolean && !v.truthy())) return def ? *def : Value::string("");
      return v;
    }
    if (name == "safe") return v;
    if (name == "string") return Value::string(v.to_str());
    if (name == "tojson") {
      JsonOptions o;
      if (const Value* x = arg(a, 0, "ensure_ascii")) o.ensure_ascii = x->truthy();
      if (const Value* x = arg(a, 1, "indent"); x && !x->is_none()) {
        if (!x->is_int()) fail("tojson: indent must be an integer");
        o.indent = static_cast<int>(std::max<int64_t>(0, x->as_int()));
      }
      if (const Value* x = arg(a, 2, "separators"); x && !x->is_none()) {
        if (!x->is_list() || x->items().size() != 2 || !x->items()[0].is_string() ||
            !x->items()[1].is_string()) {
          fail("tojson: separators must be a pair of strings");
        }
        o.custom_separators = true;
        o.item_sep = x->items()[0].str();
        o.key_sep = x->items()[1].str();
      }
      if (const Value* x = arg(a, 3, "sort_keys")) o.sort_keys = x->truthy();
      return Value::string(v.to_json(o));
    }
    if (v.is_undefined() && name != "length" && name != "count" && name != "list" &&
        name != "items" && name != "join" && name != "trim" && name != "upper" && name != "lower" &&
        name != "capitalize" && name != "title" && name != "first" && name != "last" &&
        name != "select" && name != "reject" && name != "selectattr" && name != "rejectattr" &&
        name != "map" && name != "unique" && name != "sort" && name != "escape" && name != "e" &&
        name != "replace" && name != "indent" && name != "int" && name != "float" &&
        name != "center" && name != "wordcount") {
      undefined_error(v);
    }
    if (name == "trim") {
      const Value* chars = arg(a, 0, "chars");
      return Value::string(
          py_strip(v.to_str(), chars && chars->is_string() ? &chars->str() : nullptr, true, true));
    }
    if (name == "length" || name == "count") return Value::integer(length_of(v));
    if (name == "upper") return Value::string(unicode::py_upper(v.to_str()));
    if (name == "lower") return Value::string(unicode::py_lower(v.to_str()));
    if (name == "capitalize") return Value::string(unicode::py_capitalize(v.to_str()));
    if (name == "title") return Value::string(jinja_title(v.to_str()));
    if (name == "escape" || name == "e" || name == "forceescape") {
      std::string out;
      for (char c : v.to_str()) {
        switch (c) {
          case '&':
            out += "&amp;";
            break;
          case '<':
            out += "&lt;";
            break;
          case '>':
            out += "&gt;";
            break;
          case '"':
            out += "&#34;";
            break;
          case '\'':
            out += "&#39;";
            break;
          default:
            out += c;
        }
      }
      return Value::string(std::move(out));
    }
    if (name == "replace") {
      const Value* from = arg(a, 0, "old");
      const Value* to = arg(a, 1, "new");
      if (!from || !to) fail("replace expects old and new");
      return Value::string(
          replace_all(v.to_str(), from->to_str(), to->to_str(), int_arg(a, 2, "count", -1)));
    }
    if (name == "join") {
      const Value* sep = arg(a, 0, "d");
      const Value* attr = arg(a, 1, "attribute");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(v)) {
        if (!first && sep) out += sep->to_str();
        out += (attr && !attr->is_none() ? attribute_of(x, attr->to_str()) : x).to_str();
        first = false;
      }
      return Value::string(std::move(out));
    }
    if (name == "first" || name == "last") {
      auto items = iterate(v);
      if (items.empty()) return Value::undefined("no " + name + " item, sequence was empty");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value::list(iterate(v));
    if (name == "items") {
      if (v.is_undefined()) return Value::list({});
      if (!v.is_dict()) fail("can only get item pairs from a mapping");
      std::vector<Value> out;
      for (const auto& [k, x] : v.dict().items)
        out.push_back(Value::list({Value::string(k), x}, true));
      return Value::list(std::move(out));
    }
    if (name == "select") return select_like(v, a, false, true);
    if (name == "reject") return select_like(v, a, false, false);
    if (name == "selectattr") return select_like(v, a, true, true);
    if (name == "rejectattr") return select_like(v, a, true, false);
    if (name == "map") {
      std::vector<Value> out;
      const Value* attr = arg(a, 99, "attribute");
      const Value* def = arg(a, 99, "default");
      if (attr) {
        for (const auto& x : iterate(v)) {
          Value y = attribute_of(x, attr->to_str());
          out.push_back(y.is_undefined() && def ? *def : y);
        }
      } else {
        if (a.pos.empty()) fail("map requires a filter name or attribute=");
        const std::string f = a.pos[0].to_str();
        if (!known_filters().count(f)) fail("no filter named '" + f + "'");
        Args rest;
        rest.pos.assign(a.pos.begin() + 1, a.pos.end());
        rest.kw = a.kw;
        for (const auto& x : iterate(v)) {
          Args copy = rest;
          out.push_back(filter(f, x, copy));
        }
      }
      return Value::list(std::move(out));
    }
    if (name == "unique") {
      const bool cs = bool_arg(a, 0, "case_sensitive", false);
      const Value* attr = arg(a, 1, "attribute");
      std::vector<Value> out, seen;
      for (const auto& x : iterate(v)) {
        const Value key =
            sort_key(attr && !attr->is_none() ? attribute_of(x, attr->to_str()) : x, cs);
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, key); })) {
          seen.push_back(key);
          out.push_back(x);
        }
      }
      return Value::list(std::move(out));
    }
    if (name == "sort") {
      const bool reverse = bool_arg(a, 0, "reverse", false);
      const bool cs = bool_arg(a, 1, "case_sensitive", false);
      const Value* attr = arg(a, 2, "attribute");
      auto items = iterate(v);
      std::vector<std::pair<Value, Value>> keyed;
      for (auto& x : items) {
        keyed.push_back(
            {sort_key(attr && !attr->is_none() ? attribute_of(x, attr->to_str()) : x, cs), x});
      }
      std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& p, const auto& q) {
        return reverse ? compare(q.first, p.first) < 0 : compare(p.first, q.first) < 0;
      });
      std::vector<Value> out;
      for (auto& p : keyed) out.push_back(std::move(p.second));
      return Value::list(std::move(out));
    }
    if (name == "dictsort") {
      if (!v.is_dict()) fail("dictsort: argument must be a dict");
      const bool cs = bool_arg(a, 0, "case_sensitive", false);
      const Value* by = arg(a, 1, "by");
      const bool by_value = by && by->to_str() == "value";
      if (by && !by_value && by->to_str() != "key")
        fail("You can only sort by either 'key' or 'value'");
      const bool reverse = bool_arg(a, 2, "reverse", false);
      std::vector<Value> out;
      for (const auto& [k, x] : v.dict().items)
        out.push_back(Value::list({Value::string(k), x}, true));
      std::stable_sort(out.begin(), out.end(), [&](const Value& p, const Value& q) {
        const Value kp = sort_key(p.items()[by_value ? 1 : 0], cs);
        const Value kq = sort_key(q.items()[by_value ? 1 : 0], cs);
        return reverse ? compare(kq, kp) < 0 : compare(kp, kq) < 0;
      });
      return Value::list(std::move(out));
    }
    if (name == "reverse") {
      if (v.is_string()) {
        auto cps = code_points(v.str());
        std::string out;
        for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
        return Value::string(std::move(out));
      }
      auto items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::list(std::move(items));
    }
    if (name == "int") {
      const int64_t def = int_arg(a, 0, "default", 0);
      if (v.is_int() || v.is_bool()) return Value::integer(v.as_int());
      if (v.is_float()) return Value::integer(static_cast<int64_t>(std::trunc(v.as_double())));
      if (v.is_string()) {
        const std::string s = py_strip(v.str(), nullptr, true, true);
        char* end = nullptr;
        errno = 0;
        const long long x = std::strtoll(s.c_str(), &end, 10);
        if (!s.empty() && *end == 0 && errno == 0) return Value::integer(x);
        const double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == 0 && std::isfinite(d))
          return Value::integer(static_cast<int64_t>(d));
      }
      return Value::integer(def);
    }
    if (name == "float") {
      const Value* def = arg(a, 0, "default");
      if (v.is_number()) return Value::number(v.as_double());
      if (v.is_string()) {
        const std::string s = py_strip(v.str(), nullptr, true, true);
        char* end = nullptr;
        const double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == 0) return Value::number(d);
      }
      return def ? *def : Value::number(0.0);
    }
    if (name == "abs") {
      if (!v.is_number()) fail("bad operand type for abs(): '" + v.type_name() + "'");
      return v.is_float() ? Value::number(std::fabs(v.as_double()))
                          : Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
    }
    if (name == "round") {
      if (!v.is_number()) fail("round: a number is required");
      const int64_t precision = int_arg(a, 0, "precision", 0);
      const Value* m = arg(a, 1, "method");
      const std::string method = m ? m->to_str() : "common";
      const double x = v.as_double(), scale = std::pow(10.0, static_cast<double>(precision));
      double r;
      if (method == "common") {
        char buf[512];
        std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::max<int64_t>(0, precision)),
                      x);
        r = precision >= 0 ? std::strtod(buf, nullptr) : std::nearbyint(x * scale) / scale;
      } else if (method == "floor") {
        r = std::floor(x * scale) / scale;
      } else if (method == "ceil") {
        r = std::ceil(x * scale) / scale;
      } else {
        fail("method must be 'common', 'ceil' or 'floor'");
      }
      return Value::number(r);
    }
    if (name == "sum") {
      const Value* attr = arg(a, 0, "attribute");
      Value total = arg(a, 1, "start") ? *arg(a, 1, "start") : Value::integer(0);
      for (const auto& x : iterate(v)) {
        total =
            binary_op("+", total, attr && !attr->is_none() ? attribute_of(x, attr->to_str()) : x);
      }
      return total;
    }
    if (name == "min" || name == "max") {
      const bool cs = bool_arg(a, 0, "case_sensitive", false);
      const Value* attr = arg(a, 1, "attribute");
      auto items = iterate(v);
      if (items.empty()) return Value::undefined("no " + name + " item, sequence was empty");
      size_t best = 0;
      for (size_t i = 1; i < items.size(); ++i) {
        auto key = [&](const Value& x) {
          return sort_key(attr && !attr->is_none() ? attribute_of(x, attr->to_str()) : x, cs);
        };
        const int c = compare(key(items[i]), key(items[best]));
        if (name == "min" ? c < 0 : c > 0) best = i;
      }
      return items[best];
    }
    if (name == "indent") {
      const Value* w = arg(a, 0, "width");
      const std::string ind =
          w && w->is_string()
              ? w->str()
              : std::string(static_cast<size_t>(std::max<int64_t>(0, w ? w->as_int() : 4)), ' ');
      const bool first = bool_arg(a, 1, "first", false);
      const bool blank = bool_arg(a, 2, "blank", false);
      const auto lines = py_splitlines(v.to_str() + "\n", false);
      std::string rv;
      if (blank) {
        for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
      } else if (!lines.empty()) {
        rv = lines[0];
        for (size_t i = 1; i < lines.size(); ++i)
          rv += "\n" + (lines[i].empty() ? "" : ind) + lines[i];
      }
      if (first) rv = ind + rv;
      return Value::string(std::move(rv));
    }
    if (name == "center") {
      const int64_t width = int_arg(a, 0, "width", 80);
      const std::string s = v.to_str();
      const int64_t len = static_cast<int64_t>(py_len(s));
      if (len >= width) return Value::string(s);
      const int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
      return Value::string(std::string(static_cast<size_t>(left), ' ') + s +
                           std::string(static_cast<size_t>(pad - left), ' '));
    }
    if (name == "format") {
      if (!a.kw.empty()) fail("format: keyword arguments are not supported");
      return Value::string(percent_format(v.to_str(), Value::list(a.pos, true)));
    }
    if (name == "attr") {
      if (a.pos.empty()) fail("attr expects a name");
      return get_attr(v, a.pos[0].to_str());
    }
    if (name == "batch") {
      const int64_t n = int_arg(a, 0, "linecount", 1);
      if (n <= 0) fail("batch: linecount must be positive");
      const Value* fill = arg(a, 1, "fill_with");
      std::vector<Value> out, cur;
      for (const auto& x : iterate(v)) {
        cur.push_back(x);
        if (static_cast<int64_t>(cur.size()) == n) {
          out.push_back(Value::list(std::move(cur)));
          cur.clear();
        }
      }
      if (!cur.empty()) {
        if (fill && !fill->is_none()) {
          while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
        }
        out.push_back(Value::list(std::move(cur)));
      }
      return Value::list(std::move(out));
    }
    if (name == "wordcount") {
      int64_t n = 0;
      bool in_word = false;
      const std::string s = v.to_str();
      size_t i = 0;
      while (i < s.size()) {
        const bool w = unicode::is_regex_word(next_cp(s, i));
        if (w && !in_word) ++n;
        in_word = w;
      }
      return Value::integer(n);
    }
    fail("no filter named '" + name + "'");
  }

  // --- tests ---

  bool test(const std::string& name, const Value& v, Args& a) {
    auto other = [&]() -> const Value& {
      if (a.pos.empty()) fail("test '" + name + "' needs an argument");
      return a.pos[0];
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && v.as_bool();
    if (name == "false") return v.is_bool() && !v.as_bool();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "iterable") return v.is_list() || v.is_string() || v.is_dict() || v.is_undefined();
    if (name == "sequence") return v.is_list() || v.is_string() || v.is_dict();
    if (name == "callable") return v.is_function();
    if (name == "escaped") return false;
    if (name == "lower" || name == "upper") {
      Args none;
      return call_method(Value::string(v.to_str()), name == "lower" ? "islower" : "isupper", none)
          .truthy();
    }
    if (name == "odd" || name == "even") {
      if (!v.is_int() && !v.is_bool()) fail("test '" + name + "' needs an integer");
      const bool odd = (v.as_int() % 2) != 0;
      return name == "odd" ? odd : !odd;
    }
    if (name == "divisibleby") {
      const Value& d = other();
      if (!d.is_number() || d.as_double() == 0) fail("divisibleby needs a non-zero number");
      return binary_op("%", v, d).as_double() == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==") return equal(v, other());
    if (name == "ne" || name == "!=") return !equal(v, other());
    if (name == "in") return contains(other(), v);
    if (name == "sameas") {
      const Value& o = other();
      if (v.is_none() || v.is_bool() || v.is_undefined())
        return equal(v, o) && v.kind() == o.kind();
      return false;
    }
    if (name == "filter") return known_filters().count(v.to_str()) != 0;
    if (name == "test") return known_tests().count(v.to_str()) != 0;
    if (v.is_undefined()) undefined_error(v);
    const int c = compare(v, other());
    if (name == "lt" || name == "<" || name == "lessthan") return c < 0;
    if (name == "le" || name == "<=") return c <= 0;
    if (name == "gt" || name == ">" || name == "greaterthan") return c > 0;
    if (name == "ge" || name == ">=") return c >= 0;
    fail("no test named '" + name + "'");
  }

  static constexpr int kMaxMacroDepth = 100;
  std::vector<Scope> scopes_;
  Scope root_;
  int macro_depth_ = 0;
};

}  // namespace

Template Template::parse(const std::string& source) {
  Template t;
  NodePtr root = parse_template(source);
  validate(*root);
  t.root_ = std::shared_ptr<const Node>(std::move(root));
  return t;
}

std::string Template::render(const Dict& vars) const {
  TESSERA_CHECK(root_ != nullptr, "chat template used before it was parsed");
  Renderer r(vars);
  return r.run(*root_);
}

}  // namespace tessera::tokenizers::jinja
