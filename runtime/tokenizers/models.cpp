// Models of tokenizer.json (the crate's src/models/): BPE, WordPiece, WordLevel, Unigram.
#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "common/error.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

using unicode::next_cp;

struct StrHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using VocabMap = std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>>;

constexpr int64_t kMaxId = 1 << 26;  // far above any real vocabulary; guards the id → token table

// A vocabulary and its reverse, as every model keeps them.
struct Vocab {
  VocabMap map;
  std::vector<const std::string*> by_id;  // id → token (null for unused ids)

  void finish() {
    int64_t max = -1;
    for (const auto& [tok, id] : map) max = std::max<int64_t>(max, id);
    by_id.assign(static_cast<size_t>(max + 1), nullptr);
    // With duplicate ids (malformed but accepted by the crate) one of the tokens wins.
    for (const auto& [tok, id] : map) by_id[static_cast<size_t>(id)] = &tok;
  }
  std::optional<int32_t> get(std::string_view s) const {
    auto it = map.find(s);
    if (it == map.end()) return std::nullopt;
    return it->second;
  }
  const std::string* token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= by_id.size()) return nullptr;
    return by_id[static_cast<size_t>(id)];
  }
  int32_t max_id() const { return static_cast<int32_t>(by_id.size()) - 1; }
};

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

// Results of whole words, shared by the threads that encode with one tokenizer. Like the crate's
// cache it never blocks: a contended lock is a miss (get) or a skipped insert (set).
class WordCache {
 public:
  static constexpr size_t kCapacity = 10000;
  static constexpr size_t kMaxWordBytes = 256;

  bool get(std::string_view word, std::vector<int32_t>& out) const {
    if (word.size() >= kMaxWordBytes) return false;
    std::shared_lock lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    auto it = map_.find(word);
    if (it == map_.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }
  void set(std::string_view word, const int32_t* ids, size_t n) const {
    if (word.size() >= kMaxWordBytes) return;
    std::unique_lock lock(mu_, std::try_to_lock);
    if (!lock.owns_lock() || map_.size() >= kCapacity) return;
    map_.emplace(std::string(word), std::vector<int32_t>(ids, ids + n));
  }

 private:
  mutable std::shared_mutex mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StrHash, std::equal_to<>> map_;
};

// (left id, right id) → (rank, merged id), open addressing on 64-bit keys.
class MergeMap {
 public:
  struct Value {
    uint32_t rank;
    int32_t id;
  };
  void build(const std::vector<std::pair<uint64_t, Value>>& entries) {
    size_t cap = 16;
    while (cap < entries.size() * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, Value{0, 0});
    mask_ = cap - 1;
    // A pair listed twice keeps its last rank, as the crate's HashMap insertion does.
    for (const auto& [k, v] : entries) {
      size_t h = slot(k);
      while (keys_[h] != kEmpty && keys_[h] != k) h = (h + 1) & mask_;
      keys_[h] = k;
      vals_[h] = v;
    }
  }
  const Value* find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    size_t h = slot(k);
    while (true) {
      if (keys_[h] == k) return &vals_[h];
      if (keys_[h] == kEmpty) return nullptr;
      h = (h + 1) & mask_;
    }
  }
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  size_t slot(uint64_t k) const {
    return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_;
  }
  std::vector<uint64_t> keys_;
  std::vector<Value> vals_;
  size_t mask_ = 0;
};

