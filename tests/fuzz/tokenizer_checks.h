// What the tokenizer fuzz targets check of a loaded tokenizer and a text: encode gives ids inside
// the vocabulary, the same ids twice; decode gives valid UTF-8 with and without special tokens;
// every streamed piece (IncrementalDecoder, what the server sends) is valid UTF-8 and, with
// `stream_exact`, the pieces add up to one decode of all ids (ids from encode never end inside a
// byte-fallback run, the one documented difference); a token's text maps back to an id.
// check_tokenizer_on runs all four (add special tokens or not) x (skip them in decode or not);
// the parts are separate so a target can run one combination an input (tokenizer_encode).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "runtime/tokenizers/incremental_decoder.h"
#include "runtime/tokenizers/tokenizer.h"
#include "runtime/tokenizers/unicode.h"
#include "tests/fuzz/fuzz_target.h"

namespace tessera::fuzz {

// The ids of `text`, in the vocabulary and the same on a second encode. `encode_may_fail`: a
// tessera::Error from encode is an answer (a tokenizer.json the `tokenizers` crate also loads and
// then refuses to encode with, e.g. a WordPiece whose unk_token is not in its vocabulary):
// nullopt, and the checks stop there.
inline std::optional<std::vector<int32_t>> check_encode(const tokenizers::Tokenizer& tok,
                                                        std::string_view text, bool specials,
                                                        bool encode_may_fail) {
  const int32_t vocab = tok.vocab_size();
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, specials);
  } catch (const Error& e) {
    TESSERA_FUZZ_ASSERT(encode_may_fail, std::string("encode failed: ") + e.what());
    return std::nullopt;
  }
  for (int32_t id : ids) {
    TESSERA_FUZZ_ASSERT(id >= 0 && id < vocab,
                        "id " + std::to_string(id) + " outside [0, " + std::to_string(vocab) + ")");
  }
  TESSERA_FUZZ_ASSERT(tok.encode(text, specials) == ids, "encode is not deterministic");
  return ids;
}

// decode(ids, skip) is valid UTF-8, so is every streamed piece, and (`stream_exact`) the pieces
// add up to the decode. Returns the decode.
inline std::string check_decode(const tokenizers::Tokenizer& tok, const std::vector<int32_t>& ids,
                                bool skip, bool stream_exact) {
  namespace tk = tessera::tokenizers;
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
  return dec;
}

// Each id's token text (where it has one) maps back to an id.
inline void check_token_texts(const tokenizers::Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    const auto piece = tok.id_to_token(id);
    if (!piece) continue;  // a byte of the byte tokenizer, or a gap
    const auto back = tok.token_to_id(*piece);
    TESSERA_FUZZ_ASSERT(back.has_value(),
                        "token '" + *piece + "' of id " + std::to_string(id) + " has no id");
  }
}

// All of the above for both encodes and both decodes of each. Returns the ids of `text` without
// special tokens (empty where encode failed and `encode_may_fail`).
inline std::vector<int32_t> check_tokenizer_on(const tokenizers::Tokenizer& tok,
                                               std::string_view text, bool stream_exact,
                                               bool encode_may_fail = false) {
  std::vector<int32_t> plain;
  for (bool specials : {false, true}) {
    const auto ids = check_encode(tok, text, specials, encode_may_fail);
    if (!ids) return {};
    for (bool skip : {true, false}) check_decode(tok, *ids, skip, stream_exact);
    check_token_texts(tok, *ids);
    if (!specials) plain = *ids;
  }
  return plain;
}

}  // namespace tessera::fuzz
