// Values of the chat-template interpreter, with Python's semantics where templates see them:
// str() and repr() of lists and dicts, truthiness, ==, ordering, and transformers' tojson
// (json.dumps with ensure_ascii=False). Dicts keep insertion order, like Python's.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tessera::tokenizers::jinja {

class Value;

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

using Function = std::function<Value(Args&)>;

// json.dumps options (transformers' tojson defaults: ensure_ascii=False, indent=None).
struct JsonOptions {
  int indent = -1;  // < 0: None
  bool sort_keys = false;
  bool ensure_ascii = false;
  bool custom_separators = false;
  std::string item_sep, key_sep;  // with custom_separators
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };

  Value() = default;  // undefined
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double d);
  // Strings hold at most kMaxStringBytes (a template doubling a string in a loop asked for
  // terabytes); longer ones are an error naming the size.
  static constexpr int64_t kMaxStringBytes = int64_t{1} << 26;
  static Value string(std::string s);
  // Lists and dicts nest at most kMaxNesting levels (a namespace counts as one level whatever it
  // holds: its attributes change after it is made); deeper ones are an error naming the limit.
  static constexpr int kMaxNesting = 256;
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value dict(Dict d);
  static Value ns(Dict d);  // a namespace(): a dict whose attributes `set` may change
  static Value function(std::string name, Function f);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const {
    return kind_ == Kind::kInt || kind_ == Kind::kFloat || kind_ == Kind::kBool;
  }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kDict && namespace_; }
  bool is_function() const { return kind_ == Kind::kFunction; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_double() const;  // int, float or bool
  const std::string& str() const { return s_; }
  const std::vector<Value>& items() const { return *list_; }
  const Dict& dict() const { return *dict_; }
  Dict& mutable_dict() const { return *dict_; }  // namespaces only
  const Function& fn() const { return *fn_; }
  const std::string& hint() const { return s_; }  // undefined: why; function: its name

  bool truthy() const;
  // Python's str() (what {{ }} prints; undefined prints as "").
  std::string to_str() const;
  // Python's repr(); a container met again inside itself (a namespace holding itself) prints as
  // Python prints it ([...], {...}); nesting deeper than kMaxNesting (a chain of namespaces) is
  // an error, as Python's RecursionError.
  std::string repr() const;
  std::string to_json(const JsonOptions& opt = {}) const;  // json.dumps
  std::string type_name() const;  // Python's: 'str', 'int', 'list', 'dict', 'NoneType', ...

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  bool tuple_ = false;
  bool namespace_ = false;
  int depth_ = 0;  // lists and dicts: 1 + their deepest item's; namespaces 1; others 0
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<std::vector<Value>> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

bool equal(const Value& a, const Value& b);   // Python ==
int compare(const Value& a, const Value& b);  // Python <: -1/0/1; throws on unorderable types
std::string py_float_repr(double d);

Value from_json(const nlohmann::ordered_json& j);
Value from_json(const nlohmann::json& j);

}  // namespace tessera::tokenizers::jinja
