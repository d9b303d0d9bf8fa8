// What the tokenizer fuzz targets check of a loaded tokenizer and a text: encode gives ids inside
// the vocabulary, the same ids twice; decode gives valid UTF-8 with and without special tokens;
// every streamed piece (IncrementalDecoder, what the server sends) is valid UTF-8 and, with
// `stream_exact`, the pieces add up to one decode of all ids (ids from encode never end inside a
// byte-fallback run, the one documented difference); a token's text maps back to an id.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "runtime/tokenizers/incremental_decoder.h"
#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"
#include "tests/fuzz/fuzz_target.h"

namespace tessera::fuzz {

// Returns the ids of `text` (without special tokens). `encode_may_fail`: a tessera::Error from
// encode is an answer (a tokenizer.json the `tokenizers` crate also loads and then refuses to
// encode with, e.g. a WordPiece whose unk_token is not in its vocabulary); the checks stop there.
inline std::vector<int32_t> check_tokenizer_on(const tokenizers::Tokenizer& tok,
                                               std::string_view text, bool stream_exact,
                                               bool encode_may_fail = false) {
  namespace tk = tessera::tokenizers;
  const int32_t vocab = tok.vocab_size();
  std::vector<int32_t> plain;
  for (bool specials : {false, true}) {
    std::vector<int32_t> ids;
    try {
      ids = tok.encode(text, specials);
    } catch (const Error& e) {
      TESSERA_FUZZ_ASSERT(encode_may_fail, std::string("encode failed: ") + e.what());
      return {};
    }
    for (int32_t id : ids) {
      TESSERA_FUZZ_ASSERT(id >= 0 && id < vocab, "id " + std::to_string(id) + " outside [0, " +
                                                     std::to_string(vocab) + ")");
    }
    TESSERA_FUZZ_ASSERT(tok.encode(text, specials) == ids, "encode is not deterministic");
    for (bool skip : {true, false}) {
      const std::string dec = tok.decode(ids, skip);
      TESSERA_FUZZ_ASSERT(tk::unicode::is_valid_utf8(dec), "decode gave invalid UTF-8");
      tk::IncrementalDecoder stream(tok, {}, skip);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string piece = stream.step(id);
        TESSERA_FUZZ_ASSERT(tk::unicode::is_valid_utf8(piece), "a streamed piece is invalid UTF-8");
        streamed += piece;
      }
      streamed += stream.flush();
      if (stream_exact) {
        TESSERA_FUZZ_ASSERT(streamed == dec,
                            "streamed text '" + streamed + "' != decode '" + dec + "'");
      }
    }
    for (int32_t id : ids) {
      const auto piece = tok.id_to_token(id);
      if (!piece) continue;  // a byte of the byte tokenizer, or a gap
      const auto back = tok.token_to_id(*piece);
      TESSERA_FUZZ_ASSERT(back.has_value(),
                          "token '" + *piece + "' of id " + std::to_string(id) + " has no id");
    }
    if (!specials) plain = ids;
  }
  return plain;
}

}  // namespace tessera::fuzz
