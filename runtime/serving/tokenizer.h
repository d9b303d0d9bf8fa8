// What serving needs from a tokenizer: prompt encoding, chat rendering, and streaming decode of
// generated ids. The tokenizers branch's tessera::tokenizers::Tokenizer / IncrementalDecoder /
// ChatTemplate plug in behind this with a thin adapter; ByteTokenizer (byte_tokenizer.h) serves
// the byte-level built-in models and the tests.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::serving {

// One per generated sequence: turns ids into text as soon as the text is complete UTF-8.
class StreamDecoder {
 public:
  virtual ~StreamDecoder() = default;
  virtual std::string step(int32_t id) = 0;  // text completed by this id (may be "")
  virtual std::string flush() = 0;           // what is left at the end
};

struct PieceTable;    // guided.h
class JsonMaskCache;  // json_guide.h

class ServingTokenizer {
 public:
  virtual ~ServingTokenizer() = default;
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  virtual std::unique_ptr<StreamDecoder> stream_decoder(std::span<const int32_t> prompt_ids,
                                                        bool skip_special_tokens) const = 0;
  // The prompt text of a chat; throws tessera::Error when the model has no chat template.
  virtual std::string render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                                  const nlohmann::json& extra) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual std::vector<int32_t> eos_ids() const = 0;
  // The text of one token as logprobs show it (its bytes, possibly an incomplete character).
  virtual std::string token_text(int32_t id) const = 0;
  // The bytes a token stands for where decoding shows U+FFFD in their place: a part of a UTF-8
  // character, as byte-level and byte-fallback vocabularies hold (the next tokens complete it).
  // nullopt when the tokenizer cannot tell. Guided decoding reads answers as these bytes.
  virtual std::optional<std::string> token_bytes(int32_t id) const {
    (void)id;
    return std::nullopt;
  }
  // Every id's text for guided decoding (guided.h), built on first use; thread-safe.
  std::shared_ptr<const PieceTable> piece_table() const;
  // JSON mode's allowed-token sets for this vocabulary (json_guide.h), shared by its requests;
  // made on first use; thread-safe.
  std::shared_ptr<const JsonMaskCache> json_mask_cache() const;

 private:
  mutable std::once_flag pieces_once_;
  mutable std::shared_ptr<const PieceTable> pieces_;
  mutable std::once_flag json_masks_once_;
  mutable std::shared_ptr<const JsonMaskCache> json_masks_;
};

}  // namespace tessera::serving
