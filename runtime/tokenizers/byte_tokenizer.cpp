#include "runtime/tokenizers/byte_tokenizer.h"

#include <cstdio>

#include "common/error.h"

namespace tessera::tokenizers {

std::vector<int64_t> ByteTokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() + 1);
  if (add_bos) ids.push_back(kBos);
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (auto id : ids) {
    TESSERA_CHECK(id >= 0 && id < kVocabSize, "token id ", id,
                  " is outside the byte vocabulary [0, ", kVocabSize, ")");
    if (id < 256) out.push_back(static_cast<char>(id));
  }
  return out;
}

std::string escape_bytes(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

}  // namespace tessera::tokenizers
