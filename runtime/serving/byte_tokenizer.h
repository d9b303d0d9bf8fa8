// Byte-level tokenizer for serving: ids 0-255 are UTF-8 bytes, 256 <bos>, 257 <eos> (the same ids
// as runtime/tokenizer.h, which the built-in `tiny` model uses). Its chat template is ChatML,
// rendered without special tokens:
//   <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
#pragma once

#include "runtime/serving/tokenizer.h"

namespace tessera::serving {

class ByteTokenizer : public ServingTokenizer {
 public:
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kVocabSize = 258;

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  std::unique_ptr<StreamDecoder> stream_decoder(std::span<const int32_t> prompt_ids,
                                                bool skip_special_tokens) const override;
  std::string render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                          const nlohmann::json& extra) const override;
  int32_t vocab_size() const override { return kVocabSize; }
  std::vector<int32_t> eos_ids() const override { return {kEos}; }
  std::string token_text(int32_t id) const override;
  std::optional<std::string> token_bytes(int32_t id) const override {
    if (id < 0 || id >= 256) return std::nullopt;
    return std::string(1, static_cast<char>(id));
  }
};

// Length of the longest prefix of `bytes` that is complete UTF-8 (an incomplete sequence at the
// end is held back; invalid bytes count as complete and are replaced by U+FFFD when emitted).
size_t complete_utf8_prefix(std::string_view bytes);
// `bytes` with every invalid UTF-8 sequence replaced by U+FFFD (so JSON output is always valid).
std::string sanitize_utf8(std::string_view bytes);

}  // namespace tessera::serving
