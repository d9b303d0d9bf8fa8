// Pre-tokenizers of tokenizer.json (the crate's src/pre_tokenizers/) and the split behaviours of
// its NormalizedString::split.
#include <array>

#include "common/error.h"
#include "runtime/tokenizers/byte_level.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/regex.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {

Behavior parse_behavior(const Field& f) {
  const std::string b = f.str();
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  f.fail("must be one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

void split_piece(Piece&& p, const std::vector<Span>& spans, Behavior behavior, Pieces& out) {
  struct Cut {
    size_t start, end;
  };
  thread_local std::vector<Cut> cuts;
  cuts.clear();
  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& s : spans) cuts.push_back({s.start, s.end});
      break;
    case Behavior::kRemoved:
      for (const auto& s : spans) {
        if (!s.is_match) cuts.push_back({s.start, s.end});
      }
      break;
    case Behavior::kContiguous: {
      bool prev = false;
      for (const auto& s : spans) {
        if (s.is_match == prev && !cuts.empty()) {
          cuts.back().end = s.end;
        } else {
          cuts.push_back({s.start, s.end});
        }
        prev = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev = false;
      for (const auto& s : spans) {
        if (s.is_match && !prev && !cuts.empty()) {
          cuts.back().end = s.end;
        } else {
          cuts.push_back({s.start, s.end});
        }
        prev = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !prev && !cuts.empty()) {
          cuts.back().start = it->start;
        } else {
          cuts.push_back({it->start, it->end});
        }
        prev = it->is_match;
      }
      std::reverse(cuts.begin(), cuts.end());
      break;
    }
  }
  // One cut covering everything: move the piece instead of copying it.
  if (cuts.size() == 1 && cuts[0].start == 0 && cuts[0].end == p.text.size()) {
    if (!p.text.empty()) out.push_back(std::move(p));
    return;
  }
  for (const auto& c : cuts) {
    if (c.end <= c.start) continue;
    Piece q;
    q.text.assign(p.text, c.start, c.end - c.start);
    q.at_start = p.at_start && c.start == 0;
    out.push_back(std::move(q));
  }
}

