// Reading tokenizer.json fields with errors that name the field, its path and the value found:
//   tokenizer.json: field 'model.merges[12]' must be a string "a b" or a pair of strings, got 7
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace tessera::tokenizers {

// A JSON value and where it sits in the file ("model.vocab"); errors name that path.
class Field {
 public:
  Field(const nlohmann::json& value, std::string path) : v_(&value), path_(std::move(path)) {}

  const nlohmann::json& json() const { return *v_; }
  const std::string& path() const { return path_; }
  bool is_null() const { return v_->is_null(); }

  bool has(const char* key) const;
  // The member `key` (must exist), or null when absent for optional().
  Field at(const char* key) const;
  std::optional<Field> optional(const char* key) const;  // absent or null → nullopt
  Field element(size_t i) const;

  std::string str() const;
  bool boolean() const;
  int64_t integer() const;  // any JSON integer
  double number() const;
  void expect_object() const;
  void expect_array() const;
  size_t size() const;  // of an array

  // Shorthands for optional members with defaults.
  std::string str_or(const char* key, const std::string& def) const;
  bool bool_or(const char* key, bool def) const;
  int64_t int_or(const char* key, int64_t def) const;

  [[noreturn]] void fail(const std::string& what) const;  // "field '<path>' <what>, got <value>"

 private:
  const nlohmann::json* v_;
  std::string path_;
};

// A short printable form of a JSON value for error messages (long values are cut).
std::string describe_json(const nlohmann::json& v);

}  // namespace tessera::tokenizers
