#include "runtime/tokenizers/incremental_decoder.h"

#include <algorithm>

#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// What of `now` is new after `before` was shown. When `before` is not a prefix (no decoder here
// does that), the text after the longest common prefix, cut back to a character boundary.
std::string text_after(const std::string& before, const std::string& now) {
  if (now.compare(0, before.size(), before) == 0) return now.substr(before.size());
  size_t k = 0;
  while (k < before.size() && k < now.size() && before[k] == now[k]) ++k;
  while (k > 0 && (static_cast<unsigned char>(now[k]) & 0xC0) == 0x80) --k;
  return now.substr(k);
}

}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer,
                                       std::span<const int32_t> prompt_ids,
                                       bool skip_special_tokens)
    : tok_(tokenizer), skip_special_(skip_special_tokens) {
  for (int32_t id : prompt_ids) {
    if (kept(id)) window_.push_back(id);
  }
  read_ = window_.size();
  shown_text_ = tok_.decode(window_, skip_special_);
}

// What decode keeps of an id (Tokenizer::decode drops the others before its decoder runs).
bool IncrementalDecoder::kept(int32_t id) const {
  if (!tok_.id_to_token(id)) return false;
  return !(skip_special_ && tok_.is_special(id));
}

// window_[read_, end) was just shown: the next step's window starts at read_ (it holds a kept
// id); ids from `end` on stay held.
void IncrementalDecoder::shown(size_t end) {
  window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(read_));
  read_ = end - read_;
  shown_text_ = tok_.decode(std::span<const int32_t>(window_.data(), read_), skip_special_);
  dead_run_ = false;
}

// The bytes of the byte-fallback tokens at the window's end.
std::string IncrementalDecoder::trailing_bytes() const {
  std::string bytes;
  for (size_t k = window_.size(); k > 0; --k) {
    const int b = tok_.held_fallback_byte(window_[k - 1]);
    if (b < 0) break;
    bytes.push_back(static_cast<char>(b));
  }
  std::reverse(bytes.begin(), bytes.end());
  return bytes;
}

// The bytes of the byte-fallback tokens at the window's end are invalid UTF-8 however they go on:
// not valid up to an unfinished last character.
bool IncrementalDecoder::byte_run_is_dead() const {
  const std::string bytes = trailing_bytes();
  return !unicode::is_valid_utf8(
      std::string_view(bytes).substr(0, unicode::complete_utf8_prefix(bytes)));
}

std::string IncrementalDecoder::step(int32_t id) {
  if (!kept(id)) return {};  // adds no text; held text stays held
  const bool byte = tok_.held_fallback_byte(id) >= 0;
  window_.push_back(id);
  // The run stays invalid, so ByteFallback makes it U+FFFD per byte and the text still ends in
  // U+FFFD (Decoder::holds_invalid_byte_runs): held, as a decode would find.
  if (byte && dead_run_) return {};
  dead_run_ = false;
  const std::string now = tok_.decode(window_, skip_special_);
  // Ending in U+FFFD, the text may end in an unfinished character: wait. Unless the byte tokens at
  // the end are whole, valid UTF-8: then the U+FFFD is theirs (bytes EF BF BD), a character like
  // any other (held, a run of them made every step decode the whole run: quadratic).
  if (ends_with_replacement(now) && !(byte && byte_run_is_whole())) {
    if (byte) dead_run_ = byte_run_is_dead();
    const size_t held = window_.size() - read_;
    if (held >= kMaxHeld && held % kMaxHeld == 0 && tok_.decode_is_prefix_stable()) {
      return settle(now);
    }
    return {};
  }
  std::string out = text_after(shown_text_, now);
  shown(window_.size());
  return out;
}

// The bytes of the byte-fallback tokens at the window's end are valid UTF-8 and end with a whole
// character.
bool IncrementalDecoder::byte_run_is_whole() const {
  const std::string bytes = trailing_bytes();
  return !bytes.empty() && unicode::complete_utf8_prefix(bytes) == bytes.size() &&
         unicode::is_valid_utf8(bytes);
}

// kMaxHeld ids held and the text still ends in U+FFFD: a run of bytes that form no character,
// which would otherwise keep the window growing (8,000 ids of one invalid byte took 1.6 s,
// quadratic). With a prefix-stable decode, show the text of the ids before the last 3: a character
// begun before them has had 3 more bytes, so it is complete or invalid, and their text no longer
// changes (cut back while it is not a prefix of `now`: a character split at the cut).
std::string IncrementalDecoder::settle(const std::string& now) {
  for (size_t end = window_.size() - 3; end > read_; --end) {
    std::string part = tok_.decode(std::span<const int32_t>(window_.data(), end), skip_special_);
    if (part.size() < shown_text_.size() || now.compare(0, part.size(), part) != 0 ||
        part.compare(0, shown_text_.size(), shown_text_) != 0) {
      continue;
    }
    std::string out = part.substr(shown_text_.size());
    shown(end);
    return out;
  }
  return {};
}

std::string IncrementalDecoder::flush() {
  if (read_ == window_.size()) return {};
  std::string out = text_after(shown_text_, tok_.decode(window_, skip_special_));
  shown(window_.size());
  return out;
}

}  // namespace tessera::tokenizers
