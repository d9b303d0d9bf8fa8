#include "runtime/tokenizers/incremental_decoder.h"

#include "runtime/tokenizers/tokenizer.h"

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
    : tok_(tokenizer),
      skip_special_(skip_special_tokens),
      ids_(prompt_ids.begin(), prompt_ids.end()) {
  read_ = ids_.size();
  advance(0);
}

bool IncrementalDecoder::kept(int32_t id) const {
  if (!tok_.id_to_token(id)) return false;
  return !(skip_special_ && tok_.is_special(id));
}

std::string IncrementalDecoder::decode_from(size_t begin, size_t end) const {
  return tok_.decode(std::span<const int32_t>(ids_.data() + begin, end - begin), skip_special_);
}

// Ids [group_start, read_) were just shown: they form a group. The window restarts at the last
// group holding a kept id (or stays at the oldest group while none does).
void IncrementalDecoder::advance(size_t group_start) {
  if (group_start < read_) {
    bool any = false;
    for (size_t i = group_start; i < read_ && !any; ++i) any = kept(ids_[i]);
    groups_.push_back({group_start, any});
  }
  for (size_t g = groups_.size(); g > 0; --g) {
    if (groups_[g - 1].kept) {
      prefix_ = groups_[g - 1].start;
      groups_.erase(groups_.begin(), groups_.begin() + static_cast<std::ptrdiff_t>(g - 1));
      break;
    }
  }
  prefix_text_ = decode_from(prefix_, read_);
}

std::string IncrementalDecoder::step(int32_t id) {
  ids_.push_back(id);
  const std::string now = decode_from(prefix_, ids_.size());
  if (ends_with_replacement(now)) return {};  // maybe an unfinished character: wait
  std::string out = text_after(prefix_text_, now);
  const size_t group_start = read_;
  read_ = ids_.size();
  advance(group_start);
  return out;
}

std::string IncrementalDecoder::flush() {
  if (read_ == ids_.size()) return {};
  const std::string now = decode_from(prefix_, ids_.size());
  std::string out = text_after(prefix_text_, now);
  const size_t group_start = read_;
  read_ = ids_.size();
  advance(group_start);
  return out;
}

}  // namespace tessera::tokenizers
