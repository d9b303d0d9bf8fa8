// Stop strings over a request's streamed text (OpenAI `stop`): one OutputProcessor per request
// takes the text each new token completes (from the tokenizer's IncrementalDecoder) and returns
// the text that may be shown now. Text that could still turn into a stop string is held back and
// released as soon as it cannot; on a match the text is cut where the stop string starts (kept
// when include_stop_str_in_output) and the request is stopped. When several stop strings match
// within one delta, the one that ends first wins (as if the text had arrived byte by byte), then
// the one that starts first. Matching is on bytes: UTF-8 text and stop strings are cut only at
// character boundaries, since a stop string starts with a lead byte. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/scheduler/sampling_params.h"

namespace tessera::engine {

struct TextDelta {
  std::string text;         // to emit now (may be "")
  bool stopped = false;     // a stop string matched: end the request (finish_reason "stop")
  int32_t stop_index = -1;  // which of the stop strings, when stopped
};

class OutputProcessor {
 public:
  // Throws naming the index of an empty stop string.
  OutputProcessor(std::vector<std::string> stop, bool include_stop_str_in_output);
  explicit OutputProcessor(const scheduler::SamplingParams& params)
      : OutputProcessor(params.stop, params.include_stop_str_in_output) {}

  // The text completed by one more token. After a stop, returns empty deltas.
  TextDelta step(std::string_view delta);
  // The request ended for another reason (eos, length, abort): the held-back text, which can no
  // longer become a stop string. Empty after a stop.
  std::string finish();

  bool stopped() const { return stopped_; }
  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stop_;
  bool include_stop_;
  size_t max_len_ = 0;  // longest stop string
  std::string held_;    // received, not yet emitted
  bool stopped_ = false;
};

}  // namespace tessera::engine
