// Python semantics of chat-template values (internal to the interpreter): strings by code
// point, argument lookup, operators, attribute and item access, str/dict/list methods, and the
// filters and tests. Errors are tessera::Error without a line; the renderer adds the line.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "runtime/tokenizers/jinja_value.h"

namespace tessera::tokenizers::jinja {

// The most copies `*` makes of a string or list, and the most columns `indent` and `center` pad
// to: one bound on what a template can make a small value grow into.
inline constexpr int64_t kMaxRepeat = 1 << 20;
// The most a `*` makes: bytes of a string, items of a list (`(s * 2^20) * 2^20` asked for 1 TB).
inline constexpr int64_t kMaxRepeatedBytes = Value::kMaxStringBytes;
inline constexpr int64_t kMaxRepeatedItems = kMaxRepeat;
// The most statements, expressions and loop iterations one render runs. Real chat templates take
// a few dozen per message (LLaMA 3's: 23, measured by FuzzRegression.ChatTemplateRenderSteps-
// AreBounded), so this is ~180,000 LLaMA 3 messages' worth; a template whose loops nest 25 deep
// over 4 messages (a fuzzer's) would run for ever. Like the sandbox's MAX_RANGE, a bound on what
// a template can make the server do for one request.
// The fuzz build's bound is 2^16 (its conversations have at most 4 messages): 9 renders of 2^22
// steps took 32 s under ASan.
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
inline constexpr int64_t kMaxRenderSteps = int64_t{1} << 16;
#else
inline constexpr int64_t kMaxRenderSteps = int64_t{1} << 22;
#endif

[[noreturn]] void fail(const std::string& msg);
[[noreturn]] void undefined_error(const Value& v);

// Strings as Python sees them.
std::vector<std::string> code_points(const std::string& s);
size_t py_len(const std::string& s);
// str.strip / lstrip / rstrip; `chars` null: whitespace.
std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right);
std::vector<std::string> py_split(const std::string& s, const std::string* sep, int64_t max);
std::vector<std::string> py_splitlines(const std::string& s, bool keepends);
std::string replace_all(const std::string& s, const std::string& from, const std::string& to,
                        int64_t count);
std::string jinja_title(const std::string& s);
std::string percent_format(const std::string& fmt, const Value& args);
std::string brace_format(const std::string& fmt, const Args& a);

// Positional-or-keyword parameter `i` named `name`, or null.
const Value* arg(const Args& a, size_t i, const char* name);
int64_t int_arg(const Args& a, size_t i, const char* name, int64_t def);
bool bool_arg(const Args& a, size_t i, const char* name, bool def);

std::vector<Value> iterate(const Value& v);
int64_t length_of(const Value& v);
bool contains(const Value& container, const Value& item);
Value binary_op(const std::string& op, const Value& a, const Value& b);
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
Value call_method(const Value& obj, const std::string& name, Args& a);

const std::set<std::string>& known_filters();
const std::set<std::string>& known_tests();
Value filter(const std::string& name, const Value& v, Args& a);
bool test(const std::string& name, const Value& v, Args& a);

}  // namespace tessera::tokenizers::jinja
