#include "runtime/tokenizers/added_vocabulary.h"

#include <algorithm>

#include "common/error.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

bool same(const AddedToken& a, const AddedToken& b) {
  return a.content == b.content && a.single_word == b.single_word && a.lstrip == b.lstrip &&
         a.rstrip == b.rstrip && a.normalized == b.normalized && a.special == b.special;
}

// The last code point before byte `end` of valid UTF-8 `s`.
char32_t last_cp(std::string_view s, size_t end) {
  size_t k = end - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  return unicode::next_cp(s, k);
}

}  // namespace

void AddedVocabulary::Matcher::build(const std::vector<std::pair<std::string, int32_t>>& patterns) {
  nodes_.assign(1, Node{});
  std::fill(std::begin(first_), std::end(first_), false);
  for (const auto& [p, id] : patterns) {
    if (p.empty()) continue;
    int32_t n = 0;
    for (unsigned char b : p) {
      auto it = nodes_[static_cast<size_t>(n)].next.find(b);
      if (it == nodes_[static_cast<size_t>(n)].next.end()) {
        nodes_.emplace_back();
        const auto child = static_cast<int32_t>(nodes_.size() - 1);
        nodes_[static_cast<size_t>(n)].next.emplace(b, child);
        n = child;
      } else {
        n = it->second;
      }
    }
    // Aho-Corasick keeps the first pattern for a duplicated text.
    if (nodes_[static_cast<size_t>(n)].id < 0) nodes_[static_cast<size_t>(n)].id = id;
    first_[static_cast<unsigned char>(p[0])] = true;
  }
}

bool AddedVocabulary::Matcher::find(std::string_view s, size_t from, size_t& start, size_t& end,
                                    int32_t& id) const {
  if (empty()) return false;
  for (size_t i = from; i < s.size(); ++i) {
    if (!first_[static_cast<unsigned char>(s[i])]) continue;
    int32_t n = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < s.size(); ++k) {
      const auto& next = nodes_[static_cast<size_t>(n)].next;
      auto it = next.find(static_cast<unsigned char>(s[k]));
      if (it == next.end()) break;
      n = it->second;
      if (nodes_[static_cast<size_t>(n)].id >= 0) {
        best = nodes_[static_cast<size_t>(n)].id;
        best_end = k + 1;
      }
    }
    if (best >= 0) {
      start = i;
      end = best_end;
      id = best;
      return true;
    }
  }
  return false;
}

void AddedVocabulary::add(const std::vector<AddedToken>& tokens, const Model& model,
                          const Normalizer* normalizer) {
  for (const auto& t : tokens) {
    if (t.special && !t.content.empty() && !special_set_.count(t.content)) {
      special_.push_back(t);
      special_set_.insert(t.content);
    }
  }
  for (const auto& t : tokens) {
    if (t.content.empty()) continue;
    // A token equal in every field to one already added is ignored (same content, same id).
    if (auto it = by_content_.find(t.content); it != by_content_.end()) {
      auto e = by_id_.find(it->second);
      if (e != by_id_.end() && same(e->second, t)) continue;
    }
    int32_t id;
    if (auto known = token_to_id(t.content)) {
      id = *known;
    } else if (auto m = model.token_to_id(t.content)) {
      id = *m;
    } else {
      const auto vocab = static_cast<int64_t>(model.vocab_size());
      int64_t max = -1;
      for (const auto& [c, i] : by_content_) max = std::max<int64_t>(max, i);
      if (max < 0) {
        id = static_cast<int32_t>(vocab);
      } else {
        id = static_cast<int32_t>(max >= vocab || vocab == 0 ? max + 1 : vocab);
      }
    }
    by_content_[t.content] = id;
    by_id_[id] = t;
    if (!special_set_.count(t.content)) added_.push_back(t);
  }
  refresh(model, normalizer);
}

void AddedVocabulary::refresh(const Model& model, const Normalizer* normalizer) {
  std::vector<std::pair<std::string, int32_t>> raw, norm;
  auto place = [&](const AddedToken& t) {
    auto id = token_to_id(t.content);
    if (!id) id = model.token_to_id(t.content);
    TESSERA_CHECK(id.has_value(), "added token '", t.content, "' has no id");
    if (t.normalized) {
      std::string n = t.content;
      if (normalizer) normalizer->normalize(n);
      norm.push_back({std::move(n), *id});
    } else {
      raw.push_back({t.content, *id});
    }
  };
  for (const auto& t : special_) place(t);
  for (const auto& t : added_) place(t);
  raw_.build(raw);
  normalized_.build(norm);
}

std::optional<int32_t> AddedVocabulary::token_to_id(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &it->second;
}

int32_t AddedVocabulary::max_id() const {
  int32_t m = -1;
  for (const auto& [id, t] : by_id_) m = std::max(m, id);
  return m;
}

void AddedVocabulary::split_with(const Matcher& m, Piece&& p, Pieces& out) const {
  const std::string_view s = p.text;
  if (m.empty() || s.empty()) {
    if (!s.empty()) out.push_back(std::move(p));
    return;
  }
  auto emit = [&](size_t a, size_t b, int32_t id) {
    if (b <= a) return;
    Piece q;
    q.text.assign(s.data() + a, b - a);
    q.id = id;
    q.at_start = p.at_start && a == 0;
    out.push_back(std::move(q));
  };
  size_t start_offset = 0, search = 0;
  size_t ms, me;
  int32_t id;
  const size_t before = out.size();
  while (m.find(s, search, ms, me, id)) {
    search = me;
    const AddedToken* t = by_id(id);
    size_t start = ms, stop = me;
    if (t->single_word) {
      const bool start_space = start == 0 || !unicode::is_regex_word(last_cp(s, start));
      size_t k = stop;
      const bool stop_space = stop == s.size() || !unicode::is_regex_word(unicode::next_cp(s, k));
      if (!start_space || !stop_space) continue;
    }
    if (t->lstrip) {
      size_t ns = start;
      while (ns > 0) {
        const char32_t c = last_cp(s, ns);
        if (!unicode::is_whitespace(c)) break;
        ns -= unicode::to_utf8(c).size();
      }
      start = std::max(ns, start_offset);
    }
    if (t->rstrip) {
      size_t k = stop;
      while (k < s.size()) {
        size_t j = k;
        if (!unicode::is_whitespace(unicode::next_cp(s, j))) break;
        k = j;
      }
      stop = k;
    }
    if (start_offset < start) emit(start_offset, start, -1);
    emit(start, stop, id);
    start_offset = stop;
  }
  if (out.size() == before) {  // nothing matched: keep the piece as it is
    out.push_back(std::move(p));
    return;
  }
  if (start_offset < s.size()) emit(start_offset, s.size(), -1);
}

void AddedVocabulary::split(std::string_view text, const Normalizer* normalizer,
                            Pieces& out) const {
  out.clear();
  Pieces raw;
  Piece whole;
  whole.text.assign(text);
  whole.at_start = true;
  split_with(raw_, std::move(whole), raw);
  for (auto& p : raw) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    if (normalizer) normalizer->normalize(p.text);
    split_with(normalized_, std::move(p), out);
  }
}

}  // namespace tessera::tokenizers
