// A model folder's tokenizer: tokenizer.json read as the Hugging Face `tokenizers` library reads
// it (BPE, WordPiece, WordLevel, Unigram with their normalizers, pre-tokenizers, post-processors
// and decoders, and added tokens), or, for a folder without one, the byte tokenizer of the
// built-in models. Thread-safe: encode/decode are const and may run on many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::tokenizers {

class AddedVocabulary;
class Normalizer;
class PreTokenizer;
class Model;
class PostProcessor;
class Decoder;

class Tokenizer {
 public:
  // Throws tessera::Error naming the file and the field on a malformed tokenizer.json.
  static std::unique_ptr<Tokenizer> from_file(const std::string& tokenizer_json_path);
  // `origin` names the source in error messages.
  static std::unique_ptr<Tokenizer> from_json_text(const std::string& json_text,
                                                   const std::string& origin = "tokenizer.json");
  // A model folder: tokenizer.json (+ tokenizer_config.json for bos/eos and transformers'
  // add_bos_token/add_eos_token, generation_config.json for more eos ids); a folder without any
  // tokenizer file → the byte tokenizer that `--model tiny` uses.
  static std::unique_ptr<Tokenizer> from_folder(const std::string& dir);
  static std::unique_ptr<Tokenizer> byte_tokenizer();
  ~Tokenizer();

  // Text → ids. Invalid UTF-8 in `text` is first replaced by U+FFFD, one per maximal invalid
  // subsequence (what Python's bytes.decode(errors="replace") hands the `tokenizers` package).
  // The tokenizer.json "truncation" and "padding" sections are not applied: the engine checks
  // lengths against max_model_len itself and batches without padding.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids → text (always valid UTF-8: stray bytes become U+FFFD, as the crate's decoders do).
  // Ids the tokenizer does not know are skipped, as in the crate.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const;

  // One past the largest id (the rows an embedding needs), added tokens included.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::vector<int32_t> eos_ids() const { return eos_ids_; }
  bool is_byte_tokenizer() const { return byte_mode_; }
  // Decoding is bytes, then one lossy UTF-8 pass (the byte tokenizer, a ByteLevel decoder): the
  // text of ids cut at a settled place is a prefix of the text of all (Decoder::prefix_stable).
  bool decode_is_prefix_stable() const;
  // The byte id's token stands for when decoding holds a run of byte tokens that is invalid UTF-8
  // past repair (Decoder::holds_invalid_byte_runs: ByteFallback in the LLaMA 2 / Mistral
  // layout), else -1: IncrementalDecoder needs no decode while such a run grows.
  int held_fallback_byte(int32_t id) const;

 private:
  Tokenizer();
  void load_folder_config(const std::string& dir);

  bool byte_mode_ = false;
  std::unique_ptr<AddedVocabulary> added_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  bool holds_byte_runs_ = false;  // decoder_->holds_invalid_byte_runs(), once at load
  std::optional<int32_t> bos_id_;
  std::vector<int32_t> eos_ids_;
};

}  // namespace tessera::tokenizers
