// Normalizers of tokenizer.json (the crate's src/normalizers/), on whole strings.
#include "common/error.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/regex.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

using unicode::next_cp;

// Rewrites `s` char by char: f(c, out) appends the replacement of c.
template <typename F>
void map_chars(std::string& s, F f) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    const size_t start = i;
    const char32_t c = next_cp(s, i);
    if (c < 0x80) {
      f(c, out, std::string_view(s.data() + start, 1));
    } else {
      f(c, out, std::string_view(s.data() + start, i - start));
    }
  }
  s.swap(out);
}

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::NormForm f) : form_(f) {}
  void normalize(std::string& s) const override { s = unicode::normalize(s, form_); }

 private:
  unicode::NormForm form_;
};

class Lowercase final : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    bool ascii = true;
    for (auto& ch : s) {
      if (static_cast<unsigned char>(ch) >= 0x80) {
        ascii = false;
        break;
      }
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch + 32);
    }
    if (ascii) return;
    map_chars(s, [](char32_t c, std::string& out, std::string_view) {
      unicode::append_lowercase_char(out, c);
    });
  }
};

class StripAccents final : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    map_chars(s, [](char32_t c, std::string& out, std::string_view raw) {
      if (!unicode::is_combining_mark(c)) out.append(raw);
    });
  }
};

class Strip final : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& s) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      size_t i = 0;
      while (i < s.size()) {
        size_t j = i;
        if (!unicode::is_whitespace(next_cp(s, j))) break;
        i = j;
      }
      b = i;
    }
    if (right_) {
      while (e > b) {
        size_t k = e - 1;
        while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        size_t j = k;
        if (!unicode::is_whitespace(next_cp(s, j))) break;
        e = k;
      }
    }
    s = s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

// How much larger normalization may make a text: 32x (NFKC expands U+FDFA, 3 bytes, to 33) plus
// 4 KiB. A Replace whose pattern matches everywhere (one that matches the empty string) with a long
// content, or Replaces chained so that each re-matches the last one's content, grow a text
// geometrically: a 4 KB tokenizer.json made "[SEP]" 11 MB and its added-token trie 2 GB, another
// made every 23-byte text 1 MB (found by the tokenizer_json fuzzer).
constexpr size_t kMaxGrowth = 32;
constexpr size_t kMaxExtra = 4096;
constexpr size_t max_normalized_size(size_t n) { return kMaxGrowth * n + kMaxExtra; }

class Replace final : public Normalizer {
 public:
  Replace(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  void normalize(std::string& s) const override {
    if (s.empty()) return;  // the crate finds no match in an empty string
    std::vector<Match> m;
    re_.find_all(s, m);
    if (m.empty()) return;
    size_t grown = s.size();
    for (const auto& x : m) grown += content_.size() - (x.end - x.start);
    TESSERA_CHECK(grown <= max_normalized_size(s.size()), "Replace normalizer /", re_.pattern(),
                  "/: ", m.size(), " matches in ", s.size(), " bytes would make ", grown,
                  " bytes, more than 32x + 4 KiB");
    std::string out;
    out.reserve(grown);
    size_t last = 0;
    for (const auto& x : m) {
      out.append(s, last, x.start - last);
      out += content_;
      last = x.end;
    }
    out.append(s, last, std::string::npos);
    s.swap(out);
  }

 private:
  Regex re_;
  std::string content_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string p) : p_(std::move(p)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, p_);
  }

 private:
  std::string p_;
};