class Bpe final : public Model {
 public:
  explicit Bpe(const Field& f) {
    if (auto d = f.optional("dropout")) {
      const double p = d->number();
      if (p < 0 || p > 1) d->fail("must be in [0, 1]");
      // Dropout samples merges at random: a training-time augmentation. Inference here is
      // deterministic, so a tokenizer.json that asks for it is refused rather than run without.
      if (p > 0) d->fail("asks for BPE dropout, which Tessera does not apply at inference");
    }
    if (auto u = f.optional("unk_token")) unk_ = u->str();
    if (auto p = f.optional("continuing_subword_prefix")) prefix_ = p->str();
    if (auto s = f.optional("end_of_word_suffix")) suffix_ = s->str();
    fuse_unk_ = f.bool_or("fuse_unk", false);
    byte_fallback_ = f.bool_or("byte_fallback", false);
    ignore_merges_ = f.bool_or("ignore_merges", false);
    vocab_ = parse_vocab_object(f.at("vocab"));

    const Field merges = f.at("merges");
    const size_t prefix_len = prefix_ ? prefix_->size() : 0;
    std::vector<std::pair<uint64_t, MergeMap::Value>> entries;
    entries.reserve(merges.size());
    std::string a, b, merged;
    for (size_t i = 0; i < merges.size(); ++i) {
      const Field m = merges.element(i);
      if (m.json().is_string()) {  // "a b" (tokenizers < 0.20)
        const std::string& s = m.json().get_ref<const std::string&>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          m.fail("must be two tokens separated by one space");
        }
        a.assign(s, 0, sp);
        b.assign(s, sp + 1, std::string::npos);
      } else if (m.json().is_array() && m.json().size() == 2 && m.json()[0].is_string() &&
                 m.json()[1].is_string()) {  // ["a", "b"] (tokenizers >= 0.20)
        a = m.json()[0].get<std::string>();
        b = m.json()[1].get<std::string>();
      } else {
        m.fail("must be a string \"a b\" or a pair of strings");
      }
      const auto ia = vocab_.get(a), ib = vocab_.get(b);
      if (!ia) m.fail("names token '" + a + "' that is not in model.vocab");
      if (!ib) m.fail("names token '" + b + "' that is not in model.vocab");
      if (b.size() < prefix_len) m.fail("has a right token shorter than continuing_subword_prefix");
      merged = a + b.substr(prefix_len);
      const auto im = vocab_.get(merged);
      if (!im) m.fail("merges into '" + merged + "' that is not in model.vocab");
      entries.push_back({MergeMap::key(*ia, *ib), {static_cast<uint32_t>(i), *im}});
    }
    merges_.build(entries);

