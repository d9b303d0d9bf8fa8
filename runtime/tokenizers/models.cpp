// Models of tokenizer.json (the crate's src/models/): WordPiece, WordLevel, Unigram (BPE is in
// bpe.cpp), and the reader of the "model" section.
#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "common/error.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/unicode.h"
#include "runtime/tokenizers/vocab.h"

namespace tessera::tokenizers {

Vocab parse_vocab_object(const Field& f) {
  f.expect_object();
  Vocab v;
  v.map.reserve(f.json().size());
  for (auto it = f.json().begin(); it != f.json().end(); ++it) {
    const Field e(it.value(), f.path() + "[\"" + it.key() + "\"]");
    const int64_t id = e.integer();
    if (id < 0 || id >= kMaxId) e.fail("must be a token id in [0, 2^26)");
    v.map.emplace(it.key(), static_cast<int32_t>(id));
  }
  v.finish();
  return v;
}

std::unique_ptr<Model> make_bpe(const Field& f);

namespace {

using unicode::next_cp;

class WordPiece final : public Model {
 public:
  explicit WordPiece(const Field& f) {
    vocab_ = parse_vocab_object(f.at("vocab"));
    unk_ = f.str_or("unk_token", "[UNK]");
    prefix_ = f.str_or("continuing_subword_prefix", "##");
    const int64_t m = f.int_or("max_input_chars_per_word", 100);
    if (m < 0) f.at("max_input_chars_per_word").fail("must not be negative");
    max_chars_ = static_cast<size_t>(m);
    unk_id_ = vocab_.get(unk_);
  }

  void tokenize(std::string_view w, std::vector<int32_t>& out) const override {
    size_t chars = 0;
    for (unsigned char c : w) chars += (c & 0xC0) != 0x80;
    if (chars > max_chars_) {
      out.push_back(unk_id());
      return;
    }
    const size_t before = out.size();
    thread_local std::string sub;
    size_t start = 0;
    while (start < w.size()) {
      size_t end = w.size();
      int32_t found = -1;
      while (start < end) {
        sub.clear();
        if (start > 0) sub += prefix_;
        sub.append(w.data() + start, end - start);
        if (auto id = vocab_.get(sub)) {
          found = *id;
          break;
        }
        // Back off by one character.
        --end;
        while (end > start && (static_cast<unsigned char>(w[end]) & 0xC0) == 0x80) --end;
      }
      if (found < 0) {
        out.resize(before);
        out.push_back(unk_id());
        return;
      }
      out.push_back(found);
      start = end;
    }
  }

  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.get(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.map.size(); }
  int32_t max_id() const override { return vocab_.max_id(); }

 private:
  int32_t unk_id() const {
    if (!unk_id_) TESSERA_FAIL("WordPiece unk_token '", unk_, "' is not in the vocabulary");
    return *unk_id_;
  }
  Vocab vocab_;
  std::string unk_, prefix_;
  size_t max_chars_ = 100;
  std::optional<int32_t> unk_id_;
};

class WordLevel final : public Model {
 public:
  explicit WordLevel(const Field& f) {
    vocab_ = parse_vocab_object(f.at("vocab"));
    unk_ = f.str_or("unk_token", "<unk>");
    unk_id_ = vocab_.get(unk_);
  }
  void tokenize(std::string_view w, std::vector<int32_t>& out) const override {
    if (auto id = vocab_.get(w)) {
      out.push_back(*id);
      return;
    }
    if (!unk_id_) TESSERA_FAIL("WordLevel unk_token '", unk_, "' is not in the vocabulary");
    out.push_back(*unk_id_);
  }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.get(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.map.size(); }
  int32_t max_id() const override { return vocab_.max_id(); }

 private:
  Vocab vocab_;
  std::string unk_;
  std::optional<int32_t> unk_id_;
};

// SentencePiece's unigram model: the most probable segmentation (Viterbi) under the pieces'
// log-probabilities; characters no piece covers are <unk> with the lowest score minus 10, and
// consecutive unknowns fuse into one token.
class Unigram final : public Model {
 public:
  explicit Unigram(const Field& f) {
    const Field v = f.at("vocab");
    pieces_.reserve(v.size());
    double min_score = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < v.size(); ++i) {
      const Field e = v.element(i);
      if (!e.json().is_array() || e.json().size() != 2 || !e.json()[0].is_string() ||
          !e.json()[1].is_number()) {
        e.fail("must be a pair [piece, score]");
      }
      pieces_.push_back({e.json()[0].get<std::string>(), e.json()[1].get<double>()});
      min_score = std::min(min_score, pieces_.back().score);
      ids_[pieces_.back().text] = static_cast<int32_t>(i);
      insert_trie(pieces_.back().text, static_cast<int32_t>(i));
    }
    if (auto u = f.optional("unk_id")) {
      const int64_t id = u->integer();
      if (pieces_.empty()) u->fail("needs a non-empty vocab");
      if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) u->fail("is outside the vocab");
      unk_id_ = static_cast<int32_t>(id);
    }
    byte_fallback_ = f.bool_or("byte_fallback", false);
    unk_score_ = min_score - 10.0;
    by_id_.reserve(pieces_.size());
    for (const auto& p : pieces_) by_id_.push_back(&p.text);
  }

