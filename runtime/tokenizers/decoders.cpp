// Decoders of tokenizer.json (the crate's src/decoders/): token strings → text.
#include "common/error.h"
#include "runtime/tokenizers/byte_level.h"
#include "runtime/tokenizers/pipeline.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

using unicode::next_cp;

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t last = 0, pos;
  bool any = false;
  while ((pos = s.find(from, last)) != std::string::npos) {
    any = true;
    out.append(s, last, pos - last);
    out += to;
    last = pos + from.size();
  }
  if (!any) return;
  out.append(s, last, std::string::npos);
  s.swap(out);
}

// The crate's wordpiece::cleanup: spaces before punctuation and English contractions.
void cleanup(std::string& s) {
  replace_all(s, " .", ".");
  replace_all(s, " ?", "?");
  replace_all(s, " !", "!");
  replace_all(s, " ,", ",");
  replace_all(s, " ' ", "'");
  replace_all(s, " n't", "n't");
  replace_all(s, " 'm", "'m");
  replace_all(s, " do not", " don't");
  replace_all(s, " 's", "'s");
  replace_all(s, " 've", "'ve");
  replace_all(s, " 're", "'re");
}

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      if (!unicode_to_bytes(t, bytes)) bytes += t;  // a token outside the alphabet: its own bytes
    }
    tokens.assign(1, unicode::to_valid_utf8(bytes));
  }
  bool prefix_stable() const override { return true; }
};

class MetaspaceDecoder final : public Decoder {
 public:
  explicit MetaspaceDecoder(MetaspaceParams m) : m_(m) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      size_t k = 0;
      while (k < t.size()) {
        const size_t b = k;
        const char32_t c = next_cp(t, k);
        if (c == m_.replacement) {
          // The crate drops every replacement char of the first token, not only a leading one.
          if (!(i == 0 && m_.scheme != PrependScheme::kNever)) out.push_back(' ');
        } else {
          out.append(t, b, k - b);
        }
      }
      tokens[i].swap(out);
    }
  }

 private:
  MetaspaceParams m_;
};

class WordPieceDecoder final : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      auto& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) {
          t.erase(0, prefix_.size());
        } else {
          t.insert(0, " ");
        }
      }
      if (cleanup_) cleanup(t);
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    }
  }

 private:
  std::string suffix_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (unicode::is_valid_utf8(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < bytes.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (auto& t : tokens) {
      const int byte = byte_fallback_value(t);
      if (byte >= 0) {
        bytes.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
  bool holds_invalid_byte_runs() const override { return true; }
  bool keeps_final_replacement() const override { return true; }  // U+FFFD is no byte token
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
  bool keeps_final_replacement() const override { return true; }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<std::pair<size_t, size_t>> chars;  // (byte offset, byte length)
      std::vector<char32_t> cps;
      size_t k = 0;
      while (k < t.size()) {
        const size_t b = k;
        cps.push_back(next_cp(t, k));
        chars.push_back({b, k - b});
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, cps.size()); ++i) {
        if (cps[i] != content_) break;
        start_cut = i + 1;
      }
      size_t stop_cut = cps.size();
      for (size_t i = 0; i < stop_ && i < cps.size(); ++i) {
        const size_t index = cps.size() - i - 1;
        if (cps[index] != content_) break;
        stop_cut = index;
      }
      if (stop_cut < start_cut) stop_cut = start_cut;
      const size_t bs = start_cut < chars.size() ? chars[start_cut].first : t.size();
      const size_t be = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
      t = t.substr(bs, be - bs);
    }
  }
  // It strips only its own character from each token's ends.
  bool keeps_final_replacement() const override { return content_ != 0xFFFD; }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  // `literal`: the pattern's text when it is {"String": ...}, else nullopt (a regex).
  ReplaceDecoder(Regex re, std::optional<std::string> literal, std::string content)
      : re_(std::move(re)), literal_(std::move(literal)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<Match> m;
    for (auto& t : tokens) {
      if (t.empty()) continue;
      re_.find_all(t, m);
      if (m.empty()) continue;
      std::string out;
      size_t last = 0;
      for (const auto& x : m) {
        out.append(t, last, x.start - last);
        out += content_;
        last = x.end;
      }
      out.append(t, last, std::string::npos);
      t.swap(out);
    }
  }
  // A literal and a replacement with a character a byte token cannot hold (LLaMA 2's "\u2581" ->
  // " "): byte tokens have no match, and a token with a match keeps a character that no byte
  // token has.
  bool keeps_byte_tokens() const override {
    auto outside = [](const std::string& x) {
      return !x.empty() && x.find_first_of("<>x0123456789abcdefABCDEF") == std::string::npos;
    };
    return literal_ && outside(*literal_) && outside(content_);
  }
  // A literal without U+FFFD cannot match a final U+FFFD (UTF-8 matches start and end on
  // character boundaries); an empty one would match after it.
  bool keeps_final_replacement() const override {
    return literal_ && !literal_->empty() && literal_->find("\xEF\xBF\xBD") == std::string::npos;
  }

 private:
  Regex re_;
  std::optional<std::string> literal_;
  std::string content_;
};

