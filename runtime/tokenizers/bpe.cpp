// The BPE model of tokenizer.json (the crate's models/bpe): characters (or byte-fallback bytes, or
// <unk>) merged pair by pair in rank order with a min-heap over (rank, position), as the crate's
// Word::merge_all does; whole-word results cached.
#include <algorithm>
#include <array>
#include <cstdio>

#include "common/error.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/unicode.h"
#include "runtime/tokenizers/vocab.h"

namespace tessera::tokenizers {
namespace {

using unicode::next_cp;

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

}  // namespace

std::unique_ptr<Model> make_bpe(const Field& f) { return std::make_unique<Bpe>(f); }

}  // namespace tessera::tokenizers
