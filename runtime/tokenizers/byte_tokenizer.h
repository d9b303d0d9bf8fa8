// Byte-level tokenizer of the built-in models: ids 0-255 are the bytes of UTF-8 text, then <bos>
// and <eos>. Any text round-trips exactly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::tokenizers {

class ByteTokenizer {
 public:
  static constexpr int64_t kBos = 256;
  static constexpr int64_t kEos = 257;
  static constexpr int64_t kVocabSize = 258;

  std::vector<int64_t> encode(std::string_view text, bool add_bos = true) const;
  // Special tokens are dropped; ids outside the vocabulary throw naming the id.
  std::string decode(const std::vector<int64_t>& ids) const;
};

// Printable form of decoded bytes: printable ASCII as is, everything else as \xNN, so random
// model output never breaks a terminal.
std::string escape_bytes(std::string_view bytes);

}  // namespace tessera::tokenizers

// The built-in models and `generate` name these from tessera::runtime (they predate this folder).
namespace tessera::runtime {
using tokenizers::ByteTokenizer;
using tokenizers::escape_bytes;
}  // namespace tessera::runtime