namespace {

using unicode::next_cp;

// The crate's Pattern for a char predicate: each matching char is one match.
template <typename Pred>
void char_spans(std::string_view s, Pred pred, std::vector<Span>& spans) {
  spans.clear();
  if (s.empty()) {
    spans.push_back({0, 0, false});
    return;
  }
  size_t last = 0, i = 0;
  while (i < s.size()) {
    const size_t b = i;
    const char32_t c = next_cp(s, i);
    if (pred(c)) {
      if (last < b) spans.push_back({last, b, false});
      spans.push_back({b, i, true});
      last = i;
    }
  }
  if (last < s.size()) spans.push_back({last, s.size(), false});
}

void regex_spans(const Regex& re, std::string_view s, bool invert, std::vector<Span>& spans) {
  spans.clear();
  if (s.empty()) {
    spans.push_back({0, 0, invert});
    return;
  }
  thread_local std::vector<Match> m;
  re.find_all(s, m);
  size_t prev = 0;
  for (const auto& x : m) {
    if (prev != x.start) spans.push_back({prev, x.start, invert});
    spans.push_back({x.start, x.end, !invert});
    prev = x.end;
  }
  if (prev != s.size()) spans.push_back({prev, s.size(), invert});
}

// Applies fn(piece, out) to every piece without an id.
template <typename F>
void for_each_split(Pieces& pieces, F fn) {
  Pieces out;
  out.reserve(pieces.size() * 2);
  for (auto& p : pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    fn(std::move(p), out);
  }
  pieces.swap(out);
}

template <typename Pred>
void split_by_char(Pieces& pieces, Pred pred, Behavior behavior) {
  thread_local std::vector<Span> spans;
  for_each_split(pieces, [&](Piece&& p, Pieces& out) {
    char_spans(p.text, pred, spans);
    split_piece(std::move(p), spans, behavior, out);
  });
}

bool is_punct(char32_t c) { return unicode::is_ascii_punctuation(c) || unicode::is_punctuation(c); }

class ByteLevelPre final : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}

  void pre_tokenize(Pieces& pieces) const override {
    thread_local std::vector<Span> spans;
    for_each_split(pieces, [&](Piece&& p, Pieces& out) {
      if (add_prefix_space_ && !p.text.empty() && p.text[0] != ' ') p.text.insert(0, " ");
      if (use_regex_) {
        regex_spans(gpt2_regex(), p.text, false, spans);
        split_piece(std::move(p), spans, Behavior::kIsolated, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    });
    std::string mapped;
    for (auto& p : pieces) {
      if (p.id >= 0) continue;
      bytes_to_unicode(p.text, mapped);
      p.text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class SplitPre final : public PreTokenizer {
 public:
  SplitPre(Regex re, Behavior b, bool invert) : re_(std::move(re)), b_(b), invert_(invert) {}
  void pre_tokenize(Pieces& pieces) const override {
    thread_local std::vector<Span> spans;
    for_each_split(pieces, [&](Piece&& p, Pieces& out) {
      regex_spans(re_, p.text, invert_, spans);
      split_piece(std::move(p), spans, b_, out);
    });
  }

 private:
  Regex re_;
  Behavior b_;
  bool invert_;
};

// \w+|[^\w\s]+ (Rust regex classes), whitespace dropped.
class WhitespacePre final : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    for_each_split(pieces, [](Piece&& p, Pieces& out) {
      const std::string& s = p.text;
      size_t i = 0;
      int run_class = -1;  // 0 word, 1 other
      size_t run_start = 0;
      auto flush = [&](size_t end) {
        if (run_class >= 0 && end > run_start) {
          Piece q;
          q.text.assign(s, run_start, end - run_start);
          q.at_start = p.at_start && run_start == 0;
          out.push_back(std::move(q));
        }
        run_class = -1;
      };
      while (i < s.size()) {
        const size_t b = i;
        const char32_t c = next_cp(s, i);
        int cls;
        if (unicode::is_regex_word(c)) {
          cls = 0;
        } else if (unicode::is_whitespace(c)) {
          cls = 2;
        } else {
          cls = 1;
        }
        if (cls != run_class) {
          flush(b);
          if (cls != 2) {
            run_class = cls;
            run_start = b;
          }
        }
      }
      flush(s.size());
    });
  }
};

class WhitespaceSplitPre final : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    split_by_char(pieces, unicode::is_whitespace, Behavior::kRemoved);
  }
};

class CharDelimiterPre final : public PreTokenizer {
 public:
  explicit CharDelimiterPre(char32_t d) : d_(d) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_by_char(
        pieces, [this](char32_t c) { return c == d_; }, Behavior::kRemoved);
  }

 private:
  char32_t d_;
};

class PunctuationPre final : public PreTokenizer {
 public:
  explicit PunctuationPre(Behavior b) : b_(b) {}
  void pre_tokenize(Pieces& pieces) const override { split_by_char(pieces, is_punct, b_); }

 private:
  Behavior b_;
};

class DigitsPre final : public PreTokenizer {
 public:
  explicit DigitsPre(bool individual) : individual_(individual) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_by_char(pieces, unicode::is_numeric,
                  individual_ ? Behavior::kIsolated : Behavior::kContiguous);
  }

 private:
  bool individual_;
};

class BertPre final : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    split_by_char(pieces, unicode::is_whitespace, Behavior::kRemoved);
    split_by_char(pieces, is_punct, Behavior::kIsolated);
  }
};

class MetaspacePre final : public PreTokenizer {
 public:
  MetaspacePre(char32_t replacement, PrependScheme scheme, bool split)
      : rep_(unicode::to_utf8(replacement)), rep_cp_(replacement), scheme_(scheme), split_(split) {}

