#include "runtime/serving/byte_tokenizer.h"

#include "common/error.h"

namespace tessera::serving {
namespace {

// Bytes a sequence starting with `lead` has in all, or 0 when `lead` cannot start one.
int utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Whether bytes[i..i+n) is a valid sequence (no overlong forms, surrogates or > U+10FFFF).
bool valid_sequence(std::string_view bytes, size_t i, int n) {
  if (i + n > bytes.size()) return false;
  const auto b = [&](size_t k) { return static_cast<unsigned char>(bytes[i + k]); };
  for (int k = 1; k < n; ++k) {
    if (!is_continuation(b(k))) return false;
  }
  if (n == 3) {
    if (b(0) == 0xE0 && b(1) < 0xA0) return false;   // overlong
    if (b(0) == 0xED && b(1) >= 0xA0) return false;  // surrogate
  }
  if (n == 4) {
    if (b(0) == 0xF0 && b(1) < 0x90) return false;   // overlong
    if (b(0) == 0xF4 && b(1) >= 0x90) return false;  // > U+10FFFF
  }
  return true;
}

class ByteStreamDecoder : public StreamDecoder {
 public:
  explicit ByteStreamDecoder(bool skip_special) : skip_special_(skip_special) {}

  std::string step(int32_t id) override {
    if (id >= 0 && id < 256) {
      pending_.push_back(static_cast<char>(id));
    } else if (!skip_special_) {
      pending_ += id == ByteTokenizer::kBos ? "<bos>" : id == ByteTokenizer::kEos ? "<eos>" : "";
    }
    const size_t n = complete_utf8_prefix(pending_);
    std::string out = sanitize_utf8(std::string_view(pending_).substr(0, n));
    pending_.erase(0, n);
    return out;
  }
  std::string flush() override {
    std::string out = sanitize_utf8(pending_);
    pending_.clear();
    return out;
  }

 private:
  bool skip_special_;
  std::string pending_;
};

}  // namespace

size_t complete_utf8_prefix(std::string_view bytes) {
  // Only the last (up to) 3 bytes can be the start of an unfinished sequence.
  const size_t size = bytes.size();
  for (size_t back = 1; back <= 3 && back <= size; ++back) {
    const size_t i = size - back;
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (is_continuation(c)) continue;
    const int n = utf8_length(c);
    if (n > static_cast<int>(back)) {
      // An unfinished sequence if what is there so far could still become valid.
      for (size_t k = i + 1; k < size; ++k) {
        if (!is_continuation(static_cast<unsigned char>(bytes[k]))) return size;
      }
      return i;
    }
    return size;
  }
  return size;
}

std::string sanitize_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const int n = utf8_length(static_cast<unsigned char>(bytes[i]));
    if (n > 0 && valid_sequence(bytes, i, n)) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    }
  }
  return out;
}

std::vector<int32_t> ByteTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 1);
  if (add_special_tokens) ids.push_back(kBos);
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    TESSERA_CHECK(id >= 0 && id < kVocabSize, "token id ", id,
                  " is outside the byte vocabulary [0, ", kVocabSize, ")");
    if (id < 256) {
      bytes.push_back(static_cast<char>(id));
    } else if (!skip_special_tokens) {
      bytes += id == kBos ? "<bos>" : "<eos>";
    }
  }
  return sanitize_utf8(bytes);
}

std::unique_ptr<StreamDecoder> ByteTokenizer::stream_decoder(std::span<const int32_t>,
                                                             bool skip_special_tokens) const {
  return std::make_unique<ByteStreamDecoder>(skip_special_tokens);
}

std::string ByteTokenizer::render_chat(const nlohmann::json& messages, bool add_generation_prompt,
                                       const nlohmann::json&) const {
  TESSERA_CHECK(messages.is_array(), "messages must be a list, got ", messages.type_name());
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    TESSERA_CHECK(m.is_object() && m.contains("role") && m["role"].is_string(), "messages[", i,
                  "] needs a string 'role'");
    std::string content;
    if (m.contains("content") && m["content"].is_string()) {
      content = m["content"].get<std::string>();
    } else if (m.contains("content") && m["content"].is_array()) {
      // OpenAI's typed content: the text parts, concatenated.
      for (const auto& part : m["content"]) {
        TESSERA_CHECK(part.is_object() && part.contains("type") && part["type"] == "text" &&
                          part.contains("text") && part["text"].is_string(),
                      "messages[", i, "].content: only parts of type 'text' are supported");
        content += part["text"].get<std::string>();
      }
    } else {
      TESSERA_CHECK(!m.contains("content") || m["content"].is_null(), "messages[", i,
                    "].content must be a string or a list of text parts");
    }
    out += "<|im_start|>" + m["role"].get<std::string>() + "\n" + content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string ByteTokenizer::token_text(int32_t id) const {
  if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
  if (id == kBos) return "<bos>";
  if (id == kEos) return "<eos>";
  return "";
}

}  // namespace tessera::serving
