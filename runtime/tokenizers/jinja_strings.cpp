// Python's str methods that chat templates call, by code point.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "runtime/tokenizers/jinja_ops.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers::jinja {

using unicode::next_cp;

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

namespace {

bool in_chars(char32_t c, const std::string* chars) {
  if (!chars) return unicode::py_isspace(c);
  size_t i = 0;
  while (i < chars->size()) {
    if (next_cp(*chars, i) == c) return true;
  }
  return false;
}

}  // namespace

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
      if (v.is_float()) {
        // Python truncates; NaN and infinity are errors there too, and a magnitude past 64 bits
        // (a big integer in Python) has no value here: converting it is undefined behaviour.
        const double t = std::trunc(v.as_double());
        if (!(t >= -9223372036854775808.0 && t < 9223372036854775808.0)) {
          fail("%d format: " + py_float_repr(v.as_double()) +
               " is outside the 64-bit integer range");
        }
        out += std::to_string(static_cast<int64_t>(t));
      } else {
        out += std::to_string(v.as_int());
      }
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
      // Past size_t (std::stoul threw std::out_of_range: a fuzzer's '{1111...1}') is as missing
      // as any other index past the arguments.
      size_t k = 0;
      const auto r = std::from_chars(field.data(), field.data() + field.size(), k);
      if (r.ec != std::errc() || k >= a.pos.size()) {
        fail("format: replacement index " + field + " out of range for " +
             std::to_string(a.pos.size()) + " positional arguments");
      }
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

}  // namespace tessera::tokenizers::jinja
