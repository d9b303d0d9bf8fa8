// Streaming detokenization, one per request: feed generated ids one at a time, get the text each
// id completes. Only complete UTF-8 is ever returned: while the decoded text ends in U+FFFD (a
// character split across byte tokens, or bytes that never form one) the text is held back, and
// flush() gives whatever is left at the end, invalid bytes as U+FFFD as the decoders write them.
//
// Each step decodes a short window of ids and compares it with the window's text before the new
// id. The window holds only ids the decode keeps (decode drops skipped special tokens and ids with
// no token before its decoder runs, so leaving them out changes nothing, and a long run of them
// costs nothing). It starts where an earlier step's text began (so never inside a character made
// of byte tokens) and holds at least one kept id, so decoders that treat the first token
// differently (Metaspace, WordPiece, Strip) give the same text as one decode of all ids. One
// difference remains: a byte-fallback run that spells complete characters and then bytes that
// form none. The stream shows each character as it completes; the crate's decode turns the whole
// run into U+FFFD, one per byte, and the stream then shows that text too. (Holding every
// byte-token character until its run ends would match, but delay all text a byte-fallback
// vocabulary spells in bytes, such as rare CJK characters, until the next other token.)
//
// Held text costs a decode of the window per step, so a long run of held ids would be quadratic.
// Two bounds: a prefix-stable decode shows what can no longer change (settle, below); with a
// byte-fallback decode (LLaMA 2 / Mistral), once the run of byte tokens at the window's end is
// invalid UTF-8 past repair, each further byte token only adds a U+FFFD to held text, so it is
// taken without a decode (8,000 invalid bytes: 1.6 s before, linear now). And a U+FFFD that byte
// tokens spell whole (EF BF BD) is shown like any character, not held as if unfinished (the fuzzer
// found 4,000 of them taking 78 s under ASan, quadratic).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tessera::tokenizers {

class Tokenizer;

class IncrementalDecoder {
 public:
  // `prompt_ids` give the context the output continues (the text they decode to is not
  // returned). The tokenizer must outlive the decoder.
  IncrementalDecoder(const Tokenizer& tokenizer, std::span<const int32_t> prompt_ids,
                     bool skip_special_tokens);

  std::string step(int32_t id);  // the text newly completed by this id (may be "")
  std::string flush();           // the rest, at the end of the request

  // Held ids past which a prefix-stable decode (Tokenizer::decode_is_prefix_stable: the byte
  // tokenizer, ByteLevel BPEs) shows what can no longer change; other decoders hold until the
  // text stops ending in U+FFFD, as the crate's decode needs (ByteFallback: a run of byte tokens
  // that is not valid UTF-8 becomes U+FFFD as a whole).
  static constexpr size_t kMaxHeld = 16;

 private:
  bool kept(int32_t id) const;
  void shown(size_t end);
  std::string settle(const std::string& now);
  std::string trailing_bytes() const;
  bool byte_run_is_dead() const;
  bool byte_run_is_whole() const;

  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> window_;  // the kept ids from the start of the last step that gave text
  size_t read_ = 0;              // window_[0, read_) is shown
  std::string shown_text_;       // decode(window_[0, read_))
  // window_ ends in byte-fallback tokens whose bytes no later byte makes valid UTF-8 (and the
  // decode holds such runs: Tokenizer::held_fallback_byte).
  bool dead_run_ = false;
};

}  // namespace tessera::tokenizers
