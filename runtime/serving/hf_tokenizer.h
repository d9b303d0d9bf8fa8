// The tokenizers part (runtime/tokenizers: tokenizer.json, streaming detokenization, chat
// templates) behind ServingTokenizer, and the choice of tokenizer for a model folder: the folder's
// tokenizer.json when it has one, else the byte tokenizer of the built-in models (ChatML chats).
#pragma once

#include <memory>
#include <string>

#include "runtime/serving/tokenizer.h"

namespace tessera::tokenizers {
class Tokenizer;
class ChatTemplate;
}  // namespace tessera::tokenizers

namespace tessera::serving {

class HfTokenizer : public ServingTokenizer {
 public:
  // Reads `dir`/tokenizer.json (+ tokenizer_config.json: specials, chat_template). Throws
  // tessera::Error naming the file on a malformed one.
  // `chat_template`: a template source in place of the folder's ("" = the folder's).
  explicit HfTokenizer(const std::string& dir, const std::string& chat_template = "");
  ~HfTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  std::unique_ptr<StreamDecoder> stream_decoder(std::span<const int32_t> prompt_ids,
                                                bool skip_special_tokens) const override;
  // Throws tessera::Error when the folder has no chat template.
  std::string render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                          const nlohmann::json& extra) const override;
  int32_t vocab_size() const override;
  std::vector<int32_t> eos_ids() const override;
  std::string token_text(int32_t id) const override;
  // From the vocabulary's form of the token: a byte-fallback token ("<0xE2>") or byte-level
  // symbols (GPT-2's alphabet), checked to decode to what decode() gives.
  std::optional<std::string> token_bytes(int32_t id) const override;

 private:
  std::unique_ptr<tokenizers::Tokenizer> tok_;
  std::unique_ptr<tokenizers::ChatTemplate> chat_;
};

// HfTokenizer when `dir` has tokenizer.json, else ByteTokenizer (ids 0-255 bytes, 256 <bos>,
// 257 <eos>: the built-in models' vocabulary). `chat_template` (a Jinja source, "" = none)
// renders chats in place of the folder's template (or the byte tokenizer's ChatML).
std::shared_ptr<ServingTokenizer> load_serving_tokenizer(const std::string& dir,
                                                         const std::string& chat_template = "");

}  // namespace tessera::serving
