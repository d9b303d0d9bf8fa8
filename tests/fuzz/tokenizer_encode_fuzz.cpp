// Text → ids → text with real tokenizers (tests/fuzz/tokenizers/: byte-level BPE as GPT-2, LLaMA 3
// and Qwen2 configure it, SentencePiece-style BPE with byte fallback, WordPiece, BPE with
// prefix/suffix, Unigram, all-MiniLM-L6-v2's, trained by the `tokenizers` package). The input's
// first byte chooses one of the 9 tokenizers and one of the 4 (add special tokens or not) x (skip
// them in decode or not) of tokenizer_checks.h (byte % 36); the rest is the text, as a client's
// prompt reaches /v1/completions or /tokenize. One combination an input, not all 36: the fuzzer
// explores the choice byte as any other, and an input costs 1/36 of the work (all 36 ran ~55
// inputs/s under ASan, too slow to reach the 10 million executions the reliability issue asks).
// Properties: those of tokenizer_checks.h, the streamed text exactly one decode; the byte-level
// BPEs without a normalizer (gpt2_bytelevel, llama3_split) are lossless where no added token
// matched: decode(encode(x)) is x (invalid UTF-8 first replaced by U+FFFD, as encode documents).
#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/tokenizer_checks.h"

namespace {
using tessera::tokenizers::Tokenizer;

// By file name, in name order (the choice byte's meaning must not depend on the directory order).
const std::vector<std::pair<std::string, std::unique_ptr<Tokenizer>>>& tokenizers() {
  static const auto all = [] {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(TESSERA_FUZZ_DIR "/tokenizers")) {
      files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    std::vector<std::pair<std::string, std::unique_ptr<Tokenizer>>> v;
    for (const auto& f : files) v.emplace_back(f.stem().string(), Tokenizer::from_file(f.string()));
    TESSERA_FUZZ_ASSERT(v.size() == 9, "tests/fuzz/tokenizers/ holds " + std::to_string(v.size()) +
                                           " tokenizers; the choice byte expects 9");
    return v;
  }();
  return all;
}
}  // namespace

TESSERA_FUZZ_TARGET(tokenizer_encode) {
  if (size == 0) return 0;
  const unsigned choice = data[0] % 36;
  const auto& [name, tok] = tokenizers()[choice % 9];
  const bool specials = (choice / 9) & 1;
  const bool skip = (choice / 9) & 2;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto ids = tessera::fuzz::check_encode(*tok, text, specials, false);
  const std::string dec = tessera::fuzz::check_decode(*tok, *ids, skip, true);
  tessera::fuzz::check_token_texts(*tok, *ids);
  // Lossless unless an added token matched (some strip the spaces around them, as configured):
  // the added tokens' ids are those past the trained vocabulary, and the special ones. Without
  // special tokens added, so that nothing but the text's own tokens is in the ids.
  bool added = false;
  for (int32_t id : *ids) added = added || id >= 320 || tok->is_special(id);
  if ((name == "gpt2_bytelevel" || name == "llama3_split") && !specials && !added) {
    const std::string want = tessera::tokenizers::unicode::to_valid_utf8(text);
    // With nothing added or special, skipping special tokens changes nothing: the decode above.
    TESSERA_FUZZ_ASSERT(dec == want, name + ": decode(encode(x)) != x for x = '" + want + "'");
  }
  return 0;
}
