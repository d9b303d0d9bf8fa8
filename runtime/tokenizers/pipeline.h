// The stages of a tokenizer.json pipeline, as the Rust `tokenizers` crate runs them:
//   added tokens split out → normalizer → pre-tokenizer → model → post-processor   (encode)
//   ids → token strings → decoder                                                  (decode)
// Offsets are not tracked (nothing here needs them), so a piece is its text plus whether it
// starts at the very beginning of the input (what Metaspace's prepend_scheme "first" asks).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizers/json_fields.h"
#include "runtime/tokenizers/regex.h"

namespace tessera::tokenizers {

struct Piece {
  std::string text;
  int32_t id = -1;        // >= 0: an added token, already tokenized; later stages leave it alone
  bool at_start = false;  // begins at byte 0 of the input
};
using Pieces = std::vector<Piece>;

// How a split treats the delimiters it found (the crate's SplitDelimiterBehavior).
enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
Behavior parse_behavior(const Field& f);
// {"String": "..."} (a literal) or {"Regex": "..."}, as Split and Replace write patterns.
Regex parse_pattern(const Field& f);

struct Span {
  size_t start, end;
  bool is_match;
};

// Cuts `p` along `spans` (which cover p.text in order) according to `behavior`; appends the
// non-empty parts to `out`.
void split_piece(Piece&& p, const std::vector<Span>& spans, Behavior behavior, Pieces& out);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `s` is valid UTF-8 and stays so.
  virtual void normalize(std::string& s) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (or rewrites) every piece that has no id yet; empty pieces are dropped.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-tokenized word (non-empty, valid UTF-8).
  virtual void tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual const std::string* id_to_token(int32_t id) const = 0;  // null when unknown
  virtual size_t vocab_size() const = 0;  // number of entries (the crate's get_vocab_size)
  virtual int32_t max_id() const = 0;     // -1 when empty
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
  // The largest id it inserts (-1: none). tokenizer.json gives these ids on their own, and
  // nothing ties them to the vocabulary: Tokenizer::vocab_size() counts them.
  virtual int32_t max_id() const { return -1; }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Whether the text of a prefix of the tokens, cut where its bytes end at a settled place (no
  // character the rest could still complete), is a prefix of the whole text: ByteLevel (bytes,
  // then one lossy UTF-8 pass) is; ByteFallback is not (a run of byte tokens that turns out
  // invalid becomes U+FFFD as a whole). IncrementalDecoder relies on it to bound what it holds.
  virtual bool prefix_stable() const { return false; }

  // Whether one more byte token ("<0xNN>") after a run of them whose bytes no later byte can make
  // valid UTF-8 leaves the text ending in U+FFFD: ByteFallback does (the run becomes U+FFFD, one
  // per byte), and a Sequence where the decoders before it keep byte tokens and those after it keep
  // a final U+FFFD (the LLaMA 2 / Mistral layout: Replace, ByteFallback, Fuse, Strip). Lets
  // IncrementalDecoder skip decoding while such a run grows (otherwise quadratic).
  virtual bool holds_invalid_byte_runs() const { return false; }
  // Leaves byte tokens as they are and makes none from other tokens (a decoder before
  // ByteFallback).
  virtual bool keeps_byte_tokens() const { return false; }
  // Text whose last token is U+FFFD still ends in U+FFFD after it (a decoder after ByteFallback).
  virtual bool keeps_final_replacement() const { return false; }
};

// The byte a ByteFallback token stands for ("<0x41>" -> 0x41, either case of hex digit), or -1.
int byte_fallback_value(std::string_view token);

// Metaspace's settings, shared by the pre-tokenizer and the decoder of that name.
enum class PrependScheme { kFirst, kNever, kAlways };
struct MetaspaceParams {
  char32_t replacement;
  PrependScheme scheme;
  bool split;
};
MetaspaceParams parse_metaspace(const Field& f);

// Factories from tokenizer.json sections (null JSON → nullptr for the optional stages). Each
// throws tessera::Error naming the field on malformed input or an unsupported "type".
std::unique_ptr<Normalizer> make_normalizer(const Field& f);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Field& f);
std::unique_ptr<Model> make_model(const Field& f);
std::unique_ptr<PostProcessor> make_post_processor(const Field& f);
// prefix + sequence + suffix when special tokens are asked for (what transformers' Llama and
// Gemma tokenizers install from add_bos_token / add_eos_token).
std::unique_ptr<PostProcessor> make_affix_processor(std::vector<int32_t> prefix,
                                                    std::vector<int32_t> suffix);
std::unique_ptr<Decoder> make_decoder(const Field& f);

}  // namespace tessera::tokenizers
