// JSON mode for serving: OpenAI's response_format {"type": "json_object"} (and vLLM's
// structured_outputs {"json_object": true}). The answer is one JSON object (RFC 8259: strings
// with escapes and valid UTF-8, numbers, true / false / null, nested objects and arrays up to
// kMaxDepth), optional whitespace before it and between tokens, nothing after it. A byte-level
// pushdown automaton decides which tokens may come next: a token is allowed when each of its
// bytes is a valid continuation; the end of sequence only once the object is complete. Torch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/scheduler/sampling_params.h"
#include "runtime/serving/guided.h"

namespace tessera::serving {

// The automaton's state after some bytes. Containers on `stack` ('{' or '[').
struct JsonState {
  enum class Mode : uint8_t {
    kStart,        // before the top-level object (whitespace or '{')
    kValue,        // a value is expected
    kArrayFirst,   // after '[': a value or ']'
    kObjectFirst,  // after '{': a key or '}'
    kKey,          // after ',' in an object: a key
    kColon,        // after a key: ':'
    kAfterValue,   // ',' or the container's end
    kString,       // inside a string (key or value)
    kEscape,       // after '\' in a string
    kUnicode,      // \u and `count` hex digits so far
    kUtf8,         // `count` continuation bytes still due, the next in [lo, hi]
    kNumber,       // inside a number (`count` is its sub-state)
    kLiteral,      // inside true / false / null (`literal`, `count` bytes matched)
    kDone,         // the object is complete
    kError,
  };
  Mode mode = Mode::kStart;
  bool key = false;  // the string being read is a key
  uint8_t count = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  const char* literal = nullptr;
  std::string stack;  // short: no allocation while a token is tried from a copy
  static constexpr size_t kMaxDepth = 32;

  // Feeds one byte; false (and kError) when no JSON object can continue this way.
  bool feed(unsigned char c);
  bool feed(std::string_view bytes);
  bool done() const { return mode == Mode::kDone; }
};

class JsonObjectConstraint final : public OutputConstraint {
 public:
  JsonObjectConstraint(std::shared_ptr<const PieceTable> pieces, std::vector<int32_t> eos_ids);

  // Allowed ids are cached by what of the state a token can see (mode, its counters, the stack's
  // depth and its top levels, as many as the longest token could pop), so that a long string or
  // a repeated structure costs one scan of the vocabulary, not one a step.
  std::vector<int32_t> allowed(std::span<const int32_t> output_ids) const override;
  // The scan itself, uncached (tests compare the two).
  std::vector<int32_t> scan(const JsonState& state) const;
  // The state after `output_ids`' text.
  JsonState state_of(std::span<const int32_t> output_ids) const;
  bool complete(std::span<const int32_t> output_ids) const override {
    return state_of(output_ids).done();
  }

 private:
  std::string cache_key(const JsonState& state) const;

  std::shared_ptr<const PieceTable> pieces_;
  std::vector<int32_t> eos_ids_;
  size_t longest_piece_ = 0;
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
  static constexpr size_t kMaxCached = 4096;
};

}  // namespace tessera::serving