  void pre_tokenize(Pieces& pieces) const override {
    thread_local std::vector<Span> spans;
    for_each_split(pieces, [&](Piece&& p, Pieces& out) {
      if (p.text.find(' ') != std::string::npos) {
        std::string r;
        r.reserve(p.text.size() + 16);
        for (char ch : p.text) {
          if (ch == ' ') {
            r += rep_;
          } else {
            r.push_back(ch);
          }
        }
        p.text.swap(r);
      }
      const bool starts = p.text.compare(0, rep_.size(), rep_) == 0;
      if (!p.text.empty() && !starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        p.text.insert(0, rep_);
      }
      if (split_) {
        char_spans(
            p.text, [this](char32_t c) { return c == rep_cp_; }, spans);
        split_piece(std::move(p), spans, Behavior::kMergedWithNext, out);
      } else if (!p.text.empty()) {
        out.push_back(std::move(p));
      }
    });
  }

 private:
  std::string rep_;
  char32_t rep_cp_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> p) : p_(std::move(p)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& p : p_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> p_;
};

char32_t single_char(const Field& f) {
  const std::string s = f.str();
  if (s.empty() || !unicode::is_valid_utf8(s)) f.fail("must be a single character");
  size_t i = 0;
  const char32_t c = next_cp(s, i);
  if (i != s.size()) f.fail("must be a single character");
  return c;
}

}  // namespace

MetaspaceParams parse_metaspace(const Field& f) {
  MetaspaceParams m{single_char(f.at("replacement")), PrependScheme::kAlways, true};
  if (auto s = f.optional("prepend_scheme")) {
    const std::string v = s->str();
    if (v == "first") {
      m.scheme = PrependScheme::kFirst;
    } else if (v == "never") {
      m.scheme = PrependScheme::kNever;
    } else if (v == "always") {
      m.scheme = PrependScheme::kAlways;
    } else {
      s->fail("must be one of first, never, always");
    }
  }
  if (auto a = f.optional("add_prefix_space"); a && !a->boolean()) {
    if (m.scheme != PrependScheme::kNever && f.has("prepend_scheme")) {
      a->fail("contradicts prepend_scheme (add_prefix_space false needs prepend_scheme never)");
    }
    m.scheme = PrependScheme::kNever;
  }
  m.split = f.bool_or("split", true);
  return m;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Field& f) {
  if (f.is_null()) return nullptr;
  const std::string type = f.at("type").str();
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPre>(f.bool_or("add_prefix_space", true),
                                          f.bool_or("use_regex", true));
  }
  if (type == "Split") {
    return std::make_unique<SplitPre>(parse_pattern(f.at("pattern")),
                                      parse_behavior(f.at("behavior")), f.bool_or("invert", false));
  }
  if (type == "Whitespace") return std::make_unique<WhitespacePre>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
  if (type == "BertPreTokenizer") return std::make_unique<BertPre>();
  if (type == "Punctuation") {
    Behavior b = Behavior::kIsolated;
    if (auto x = f.optional("behavior")) b = parse_behavior(*x);
    return std::make_unique<PunctuationPre>(b);
  }
  if (type == "Digits") return std::make_unique<DigitsPre>(f.bool_or("individual_digits", false));
  if (type == "CharDelimiterSplit") {
    return std::make_unique<CharDelimiterPre>(single_char(f.at("delimiter")));
  }
  if (type == "Metaspace") {
    const auto m = parse_metaspace(f);
    return std::make_unique<MetaspacePre>(m.replacement, m.scheme, m.split);
  }
  if (type == "Sequence") {
    const Field list = f.at("pretokenizers");
    std::vector<std::unique_ptr<PreTokenizer>> p;
    for (size_t i = 0; i < list.size(); ++i) {
      auto x = make_pre_tokenizer(list.element(i));
      if (x) p.push_back(std::move(x));
    }
    return std::make_unique<SequencePre>(std::move(p));
  }
  f.at("type").fail("names an unknown or unsupported pre-tokenizer");
}

}  // namespace tessera::tokenizers
