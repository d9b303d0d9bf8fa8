#include "runtime/engine/output_processor.h"

#include <algorithm>

#include "common/error.h"

namespace tessera::engine {

OutputProcessor::OutputProcessor(std::vector<std::string> stop, bool include_stop_str_in_output)
    : stop_(std::move(stop)), include_stop_(include_stop_str_in_output) {
  for (size_t i = 0; i < stop_.size(); ++i) {
    TESSERA_CHECK(!stop_[i].empty(), "stop[", i, "] must not be empty");
    max_len_ = std::max(max_len_, stop_[i].size());
  }
}

TextDelta OutputProcessor::step(std::string_view delta) {
  TextDelta out;
  if (stopped_) {
    out.stopped = true;
    return out;
  }
  if (stop_.empty()) {
    out.text.assign(delta);
    return out;
  }
  // Matches can only involve the held text and the new delta: earlier text was released because
  // no stop string could start in it.
  const size_t old = held_.size();
  held_.append(delta);
  size_t best_end = std::string::npos, best_start = 0;
  int32_t best = -1;
  for (size_t i = 0; i < stop_.size(); ++i) {
    const std::string& s = stop_[i];
    // The first occurrence that ends inside the new text.
    const size_t from = old >= s.size() ? old - s.size() + 1 : 0;
    const size_t at = held_.find(s, from);
    if (at == std::string::npos) continue;
    const size_t end = at + s.size();
    if (end < best_end || (end == best_end && at < best_start)) {
      best_end = end;
      best_start = at;
      best = static_cast<int32_t>(i);
    }
  }
  if (best >= 0) {
    out.text = held_.substr(0, include_stop_ ? best_end : best_start);
    out.stopped = true;
    out.stop_index = best;
    stopped_ = true;
    held_.clear();
    return out;
  }
  // Hold back the longest tail that is the start of some stop string.
  size_t hold = 0;
  for (size_t len = std::min(held_.size(), max_len_ - 1); len > 0 && hold == 0; --len) {
    const std::string_view tail = std::string_view(held_).substr(held_.size() - len);
    for (const std::string& s : stop_) {
      if (s.size() > len && std::string_view(s).substr(0, len) == tail) {
        hold = len;
        break;
      }
    }
  }
  out.text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string OutputProcessor::finish() {
  std::string rest;
  if (!stopped_) rest.swap(held_);
  held_.clear();
  return rest;
}

}  // namespace tessera::engine
