// The filters and tests of chat templates (jinja2 3.1's, with transformers' tojson).
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "runtime/tokenizers/jinja_ops.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {

using unicode::next_cp;

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

// An item's attribute for selectattr/map/sort/...: "a.b" walks dicts; numbers index lists.
Value attribute_of(const Value& item, const std::string& path) {
  Value cur = item;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part =
        path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit) && cur.is_list()) {
      // An index past int64 is past every list's end, as jinja2 finds with Python's big ints
      // (std::stoll threw std::out_of_range).
      int64_t k = 0;
      const auto r = std::from_chars(part.data(), part.data() + part.size(), k);
      cur = r.ec == std::errc() ? get_item(cur, Value::integer(k))
                                : Value::undefined("'list object' has no element " + part);
    } else {
      cur = get_item(cur, Value::string(part));
    }
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

// Sort key of jinja2's sort/unique/dictsort: strings lowercased unless case sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
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
    // Python's int() of a float: NaN is a ValueError (jinja2 gives the default), infinity and
    // magnitudes past 64 bits have no value here (casting them is undefined behaviour).
    const auto whole = [&](double d) {
      if (std::isnan(d)) return Value::integer(def);
      const double t = std::trunc(d);
      if (!(t >= -9223372036854775808.0 && t < 9223372036854775808.0)) {
        fail("int: " + py_float_repr(d) + " is outside the 64-bit integer range");
      }
      return Value::integer(static_cast<int64_t>(t));
    };
    if (v.is_float()) return whole(v.as_double());
    if (v.is_string()) {
      const std::string s = py_strip(v.str(), nullptr, true, true);
      char* end = nullptr;
      errno = 0;
      const long long x = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && *end == 0 && errno == 0) return Value::integer(x);
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && *end == 0) return whole(d);
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
    if (v.is_float()) return Value::number(std::fabs(v.as_double()));
    if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("abs: integer overflow");
    return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
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
      std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::max<int64_t>(0, precision)), x);
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
      total = binary_op("+", total, attr && !attr->is_none() ? attribute_of(x, attr->to_str()) : x);
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
    // At most 2^20 columns, as `*` repeats at most 2^20 times: a width of 222222222222 (a fuzzer's
    // template) allocated 222 GB.
    if (w && !w->is_string() && w->as_int() > kMaxRepeat) {
      fail("indent: width " + std::to_string(w->as_int()) + " is too large (at most " +
           std::to_string(kMaxRepeat) + ")");
    }
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
    if (width > kMaxRepeat) {
      fail("center: width " + std::to_string(width) + " is too large (at most " +
           std::to_string(kMaxRepeat) + ")");
    }
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
    if (v.is_none() || v.is_bool() || v.is_undefined()) return equal(v, o) && v.kind() == o.kind();
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

}  // namespace tessera::tokenizers::jinja