  void tokenize(std::string_view s, std::vector<int32_t>& out) const override {
    if (s.empty()) return;
    if (cache_.get(s, out)) return;
    const size_t before = out.size();
    struct Node {
      int32_t id = -1;
      double score = 0;
      int64_t starts_at = -1;
    };
    std::vector<Node> best(s.size() + 1);
    size_t start = 0;
    while (start < s.size()) {
      const double base = best[start].score;
      const size_t mblen = unicode::seq_len(static_cast<unsigned char>(s[start]));
      bool single = false;
      int32_t node = 0;
      for (size_t k = start; k < s.size(); ++k) {
        node = child(node, static_cast<unsigned char>(s[k]));
        if (node < 0) break;
        const int32_t id = trie_[static_cast<size_t>(node)].id;
        if (id < 0) continue;
        const size_t end = k + 1;
        // A text listed twice keeps its last id in both the trie and ids_, as in the crate.
        const double cand = pieces_[static_cast<size_t>(id)].score + base;
        auto& t = best[end];
        if (t.starts_at < 0 || cand > t.score) t = {id, cand, static_cast<int64_t>(start)};
        if (end - start == mblen) single = true;
      }
      if (!single) {
        auto& t = best[start + mblen];
        const double cand = unk_score_ + base;
        if (t.starts_at < 0 || cand > t.score) {
          if (!unk_id_) TESSERA_FAIL("Unigram: text needs <unk> but the model has no unk_id");
          t = {*unk_id_, cand, static_cast<int64_t>(start)};
        }
      }
      start += mblen;
    }
    // Walk back, fusing consecutive unknowns.
    std::vector<std::string_view> parts;
    size_t end = s.size();
    size_t unk_start = std::string::npos, unk_end = 0;
    while (end > 0) {
      const Node& n = best[end];
      const auto st = static_cast<size_t>(n.starts_at);
      if (unk_id_ && n.id == *unk_id_) {
        if (unk_start == std::string::npos) unk_end = end;
        unk_start = st;
      } else {
        if (unk_start != std::string::npos) {
          parts.push_back(s.substr(unk_start, unk_end - unk_start));
          unk_start = std::string::npos;
        }
        parts.push_back(s.substr(st, end - st));
      }
      end = st;
    }
    if (unk_start != std::string::npos) parts.push_back(s.substr(unk_start, unk_end - unk_start));
    std::reverse(parts.begin(), parts.end());
    for (const auto& p : parts) {
      auto it = ids_.find(p);
      if (it != ids_.end()) {
        out.push_back(it->second);
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        char buf[8];
        std::vector<int32_t> bytes;
        for (unsigned char c : p) {
          std::snprintf(buf, sizeof buf, "<0x%02X>", c);
          auto b = ids_.find(std::string_view(buf));
          if (b == ids_.end()) {
            all = false;
            break;
          }
          bytes.push_back(b->second);
        }
        if (all) {
          out.insert(out.end(), bytes.begin(), bytes.end());
          continue;
        }
      }
      if (!unk_id_) TESSERA_FAIL("Unigram: text needs <unk> but the model has no unk_id");
      out.push_back(*unk_id_);
    }
    cache_.set(s, out.data() + before, out.size() - before);
  }

  std::optional<int32_t> token_to_id(std::string_view t) const override {
    auto it = ids_.find(t);
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* id_to_token(int32_t id) const override {
    if (id < 0 || static_cast<size_t>(id) >= by_id_.size()) return nullptr;
    return by_id_[static_cast<size_t>(id)];
  }
  size_t vocab_size() const override { return pieces_.size(); }
  int32_t max_id() const override { return static_cast<int32_t>(pieces_.size()) - 1; }

 private:
  struct PieceScore {
    std::string text;
    double score;
  };
  struct TrieNode {
    int32_t id = -1;
  };
  int32_t child(int32_t node, unsigned char b) const {
    auto it = edges_.find((static_cast<uint64_t>(node) << 8) | b);
    return it == edges_.end() ? -1 : it->second;
  }
  void insert_trie(const std::string& s, int32_t id) {
    if (trie_.empty()) trie_.emplace_back();
    int32_t node = 0;
    for (unsigned char b : s) {
      const uint64_t k = (static_cast<uint64_t>(node) << 8) | b;
      auto it = edges_.find(k);
      if (it == edges_.end()) {
        trie_.emplace_back();
        it = edges_.emplace(k, static_cast<int32_t>(trie_.size() - 1)).first;
      }
      node = it->second;
    }
    if (!s.empty()) trie_[static_cast<size_t>(node)].id = id;
  }

  std::vector<PieceScore> pieces_;
  std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>> ids_;
  std::vector<const std::string*> by_id_;
  std::vector<TrieNode> trie_;
  std::unordered_map<uint64_t, int32_t> edges_;
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  double unk_score_ = 0;
  WordCache cache_;
};

}  // namespace

std::unique_ptr<Model> make_model(const Field& f) {
  f.expect_object();
  std::string type;
  if (auto t = f.optional("type")) {
    type = t->str();
  } else if (f.has("merges")) {  // files written before "type" was added
    type = "BPE";
  } else if (f.has("continuing_subword_prefix") || f.has("max_input_chars_per_word")) {
    type = "WordPiece";
  } else if (f.has("vocab") && f.json()["vocab"].is_array()) {
    type = "Unigram";
  } else {
    type = "WordLevel";
  }
  if (type == "BPE") return make_bpe(f);
  if (type == "WordPiece") return std::make_unique<WordPiece>(f);
  if (type == "WordLevel") return std::make_unique<WordLevel>(f);
  if (type == "Unigram") return std::make_unique<Unigram>(f);
  f.at("type").fail("names an unknown model (expected BPE, WordPiece, WordLevel or Unigram)");
}

}  // namespace tessera::tokenizers
