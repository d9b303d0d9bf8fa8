#include "runtime/serving/stop_strings.h"

#include <algorithm>

namespace tessera::serving {

StopStringProcessor::StopStringProcessor(std::vector<std::string> stops, bool include_stop)
    : include_stop_(include_stop) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

StopStringProcessor::Result StopStringProcessor::push(std::string_view delta) {
  Result r;
  if (stopped_) return r;
  held_.append(delta);
  if (stops_.empty()) {
    r.emit = std::move(held_);
    held_.clear();
    return r;
  }
  // The stop string that completes first wins (at equal ends, the longer one): the result is then
  // the same however the text was cut into deltas.
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const auto& s : stops_) {
    const size_t pos = held_.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (best_stop == nullptr || end < best + best_stop->size() ||
        (end == best + best_stop->size() && pos < best)) {
      best = pos;
      best_stop = &s;
    }
  }
  if (best_stop != nullptr) {
    stopped_ = true;
    r.stopped = true;
    r.matched = *best_stop;
    r.emit = held_.substr(0, include_stop_ ? best + best_stop->size() : best);
    held_.clear();
    return r;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, held_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  r.emit = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return r;
}

std::string StopStringProcessor::finish() {
  std::string out = std::move(held_);
  held_.clear();
  return stopped_ ? std::string() : out;
}

}  // namespace tessera::serving
