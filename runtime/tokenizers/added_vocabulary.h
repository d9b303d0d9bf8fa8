// Tokens added on top of the model's vocabulary (tokenizer.json "added_tokens"): they are cut out
// of the text before normalization (or, with normalized: true, out of the normalized text), as
// the crate's AddedVocabulary does, so "<|im_start|>" is never split into pieces.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "runtime/tokenizers/pipeline.h"

namespace tessera::tokenizers {

struct AddedToken {
  std::string content;
  bool single_word = false;  // match only when not inside a word
  bool lstrip = false;       // absorb the whitespace on its left
  bool rstrip = false;       // absorb the whitespace on its right
  bool normalized = true;    // match against the normalized text
  bool special = false;      // skipped by decode(skip_special_tokens)
};

class AddedVocabulary {
 public:
  // Adds `tokens` in order and gives each its id exactly as the crate's add_tokens does (the id
  // written in the file is not consulted: a token already in the model keeps the model's id, a
  // new one gets the next id after the model's vocabulary).
  void add(const std::vector<AddedToken>& tokens, const Model& model, const Normalizer* normalizer);

  // Splits `text` (valid UTF-8) into pieces, the added tokens carrying their id; the other pieces
  // come out normalized.
  void split(std::string_view text, const Normalizer* normalizer, Pieces& out) const;

  std::optional<int32_t> token_to_id(std::string_view content) const;
  const AddedToken* by_id(int32_t id) const;
  bool is_special(const std::string& content) const { return special_set_.count(content) != 0; }
  int32_t max_id() const;
  size_t size() const { return by_content_.size(); }
  const std::unordered_map<int32_t, AddedToken>& all() const { return by_id_; }

 private:
  // Leftmost-longest matching of many patterns (the crate uses Aho-Corasick); a byte trie with a
  // first-byte filter is as fast for the few hundred tokens real tokenizers add.
  class Matcher {
   public:
    void build(const std::vector<std::pair<std::string, int32_t>>& patterns);
    bool empty() const { return nodes_.size() <= 1; }
    // The leftmost-longest match starting at or after `from`: (start, end, id), or false.
    bool find(std::string_view s, size_t from, size_t& start, size_t& end, int32_t& id) const;

   private:
    struct Node {
      int32_t id = -1;
      std::unordered_map<unsigned char, int32_t> next;
    };
    std::vector<Node> nodes_;
    bool first_[256] = {};
  };

  void split_with(const Matcher& m, Piece&& p, Pieces& out) const;
  void refresh(const Model& model, const Normalizer* normalizer);

  std::unordered_map<std::string, int32_t> by_content_;
  std::unordered_map<int32_t, AddedToken> by_id_;
  std::vector<AddedToken> added_, special_;  // in the order given
  std::unordered_set<std::string> special_set_;
  Matcher raw_, normalized_;
};

}  // namespace tessera::tokenizers