class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean, bool chinese, bool strip_accents, bool lowercase)
      : clean_(clean), chinese_(chinese), strip_accents_(strip_accents), lowercase_(lowercase) {}

  void normalize(std::string& s) const override {
    if (clean_) {
      map_chars(s, [](char32_t c, std::string& out, std::string_view raw) {
        // First the filter (NUL, U+FFFD and "other" characters but \t \n \r), then the map.
        if (c == 0 || c == 0xFFFD) return;
        if (c != '\t' && c != '\n' && c != '\r' && unicode::is_other(c)) return;
        if (unicode::is_whitespace(c)) {
          out.push_back(' ');
        } else {
          out.append(raw);
        }
      });
    }
    if (chinese_) {
      map_chars(s, [](char32_t c, std::string& out, std::string_view raw) {
        if (unicode::is_cjk_ideograph_bert(c)) {
          out.push_back(' ');
          out.append(raw);
          out.push_back(' ');
        } else {
          out.append(raw);
        }
      });
    }
    if (strip_accents_) {
      s = unicode::normalize(s, unicode::NormForm::kNFD);
      map_chars(s, [](char32_t c, std::string& out, std::string_view raw) {
        if (!unicode::is_mark_nonspacing(c)) out.append(raw);
      });
    }
    if (lowercase_) lower_.normalize(s);
  }

 private:
  bool clean_, chinese_, strip_accents_, lowercase_;
  Lowercase lower_;
};

class Nmt final : public Normalizer {
 public:
  void normalize(std::string& s) const override {
    map_chars(s, [](char32_t c, std::string& out, std::string_view raw) {
      if ((c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
          c == 0x8F || c == 0x9F) {
        return;
      }
      if (c == 0x09 || c == 0x0A || c == 0x0C || c == 0x0D || c == 0x1680 ||
          (c >= 0x200B && c <= 0x200F) || c == 0x2028 || c == 0x2029 || c == 0x2581 ||
          c == 0xFEFF || c == 0xFFFD) {
        out.push_back(' ');
        return;
      }
      out.append(raw);
    });
  }
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> n) : n_(std::move(n)) {}
  void normalize(std::string& s) const override {
    const size_t before = s.size();
    for (const auto& n : n_) {
      n->normalize(s);
      TESSERA_CHECK(s.size() <= max_normalized_size(before), "normalizer Sequence: its steps made ",
                    s.size(), " bytes of ", before, ", more than 32x + 4 KiB");
    }
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> n_;
};

}  // namespace

Regex parse_pattern(const Field& f) {
  f.expect_object();
  if (auto s = f.optional("String")) return Regex::literal(s->str());
  if (auto r = f.optional("Regex")) return Regex(r->str());
  f.fail("must be {\"String\": ...} or {\"Regex\": ...}");
}

std::unique_ptr<Normalizer> make_normalizer(const Field& f) {
  if (f.is_null()) return nullptr;
  const std::string type = f.at("type").str();
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(unicode::NormForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(unicode::NormForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(unicode::NormForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(unicode::NormForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Nmt") return std::make_unique<Nmt>();
  if (type == "Strip") {
    return std::make_unique<Strip>(f.at("strip_left").boolean(), f.at("strip_right").boolean());
  }
  if (type == "Replace") {
    return std::make_unique<Replace>(parse_pattern(f.at("pattern")), f.at("content").str());
  }
  if (type == "Prepend") return std::make_unique<Prepend>(f.at("prepend").str());
  if (type == "BertNormalizer") {
    const bool lowercase = f.bool_or("lowercase", true);
    bool strip = lowercase;  // strip_accents: null follows lowercase
    if (auto s = f.optional("strip_accents")) strip = s->boolean();
    return std::make_unique<BertNormalizer>(
        f.bool_or("clean_text", true), f.bool_or("handle_chinese_chars", true), strip, lowercase);
  }
  if (type == "Sequence") {
    const Field list = f.at("normalizers");
    std::vector<std::unique_ptr<Normalizer>> n;
    for (size_t i = 0; i < list.size(); ++i) {
      auto x = make_normalizer(list.element(i));
      if (x) n.push_back(std::move(x));
    }
    return std::make_unique<SequenceNormalizer>(std::move(n));
  }
  if (type == "Precompiled") {
    f.at("type").fail("is not supported (SentencePiece precompiled charsmap)");
  }
  f.at("type").fail("names an unknown normalizer");
}

}  // namespace tessera::tokenizers
