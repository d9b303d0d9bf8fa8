#include "runtime/serving/hf_tokenizer.h"

#include <filesystem>

#include "common/error.h"
#include "runtime/serving/byte_tokenizer.h"
#include "runtime/tokenizers/byte_level.h"
#include "runtime/tokenizers/chat_template.h"
#include "runtime/tokenizers/incremental_decoder.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::serving {
namespace {

class HfStreamDecoder : public StreamDecoder {
 public:
  HfStreamDecoder(const tokenizers::Tokenizer& tok, std::span<const int32_t> prompt_ids,
                  bool skip_special_tokens)
      : dec_(tok, prompt_ids, skip_special_tokens) {}
  std::string step(int32_t id) override { return dec_.step(id); }
  std::string flush() override { return dec_.flush(); }

 private:
  tokenizers::IncrementalDecoder dec_;
};

// The byte tokenizer with a given chat template in place of its ChatML.
class TemplatedByteTokenizer : public ByteTokenizer {
 public:
  explicit TemplatedByteTokenizer(const std::string& source)
      : chat_(tokenizers::ChatTemplate::from_string(source)) {}
  std::string render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                          const nlohmann::json& extra) const override {
    return chat_.render(messages, add_generation_prompt,
                        extra.is_object() ? extra : nlohmann::json::object());
  }

 private:
  tokenizers::ChatTemplate chat_;
};

}  // namespace

HfTokenizer::HfTokenizer(const std::string& dir, const std::string& chat_template)
    : tok_(tokenizers::Tokenizer::from_folder(dir)),
      chat_(std::make_unique<tokenizers::ChatTemplate>(
          tokenizers::ChatTemplate::from_folder(dir, chat_template, "--chat-template"))) {}

HfTokenizer::~HfTokenizer() = default;

std::vector<int32_t> HfTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return tok_->encode(text, add_special_tokens);
}

std::string HfTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  return tok_->decode(ids, skip_special_tokens);
}

std::unique_ptr<StreamDecoder> HfTokenizer::stream_decoder(std::span<const int32_t> prompt_ids,
                                                           bool skip_special_tokens) const {
  return std::make_unique<HfStreamDecoder>(*tok_, prompt_ids, skip_special_tokens);
}

std::string HfTokenizer::render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                                     const nlohmann::json& extra) const {
  TESSERA_CHECK(!chat_->empty(),
                "this model has no chat template (tokenizer_config.json \"chat_template\"); use "
                "/v1/completions");
  return chat_->render(messages, add_generation_prompt,
                       extra.is_object() ? extra : nlohmann::json::object());
}

int32_t HfTokenizer::vocab_size() const { return tok_->vocab_size(); }

std::vector<int32_t> HfTokenizer::eos_ids() const { return tok_->eos_ids(); }

std::string HfTokenizer::token_text(int32_t id) const {
  const int32_t one[1] = {id};
  return tok_->decode(std::span<const int32_t>(one, 1), false);
}

std::optional<std::string> HfTokenizer::token_bytes(int32_t id) const {
  const std::optional<std::string> token = tok_->id_to_token(id);
  if (!token) return std::nullopt;
  std::string bytes;
  if (const int b = tokenizers::byte_fallback_value(*token); b >= 0) {
    bytes.push_back(static_cast<char>(b));
  } else if (!tokenizers::unicode_to_bytes(*token, bytes)) {
    return std::nullopt;
  }
  // Only what the decoder itself makes of the token: its text with U+FFFD for what is not whole
  // characters (a vocabulary that is not byte-level fails this).
  const int32_t one[1] = {id};
  if (tokenizers::unicode::to_valid_utf8(bytes) !=
      tok_->decode(std::span<const int32_t>(one, 1), false)) {
    return std::nullopt;
  }
  return bytes;
}

std::shared_ptr<ServingTokenizer> load_serving_tokenizer(const std::string& dir,
                                                         const std::string& chat_template) {
  if (std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json")) {
    return std::make_shared<HfTokenizer>(dir, chat_template);
  }
  if (!chat_template.empty()) return std::make_shared<TemplatedByteTokenizer>(chat_template);
  return std::make_shared<ByteTokenizer>();
}

}  // namespace tessera::serving
