// How sentence-transformers turns an encoder's token states into a sentence embedding, read from a
// model folder the way SentenceTransformer loads it: modules.json (Transformer -> Pooling ->
// Normalize), the Pooling module's config.json (pooling_mode_* flags or the compact pooling_mode
// string, include_prompt), sentence_bert_config.json (max_seq_length, do_lower_case) and
// config_sentence_transformers.json (prompts, default_prompt_name). A folder without modules.json
// gets what sentence-transformers gives it: mean pooling, no normalisation. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tessera::models {

struct PoolingConfig {
  // The modes sentence-transformers concatenates, in its order: cls, max, mean, mean_sqrt_len,
  // weightedmean, lasttoken.
  bool cls = false;
  bool max = false;
  bool mean = true;
  bool mean_sqrt_len = false;
  bool weighted_mean = false;
  bool last_token = false;
  // false: the prompt's tokens (the first `prompt_length` of each input) are left out of pooling.
  bool include_prompt = true;
  int64_t word_embedding_dimension = 0;  // 0 = not stated

  int modes() const;
  std::string mode_string() const;  // "mean", "cls+max", ...
};

struct SentenceConfig {
  bool has_modules_json = false;
  std::string transformer_dir;  // the folder holding config.json and the weights
  PoolingConfig pooling;
  bool normalize = false;
  int64_t max_seq_length = 0;  // tokens per input, specials included (inputs are truncated)
  bool do_lower_case = false;
  std::map<std::string, std::string> prompts;
  std::string default_prompt_name;  // "" = none

  // Reads the folder's sentence-transformers files; `model_max_positions` is the encoder's
  // max_position_embeddings (the cap when sentence_bert_config.json gives no max_seq_length).
  // Throws one line naming the file and field on a malformed or unsupported file (a module type
  // other than Transformer / Pooling / Normalize, an unknown pooling mode, ...).
  static SentenceConfig from_folder(const std::string& dir, int64_t model_max_positions);
  // The folder modules.json's Transformer module points at (dir itself when there is none).
  static std::string transformer_folder(const std::string& dir);

  // The prompt text a request's prompt name selects ("" name: the default prompt, if any).
  // Throws naming the prompt and the known ones when it is unknown.
  std::string prompt(const std::string& name) const;
};

}  // namespace tessera::models
