// Streaming detokenization, one per request: feed generated ids one at a time, get the text each
// id completes. Only complete UTF-8 is ever returned: while the decoded text ends in U+FFFD (a
// character split across byte tokens, or bytes that never form one) the text is held back, and
// flush() gives whatever is left at the end, invalid bytes as U+FFFD as the decoders write them.
//
// Each step decodes a short window of ids and compares it with the window's text before the new
// id. The window starts where an earlier step's text began (so never inside a character made of
// byte tokens) and holds at least one id the decode keeps (not a skipped special token), so
// decoders that treat the first token differently (Metaspace, WordPiece, Strip) give the same
// text as one decode of all ids. One difference remains: when a request ends inside a byte-
// fallback run that is not valid UTF-8, the crate's decode turns the whole run into U+FFFD,
// while the stream has already shown the run's complete characters.
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

  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  bool kept(int32_t id) const;
  std::string decode_from(size_t begin, size_t end) const;
  void advance(size_t group_start);

  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  // Where the text of each step began, and whether its ids hold one the decode keeps.
  struct Group {
    size_t start;
    bool kept;
  };
  std::vector<Group> groups_;
  size_t prefix_ = 0;        // window start
  size_t read_ = 0;          // ids before this are shown
  std::string prefix_text_;  // decode(ids_[prefix_, read_))
};

}  // namespace tessera::tokenizers