    byte_ids_.fill(-1);
    char buf[8];
    for (int b = 0; b < 256; ++b) {
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      if (auto id = vocab_.get(buf)) byte_ids_[b] = *id;
    }
    // Ids of single characters, looked up by code point (the hot path of every word).
    bmp_ids_.assign(0x10000, -1);
    for (const auto& [tok, id] : vocab_.map) {
      if (tok.empty() || !unicode::is_valid_utf8(tok)) continue;
      size_t i = 0;
      const char32_t c = next_cp(tok, i);
      if (i == tok.size() && c < 0x10000) bmp_ids_[c] = id;
    }
    if (unk_) unk_id_ = vocab_.get(*unk_);
  }

  void tokenize(std::string_view word, std::vector<int32_t>& out) const override {
    if (word.empty()) return;
    if (cache_.get(word, out)) return;
    if (ignore_merges_) {
      if (auto id = vocab_.get(word)) {
        out.push_back(*id);
        return;
      }
    }
    const size_t before = out.size();
    merge_word(word, out);
    cache_.set(word, out.data() + before, out.size() - before);
  }

  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab_.get(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.map.size(); }
  int32_t max_id() const override { return vocab_.max_id(); }

 private:
  struct Symbol {
    int32_t c;
    int32_t prev, next;
    uint32_t len;  // bytes; 0 once merged into its left neighbour
  };
  struct Entry {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
  };
  static bool later(const Entry& x, const Entry& y) {  // min-heap on (rank, pos)
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  }

  int32_t unk_id_or_throw() const {
    if (!unk_id_) TESSERA_FAIL("BPE unk_token '", unk_ ? *unk_ : "", "' is not in the vocabulary");
    return *unk_id_;
  }

  void merge_word(std::string_view w, std::vector<int32_t>& out) const {
    thread_local std::vector<Symbol> sym;
    thread_local std::vector<Entry> heap;
    thread_local std::string s;
    sym.clear();
    heap.clear();
    auto add = [&](int32_t c, uint32_t len) {
      const auto n = static_cast<int32_t>(sym.size());
      if (n > 0) sym.back().next = n;
      sym.push_back({c, n - 1, -1, len});
    };
    const bool plain = !prefix_ && !suffix_;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    size_t i = 0;
    while (i < w.size()) {
      const size_t b = i;
      const char32_t c = next_cp(w, i);
      const auto byte_len = static_cast<uint32_t>(i - b);
      int32_t id = -1;
      if (plain && c < 0x10000) {
        id = bmp_ids_[c];
      } else {
        s.clear();
        if (b != 0 && prefix_) s += *prefix_;
        s.append(w.data() + b, byte_len);
        if (i == w.size() && suffix_) s += *suffix_;
        if (auto x = vocab_.get(s)) id = *x;
      }
      if (id >= 0) {
        if (unk >= 0) {
          add(unk, unk_len);
          unk = -1;
        }
        add(id, byte_len);
        continue;
      }
      if (byte_fallback_) {
        // The bytes of the string that was looked up (prefix and suffix included).
        const std::string_view looked =
            plain ? std::string_view(w.data() + b, byte_len) : std::string_view(s);
        bool all = true;
        for (unsigned char x : looked) all = all && byte_ids_[x] >= 0;
        if (all) {
          for (unsigned char x : looked) add(byte_ids_[x], 1);
          continue;
        }
      }
      if (unk_) {
        if (unk >= 0 && fuse_unk_) {
          unk_len += byte_len;
        } else {
          if (unk >= 0) add(unk, unk_len);
          unk = unk_id_or_throw();
          unk_len = byte_len;
        }
      }
    }
    if (unk >= 0) add(unk, unk_len);

    for (size_t k = 0; k + 1 < sym.size(); ++k) {
      if (const auto* m = merges_.find(sym[k].c, sym[k + 1].c)) {
        heap.push_back({m->rank, static_cast<uint32_t>(k), m->id});
      }
    }
    std::make_heap(heap.begin(), heap.end(), later);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), later);
      const Entry top = heap.back();
      heap.pop_back();
      Symbol& cur = sym[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      const auto next_pos = static_cast<size_t>(cur.next);
      const Symbol right = sym[next_pos];
      const auto* m = merges_.find(cur.c, right.c);
      if (!m || m->id != top.new_id) continue;  // a stale entry
      cur.c = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      sym[next_pos].len = 0;
      if (right.next > -1 && static_cast<size_t>(right.next) < sym.size()) {
        sym[static_cast<size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
      }
      if (cur.prev >= 0) {
        const Symbol& p = sym[static_cast<size_t>(cur.prev)];
        if (const auto* pm = merges_.find(p.c, cur.c)) {
          heap.push_back({pm->rank, static_cast<uint32_t>(cur.prev), pm->id});
          std::push_heap(heap.begin(), heap.end(), later);
        }
      }
      if (cur.next >= 0 && static_cast<size_t>(cur.next) < sym.size()) {
        const Symbol& n = sym[static_cast<size_t>(cur.next)];
        if (const auto* nm = merges_.find(cur.c, n.c)) {
          heap.push_back({nm->rank, top.pos, nm->id});
          std::push_heap(heap.begin(), heap.end(), later);
        }
      }
    }
    for (const auto& x : sym) {
      if (x.len != 0) out.push_back(x.c);
    }
  }

  Vocab vocab_;
  MergeMap merges_;
  std::optional<std::string> unk_, prefix_, suffix_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};
  std::vector<int32_t> bmp_ids_;
  WordCache cache_;
};

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
  if (type == "BPE") return std::make_unique<Bpe>(f);
  if (type == "WordPiece") return std::make_unique<WordPiece>(f);
  if (type == "WordLevel") return std::make_unique<WordLevel>(f);
  if (type == "Unigram") return std::make_unique<Unigram>(f);
  f.at("type").fail("names an unknown model (expected BPE, WordPiece, WordLevel or Unigram)");
}

}  // namespace tessera::tokenizers
