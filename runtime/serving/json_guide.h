// JSON mode for serving: OpenAI's response_format {"type": "json_object"} (and vLLM's
// structured_outputs {"json_object": true}). The answer is one JSON object (RFC 8259: strings
// with escapes and valid UTF-8, characters past U+FFFF escaped as a surrogate pair as Python's
// json.dumps writes them, numbers, true / false / null, nested objects and arrays up to
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
    kUnicode,      // \u and `count` hex digits so far (`lo`, `hi`: see feed())
    kPairSlash,    // after a high surrogate's \uD800-\uDBFF: the low one's '\' is due
    kPairU,        // ... and then its 'u'
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

// The ids a JSON answer may go on with, by what of the automaton's state a token can see: mode
// and counters; the stack's top levels, one more than the most a token can close; its depth
// where a token could empty the stack or pass kMaxDepth, else not. For one vocabulary and its end
// ids. One per tokenizer (ServingTokenizer::json_mask_cache()),
// shared by every JSON-mode request, so that a state met by any request costs one scan of the
// vocabulary, later ones a lookup. Thread-safe. Holds at most kMaxEntries sets and kMaxIds ids
// (64 MB; emptied when full).
class JsonMaskCache {
 public:
  JsonMaskCache(std::shared_ptr<const PieceTable> pieces, std::vector<int32_t> eos_ids);

  std::vector<int32_t> allowed(const JsonState& state) const;
  // The scan itself, uncached (tests and the benchmark compare the two): each token whose bytes
  // the automaton takes from `state`; the end ids when the object is complete (or no token fits).
  std::vector<int32_t> scan(const JsonState& state) const;
  const PieceTable& pieces() const { return *pieces_; }

  static constexpr size_t kMaxEntries = 4096;
  static constexpr size_t kMaxIds = size_t{16} << 20;

 private:
  std::string key(const JsonState& state) const;

  std::shared_ptr<const PieceTable> pieces_;
  std::vector<int32_t> eos_ids_;
  size_t max_closes_ = 0;  // the most '}' and ']' bytes in one token
  size_t max_opens_ = 0;   // the most '{' and '[' bytes in one token
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, std::shared_ptr<const std::vector<int32_t>>> sets_;
  mutable size_t ids_held_ = 0;
};

class JsonObjectConstraint final : public OutputConstraint {
 public:
  explicit JsonObjectConstraint(std::shared_ptr<const JsonMaskCache> masks);
  // With a cache of its own (tests).
  JsonObjectConstraint(std::shared_ptr<const PieceTable> pieces, std::vector<int32_t> eos_ids);

  std::vector<int32_t> allowed(std::span<const int32_t> output_ids) const override;
  std::vector<int32_t> scan(const JsonState& state) const { return masks_->scan(state); }
  // The state after `output_ids`' text. Remembers the states of the last few outputs it was asked
  // about (a request's sequences, from the sampler and from the handler), so that an output that
  // grew by a token costs that token's bytes, not the whole text again.
  JsonState state_of(std::span<const int32_t> output_ids) const;
  bool complete(std::span<const int32_t> output_ids) const override {
    return state_of(output_ids).done();
  }

 private:
  std::shared_ptr<const JsonMaskCache> masks_;
  // state_of's memory: outputs and their states, least recently used first out.
  struct Known {
    std::vector<int32_t> ids;
    JsonState state;
    uint64_t used = 0;
  };
  mutable std::mutex known_mu_;
  mutable std::vector<Known> known_;
  mutable uint64_t clock_ = 0;
  static constexpr size_t kMaxKnown = 16;
};

}  // namespace tessera::serving
