#include "runtime/tokenizers/json_fields.h"

#include "common/error.h"

namespace tessera::tokenizers {

std::string describe_json(const nlohmann::json& v) {
  std::string s;
  try {
    s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } catch (...) {
    s = "<unprintable>";
  }
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return std::string(v.type_name()) + " " + s;
}

void Field::fail(const std::string& what) const {
  TESSERA_FAIL("field '", path_, "' ", what, ", got ", describe_json(*v_));
}

bool Field::has(const char* key) const { return v_->is_object() && v_->contains(key); }

Field Field::at(const char* key) const {
  expect_object();
  auto it = v_->find(key);
  if (it == v_->end()) {
    TESSERA_FAIL("field '", path_.empty() ? std::string(key) : path_ + "." + key, "' is missing");
  }
  return Field(*it, path_.empty() ? std::string(key) : path_ + "." + key);
}

std::optional<Field> Field::optional(const char* key) const {
  expect_object();
  auto it = v_->find(key);
  if (it == v_->end() || it->is_null()) return std::nullopt;
  return Field(*it, path_.empty() ? std::string(key) : path_ + "." + key);
}

Field Field::element(size_t i) const {
  expect_array();
  return Field((*v_)[i], path_ + "[" + std::to_string(i) + "]");
}

std::string Field::str() const {
  if (!v_->is_string()) fail("must be a string");
  return v_->get<std::string>();
}

bool Field::boolean() const {
  if (!v_->is_boolean()) fail("must be a boolean");
  return v_->get<bool>();
}

int64_t Field::integer() const {
  if (!v_->is_number_integer()) fail("must be an integer");
  if (v_->is_number_unsigned()) {
    const auto u = v_->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) fail("is out of range");
    return static_cast<int64_t>(u);
  }
  return v_->get<int64_t>();
}

double Field::number() const {
  if (!v_->is_number()) fail("must be a number");
  return v_->get<double>();
}

void Field::expect_object() const {
  if (!v_->is_object()) fail("must be an object");
}

void Field::expect_array() const {
  if (!v_->is_array()) fail("must be an array");
}

size_t Field::size() const {
  expect_array();
  return v_->size();
}

std::string Field::str_or(const char* key, const std::string& def) const {
  auto f = optional(key);
  return f ? f->str() : def;
}

bool Field::bool_or(const char* key, bool def) const {
  auto f = optional(key);
  return f ? f->boolean() : def;
}

int64_t Field::int_or(const char* key, int64_t def) const {
  auto f = optional(key);
  return f ? f->integer() : def;
}

}  // namespace tessera::tokenizers
