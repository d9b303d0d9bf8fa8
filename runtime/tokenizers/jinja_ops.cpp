// Operators, attribute and item access and the str/dict/list methods of chat-template values,
// with Python's semantics.
#include <unicode/uchar.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "runtime/tokenizers/jinja_ops.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {

using unicode::next_cp;

void fail(const std::string& msg) { TESSERA_FAIL(msg); }

void undefined_error(const Value& v) {
  fail(v.hint().empty() ? "an undefined value was used" : v.hint());
}

namespace {

int64_t checked(long double r) {
  if (r > static_cast<long double>(INT64_MAX) || r < static_cast<long double>(INT64_MIN)) {
    fail("integer overflow");
  }
  return static_cast<int64_t>(r);
}

bool is_dict_method(const std::string& n) {
  return n == "items" || n == "keys" || n == "values" || n == "get";
}

}  // namespace

// A str/dict/list method bound to its object, as `obj.name` yields it.
Value bound_method(const Value& obj, const std::string& name);

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
      if (k > kMaxRepeat) fail("repetition count too large");
      if (seq->is_string()) {
        if (k > 0 && static_cast<int64_t>(seq->str().size()) > kMaxRepeatedBytes / k) {
          fail("repetition too large: " + std::to_string(seq->str().size()) + " bytes x " +
               std::to_string(k) + " (at most " + std::to_string(kMaxRepeatedBytes) + " bytes)");
        }
        std::string out;
        for (int64_t i = 0; i < k; ++i) out += seq->str();
        return Value::string(std::move(out));
      }
      if (k > 0 && static_cast<int64_t>(seq->items().size()) > kMaxRepeatedItems / k) {
        fail("repetition too large: " + std::to_string(seq->items().size()) + " items x " +
             std::to_string(k) + " (at most " + std::to_string(kMaxRepeatedItems) + " items)");
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
        // The one quotient past int64 (Python's big integer); x / y would be undefined.
        if (x == std::numeric_limits<int64_t>::min() && y == -1) fail("integer overflow");
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
        if (y == -1) return Value::integer(0);  // INT64_MIN % -1 would be undefined
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

bool is_str_method(const std::string& n) {
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

Value index_of(const Value& obj, int64_t i) {
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

Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_error(obj);
  if (!obj.is_list() && !obj.is_string()) {
    fail("'" + obj.type_name() + "' object is not subscriptable");
  }
  std::vector<std::string> cps;
  if (obj.is_string()) cps = code_points(obj.str());
  const int64_t n =
      obj.is_string() ? static_cast<int64_t>(cps.size()) : static_cast<int64_t>(obj.items().size());
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

Value call_method(const Value& obj, const std::string& name, Args& a) {
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
    for (auto& p : py_split(s, str_arg(0, "sep"), max)) out.push_back(Value::string(std::move(p)));
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
      for (size_t p = s.find(*sub); p != std::string::npos; p = s.find(*sub, p + sub->size())) ++n;
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
      if (!x.is_string()) fail("sequence item: expected str instance, " + x.type_name() + " found");
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

}  // namespace tessera::tokenizers::jinja