class CtcDecoder final : public Decoder {
 public:
  CtcDecoder(std::string pad, std::string delim, bool cleanup)
      : pad_(std::move(pad)), delim_(std::move(delim)), cleanup_(cleanup) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && tokens[i] == tokens[i - 1]) continue;  // dedup consecutive
      std::string t = tokens[i];
      replace_all(t, pad_, "");
      if (cleanup_) {
        cleanup(t);
        replace_all(t, delim_, " ");
      }
      if (!t.empty()) out.push_back(std::move(t));
    }
    tokens.swap(out);
  }

 private:
  std::string pad_, delim_;
  bool cleanup_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> d) : d_(std::move(d)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : d_) d->decode_chain(tokens);
  }
  bool holds_invalid_byte_runs() const override {
    for (size_t j = 0; j < d_.size(); ++j) {
      if (!d_[j]->holds_invalid_byte_runs()) {
        if (!d_[j]->keeps_byte_tokens()) return false;
        continue;
      }
      for (size_t k = j + 1; k < d_.size(); ++k) {
        if (!d_[k]->keeps_final_replacement()) return false;
      }
      return true;
    }
    return false;
  }
  bool keeps_byte_tokens() const override {
    for (const auto& d : d_) {
      if (!d->keeps_byte_tokens()) return false;
    }
    return true;
  }
  bool keeps_final_replacement() const override {
    for (const auto& d : d_) {
      if (!d->keeps_final_replacement()) return false;
    }
    return true;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> d_;
};

char32_t one_char(const Field& f) {
  const std::string s = f.str();
  size_t i = 0;
  if (s.empty() || !unicode::is_valid_utf8(s)) f.fail("must be a single character");
  const char32_t c = next_cp(s, i);
  if (i != s.size()) f.fail("must be a single character");
  return c;
}

size_t count_field(const Field& f, const char* key) {
  const int64_t v = f.int_or(key, 0);
  if (v < 0) f.at(key).fail("must not be negative");
  return static_cast<size_t>(v);
}

}  // namespace

int byte_fallback_value(std::string_view t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int x = hex(t[3]), y = hex(t[4]);
  return x < 0 || y < 0 ? -1 : x * 16 + y;
}

std::unique_ptr<Decoder> make_decoder(const Field& f) {
  if (f.is_null()) return nullptr;
  const std::string type = f.at("type").str();
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(parse_metaspace(f));
  if (type == "WordPiece") {
    return std::make_unique<WordPieceDecoder>(f.str_or("prefix", "##"), f.bool_or("cleanup", true));
  }
  if (type == "BPEDecoder") return std::make_unique<BpeDecoder>(f.str_or("suffix", "</w>"));
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(one_char(f.at("content")), count_field(f, "start"),
                                          count_field(f, "stop"));
  }
  if (type == "Replace") {
    const Field pattern = f.at("pattern");
    Regex re = parse_pattern(pattern);  // checks the pattern's form first
    std::optional<std::string> literal;
    if (auto x = pattern.optional("String")) literal = x->str();
    return std::make_unique<ReplaceDecoder>(std::move(re), std::move(literal),
                                            f.at("content").str());
  }
  if (type == "CTC") {
    return std::make_unique<CtcDecoder>(f.str_or("pad_token", "<pad>"),
                                        f.str_or("word_delimiter_token", "|"),
                                        f.bool_or("cleanup", true));
  }
  if (type == "Sequence") {
    const Field list = f.at("decoders");
    std::vector<std::unique_ptr<Decoder>> d;
    for (size_t i = 0; i < list.size(); ++i) {
      auto x = make_decoder(list.element(i));
      if (x) d.push_back(std::move(x));
    }
    return std::make_unique<SequenceDecoder>(std::move(d));
  }
  f.at("type").fail("names an unknown decoder");
}

}  // namespace tessera::tokenizers
