// tokenizer.json (Tokenizer::from_json_text): read from every model folder a server loads. Seeds:
// the malformed files tokenizer_test checks (tests/fuzz_corpus/tokenizer_json/) and small
// tokenizers trained with the `tokenizers` package (tests/fuzz/tokenizers/). Properties: a file
// is refused with tessera::Error or loads, and what loads encodes a fixed set of texts (scripts,
// emoji, whitespace runs, special-token look-alikes, invalid UTF-8) with the checks of
// tokenizer_checks.h, or refuses to encode with tessera::Error.
#include <string>

#include "common/error.h"
#include "runtime/tokenizers/tokenizer.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/fuzz/tokenizer_checks.h"

TESSERA_FUZZ_TARGET(tokenizer_json) {
  static const char* const kTexts[] = {
      "Hello world, it's 2024!",
      "  leading and trailing  \t\n\r\n",
      "h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x99\x82 \xe6\x9d\xb1\xe4\xba\xac "
      "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7",
      "<s>ab</s><|endoftext|>[CLS] [SEP]<unk>",
      "\xff\xfe\xc3 \xe2\x82",
      "",
  };
  std::unique_ptr<tessera::tokenizers::Tokenizer> tok;
  try {
    tok = tessera::tokenizers::Tokenizer::from_json_text(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
  } catch (const tessera::Error&) {
    return 0;
  }
  for (const char* text : kTexts) tessera::fuzz::check_tokenizer_on(*tok, text, false, true);
  return 0;
}
