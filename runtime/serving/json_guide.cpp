#include "runtime/serving/json_guide.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "common/error.h"

namespace tessera::serving {

namespace {

bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_hex(unsigned char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

bool JsonState::feed(std::string_view bytes) {
  for (char c : bytes) {
    if (!feed(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool JsonState::feed(unsigned char c) {
  using M = Mode;
  auto fail = [this] {
    mode = M::kError;
    return false;
  };
  auto end_value = [this] { mode = stack.empty() ? M::kDone : M::kAfterValue; };
  auto open = [&](char kind) {
    if (stack.size() >= kMaxDepth) return fail();
    stack.push_back(kind);
    mode = kind == '{' ? M::kObjectFirst : M::kArrayFirst;
    return true;
  };
  auto close = [&](char kind) {
    if (stack.empty() || stack.back() != kind) return fail();
    stack.pop_back();
    end_value();
    return true;
  };
  auto begin_value = [&]() {
    switch (c) {
      case '"':
        mode = M::kString;
        key = false;
        return true;
      case '{':
        return open('{');
      case '[':
        return open('[');
      case '-':
        mode = M::kNumber;
        count = 0;
        return true;
      case 't':
      case 'f':
      case 'n':
        mode = M::kLiteral;
        literal = c == 't' ? "true" : (c == 'f' ? "false" : "null");
        count = 1;
        return true;
      default:
        if (!is_digit(c)) return fail();
        mode = M::kNumber;
        count = c == '0' ? 1 : 2;
        return true;
    }
  };
  switch (mode) {
    case M::kStart:
      if (is_ws(c)) return true;
      if (c == '{') return open('{');
      return fail();
    case M::kValue:
      if (is_ws(c)) return true;
      return begin_value();
    case M::kArrayFirst:
      if (is_ws(c)) return true;
      if (c == ']') return close('[');
      return begin_value();
    case M::kObjectFirst:
    case M::kKey:
      if (is_ws(c)) return true;
      if (c == '"') {
        mode = M::kString;
        key = true;
        return true;
      }
      if (c == '}' && mode == M::kObjectFirst) return close('{');
      return fail();
    case M::kColon:
      if (is_ws(c)) return true;
      if (c != ':') return fail();
      mode = M::kValue;
      return true;
    case M::kAfterValue:
      if (is_ws(c)) return true;
      if (c == ',') {
        mode = stack.back() == '{' ? M::kKey : M::kValue;
        return true;
      }
      if (c == '}') return close('{');
      if (c == ']') return close('[');
      return fail();
    case M::kString:
      if (c == '"') {
        if (key) {
          mode = M::kColon;
        } else {
          end_value();
        }
        return true;
      }
      if (c == '\\') {
        mode = M::kEscape;
        return true;
      }
      if (c < 0x20) return fail();  // control characters must be escaped
      if (c < 0x80) return true;
      // UTF-8: the lead byte says how many continuation bytes follow and the range of the first
      // (no overlong forms, no surrogates, nothing past U+10FFFF).
      lo = 0x80;
      hi = 0xBF;
      if (c >= 0xC2 && c <= 0xDF) {
        count = 1;
      } else if (c >= 0xE0 && c <= 0xEF) {
        count = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        count = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
      } else {
        return fail();
      }
      mode = M::kUtf8;
      return true;
    case M::kUtf8:
      if (c < lo || c > hi) return fail();
      lo = 0x80;
      hi = 0xBF;
      if (--count == 0) mode = M::kString;
      return true;
    case M::kEscape:
      if (c == 'u') {
        mode = M::kUnicode;
        count = 0;
        return true;
      }
      if (std::strchr("\"\\/bfnrt", c) == nullptr || c == 0) return fail();
      mode = M::kString;
      return true;
    case M::kUnicode:
      // Four hex digits; surrogate code points (D800-DFFF) are refused: a character outside the
      // basic plane is written as UTF-8.
      if (!is_hex(c)) return fail();
      if (count == 0) lo = (c == 'd' || c == 'D') ? 1 : 0;
      if (count == 1 && lo == 1 && !(c >= '0' && c <= '7')) return fail();
      if (++count == 4) {
        mode = M::kString;
        lo = 0x80;
      }
      return true;
    case M::kNumber:
      // count: 0 after '-', 1 after a leading 0, 2 in the integer digits, 3 after '.', 4 in the
      // fraction, 5 after 'e', 6 after the exponent's sign, 7 in the exponent.
      switch (count) {
        case 0:
          if (!is_digit(c)) return fail();
          count = c == '0' ? 1 : 2;
          return true;
        case 3:
          if (!is_digit(c)) return fail();
          count = 4;
          return true;
        case 5:
          if (c == '+' || c == '-') {
            count = 6;
            return true;
          }
          if (!is_digit(c)) return fail();
          count = 7;
          return true;
        case 6:
          if (!is_digit(c)) return fail();
          count = 7;
          return true;
        default:
          break;
      }
      if (is_digit(c) && count != 1) return true;  // 2, 4, 7: more digits
      if (c == '.' && (count == 1 || count == 2)) {
        count = 3;
        return true;
      }
      if ((c == 'e' || c == 'E') && count != 7) {
        count = 5;
        return true;
      }
      end_value();  // the number ended before this byte
      return feed(c);
    case M::kLiteral:
      if (c != static_cast<unsigned char>(literal[count])) return fail();
      if (literal[++count] == '\0') end_value();
      return true;
    case M::kDone:
    case M::kError:
      return fail();
  }
  return fail();
}

JsonObjectConstraint::JsonObjectConstraint(std::shared_ptr<const PieceTable> pieces,
                                           std::vector<int32_t> eos_ids)
    : pieces_(std::move(pieces)), eos_ids_(std::move(eos_ids)) {
  TESSERA_CHECK(pieces_ != nullptr, "JsonObjectConstraint needs a piece table");
  for (const auto& t : pieces_->text) longest_piece_ = std::max(longest_piece_, t.size());
}

std::string JsonObjectConstraint::cache_key(const JsonState& s) const {
  std::string key;
  key += static_cast<char>(s.mode);
  key += static_cast<char>(s.key);
  key += static_cast<char>(s.count);
  key += static_cast<char>(s.lo);
  key += static_cast<char>(s.hi);
  key += s.literal == nullptr ? '-' : s.literal[0];
  key += static_cast<char>(s.stack.size());
  // A token pops at most as many levels as it has bytes.
  const size_t seen = std::min(s.stack.size(), longest_piece_);
  key.append(s.stack, s.stack.size() - seen, seen);
  return key;
}

JsonState JsonObjectConstraint::state_of(std::span<const int32_t> output_ids) const {
  JsonState s;
  for (int32_t id : output_ids) {
    if (id < 0 || static_cast<size_t>(id) >= pieces_->text.size()) continue;
    if (!s.feed(pieces_->text[static_cast<size_t>(id)])) break;
  }
  return s;
}

std::vector<int32_t> JsonObjectConstraint::allowed(std::span<const int32_t> output_ids) const {
  const JsonState state = state_of(output_ids);
  if (state.done() || state.mode == JsonState::Mode::kError) return eos_ids_;
  const std::string key = cache_key(state);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
  }
  std::vector<int32_t> out = scan(state);
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.size() >= kMaxCached) cache_.clear();
  cache_.emplace(key, out);
  return out;
}

std::vector<int32_t> JsonObjectConstraint::scan(const JsonState& state) const {
  std::vector<int32_t> out;
  if (state.done() || state.mode == JsonState::Mode::kError) return eos_ids_;
  for (int b = 0; b < 256; ++b) {
    const auto& ids = pieces_->by_first_byte[static_cast<size_t>(b)];
    if (ids.empty()) continue;
    JsonState first = state;
    if (!first.feed(static_cast<unsigned char>(b))) continue;
    for (int32_t id : ids) {
      const std::string& t = pieces_->text[static_cast<size_t>(id)];
      JsonState s = first;
      if (s.feed(std::string_view(t).substr(1))) out.push_back(id);
    }
  }
  if (out.empty()) return eos_ids_;
  return out;
}

}  // namespace tessera::serving
