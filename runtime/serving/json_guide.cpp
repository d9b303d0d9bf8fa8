#include "runtime/serving/json_guide.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>

#include "common/error.h"
#include "runtime/tokenizers/unicode.h"

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
      {
        // UTF-8: the lead byte says how many continuation bytes follow and the range of the first.
        const tokenizers::unicode::Utf8Lead lead = tokenizers::unicode::utf8_lead(c);
        if (lead.length < 2) return fail();
        count = static_cast<uint8_t>(lead.length - 1);
        lo = lead.lo;
        hi = lead.hi;
        mode = M::kUtf8;
        return true;
      }
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
        lo = 0;
        hi = 0;  // any code point but a low surrogate
        return true;
      }
      if (std::strchr("\"\\/bfnrt", c) == nullptr || c == 0) return fail();
      mode = M::kString;
      return true;
    case M::kUnicode: {
      // Four hex digits. A high surrogate (D800-DBFF) must be followed by an escaped low one
      // (DC00-DFFF), and a low one may come only there (as nlohmann::json and Python read them).
      // hi: 1 when this escape is the low half of a pair, else 0; lo: 1 after a first digit D (of
      // a free escape), 2 once it is a high surrogate.
      if (!is_hex(c)) return fail();
      const bool d = c == 'd' || c == 'D';
      if (count == 0) {
        if (hi == 1 && !d) return fail();
        lo = d ? 1 : 0;
      } else if (count == 1) {
        const bool low_half = (c >= 'c' && c <= 'f') || (c >= 'C' && c <= 'F');
        if (hi == 1) {
          if (!low_half) return fail();
        } else if (lo == 1) {
          if (low_half) return fail();  // a low surrogate without its high one
          lo = is_digit(c) && c <= '7' ? 0 : 2;
        }
      }
      if (++count == 4) {
        mode = hi == 0 && lo == 2 ? M::kPairSlash : M::kString;
        lo = 0x80;
        hi = 0xBF;
      }
      return true;
    }
    case M::kPairSlash:
      if (c != '\\') return fail();
      mode = M::kPairU;
      return true;
    case M::kPairU:
      if (c != 'u') return fail();
      mode = M::kUnicode;
      count = 0;
      lo = 0;
      hi = 1;  // the low half
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

JsonMaskCache::JsonMaskCache(std::shared_ptr<const PieceTable> pieces, std::vector<int32_t> eos_ids)
    : pieces_(std::move(pieces)), eos_ids_(std::move(eos_ids)) {
  TESSERA_CHECK(pieces_ != nullptr, "JsonMaskCache needs a piece table");
  for (const auto& t : pieces_->text) {
    size_t closes = 0, opens = 0;
    for (char c : t) {
      closes += (c == '}' || c == ']') ? 1 : 0;
      opens += (c == '{' || c == '[') ? 1 : 0;
    }
    max_closes_ = std::max(max_closes_, closes);
    max_opens_ = std::max(max_opens_, opens);
  }
}

std::string JsonMaskCache::key(const JsonState& s) const {
  std::string key;
  key += static_cast<char>(s.mode);
  key += static_cast<char>(s.key);
  key += static_cast<char>(s.count);
  key += static_cast<char>(s.lo);
  key += static_cast<char>(s.hi);
  key += s.literal == nullptr ? '-' : s.literal[0];
  // A token closes at most max_closes_ levels, and what may follow a close depends on the level
  // under it: one level more is seen. The depth matters only where a token could empty the stack
  // (the object complete, or a close too many) or open past kMaxDepth.
  const size_t depth = s.stack.size();
  const bool depth_seen = depth <= max_closes_ || depth + max_opens_ >= JsonState::kMaxDepth;
  key += depth_seen ? static_cast<char>(depth) : '\xff';
  const size_t seen = std::min(depth, max_closes_ + 1);
  key.append(s.stack, depth - seen, seen);
  return key;
}

std::vector<int32_t> JsonMaskCache::allowed(const JsonState& state) const {
  if (state.done() || state.mode == JsonState::Mode::kError) return eos_ids_;
  const std::string k = key(state);
  std::shared_ptr<const std::vector<int32_t>> set;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = sets_.find(k); it != sets_.end()) set = it->second;
  }
  if (set != nullptr) return *set;  // copied outside the lock
  auto fresh = std::make_shared<const std::vector<int32_t>>(scan(state));
  std::lock_guard<std::mutex> lock(mu_);
  if (sets_.size() >= kMaxEntries || ids_held_ + fresh->size() > kMaxIds) {
    sets_.clear();
    ids_held_ = 0;
  }
  if (sets_.emplace(k, fresh).second) ids_held_ += fresh->size();
  return *fresh;
}

std::vector<int32_t> JsonMaskCache::scan(const JsonState& state) const {
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

std::shared_ptr<const JsonMaskCache> ServingTokenizer::json_mask_cache() const {
  std::call_once(json_masks_once_, [this] {
    json_masks_ = std::make_shared<JsonMaskCache>(piece_table(), eos_ids());
  });
  return json_masks_;
}

JsonObjectConstraint::JsonObjectConstraint(std::shared_ptr<const JsonMaskCache> masks)
    : masks_(std::move(masks)) {
  TESSERA_CHECK(masks_ != nullptr, "JsonObjectConstraint needs a mask cache");
}

JsonObjectConstraint::JsonObjectConstraint(std::shared_ptr<const PieceTable> pieces,
                                           std::vector<int32_t> eos_ids)
    : JsonObjectConstraint(
          std::make_shared<const JsonMaskCache>(std::move(pieces), std::move(eos_ids))) {}

JsonState JsonObjectConstraint::state_of(std::span<const int32_t> output_ids) const {
  std::lock_guard<std::mutex> lock(known_mu_);
  // The longest remembered output that `output_ids` begins with.
  Known* from = nullptr;
  for (Known& k : known_) {
    if (k.ids.size() <= output_ids.size() && (from == nullptr || k.ids.size() > from->ids.size()) &&
        std::equal(k.ids.begin(), k.ids.end(), output_ids.begin())) {
      from = &k;
    }
  }
  if (from == nullptr) {
    if (known_.size() >= kMaxKnown) {
      from = &*std::min_element(known_.begin(), known_.end(),
                                [](const Known& a, const Known& b) { return a.used < b.used; });
      *from = Known{};
    } else {
      from = &known_.emplace_back();
    }
  }
  // An error state stays one: the bytes after it change nothing.
  const size_t known = from->ids.size();
  for (size_t i = known; i < output_ids.size(); ++i) {
    const int32_t id = output_ids[i];
    if (id >= 0 && static_cast<size_t>(id) < masks_->pieces().text.size() &&
        from->state.mode != JsonState::Mode::kError) {
      from->state.feed(masks_->pieces().text[static_cast<size_t>(id)]);
    }
  }
  from->ids.insert(from->ids.end(), output_ids.begin() + static_cast<std::ptrdiff_t>(known),
                   output_ids.end());
  from->used = ++clock_;
  return from->state;
}

std::vector<int32_t> JsonObjectConstraint::allowed(std::span<const int32_t> output_ids) const {
  return masks_->allowed(state_of(output_ids));
}

}  // namespace tessera::serving
