// Text → ids → text with real tokenizers (tests/fuzz/tokenizers/: byte-level BPE as GPT-2, LLaMA 3
// and Qwen2 configure it, SentencePiece-style BPE with byte fallback, WordPiece, BPE with
// prefix/suffix, Unigram, all-MiniLM-L6-v2's, trained by the `tokenizers` package): the input is
// the text, as a client's prompt reaches /v1/completions or /tokenize. Properties: those of
// tokenizer_checks.h, the streamed text exactly one decode; the byte-level BPEs without a
// normalizer (gpt2_bytelevel, llama3_split) are lossless where no added token matched:
// decode(encode(x)) is x (invalid UTF-8 first replaced by U+FFFD, as encode documents).
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "common/error.h"
#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/tokenizer_checks.h"

namespace {
using tessera::tokenizers::Tokenizer;

const std::map<std::string, std::unique_ptr<Tokenizer>>& tokenizers() {
  static const auto all = [] {
    std::map<std::string, std::unique_ptr<Tokenizer>> m;
    for (const auto& e : std::filesystem::directory_iterator(TESSERA_FUZZ_DIR "/tokenizers")) {
      m[e.path().stem().string()] = Tokenizer::from_file(e.path().string());
    }
    TESSERA_FUZZ_ASSERT(m.size() >= 8, "tests/fuzz/tokenizers/ holds " + std::to_string(m.size()));
    return m;
  }();
  return all;
}
}  // namespace

TESSERA_FUZZ_TARGET(tokenizer_encode) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const auto& [name, tok] : tokenizers()) {
    const auto ids = tessera::fuzz::check_tokenizer_on(*tok, text, true);
    // Lossless unless an added token matched (some strip the spaces around them, as configured):
    // the added tokens' ids are those past the trained vocabulary, and the special ones.
    bool added = false;
    for (int32_t id : ids) added = added || id >= 320 || tok->is_special(id);
    if ((name == "gpt2_bytelevel" || name == "llama3_split") && !added) {
      const std::string want = tessera::tokenizers::unicode::to_valid_utf8(text);
      TESSERA_FUZZ_ASSERT(tok->decode(ids, false) == want,
                          name + ": decode(encode(x)) != x for x = '" + want + "'");
    }
  }
  return 0;
}
