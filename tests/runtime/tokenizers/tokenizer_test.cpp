// Tokenizer loading and its failure modes: every malformed file of the seed corpus
// (tests/fuzz_corpus/tokenizer_json) fails with one error that names the field; thousands of
// random mutations of a valid file never crash; model folders (tokenizer_config.json, the byte
// tokenizer of the built-in models); streaming of split characters.
#include "runtime/tokenizers/tokenizer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "common/error.h"
#include "runtime/tokenizers/incremental_decoder.h"
#include "runtime/tokenizers/unicode.h"

namespace tessera::tokenizers {
namespace {

namespace fs = std::filesystem;

fs::path corpus_dir() {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  return fs::path(src ? src : ".") / "tests" / "fuzz_corpus" / "tokenizer_json";
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tessera_tok_test_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
  }

 private:
  fs::path path_;
};

// What each malformed file's error must name: the field (with its path) or the problem.
const std::map<std::string, std::string>& expected_errors() {
  static const std::map<std::string, std::string> m = {
      {"empty.json", "is not valid JSON"},
      {"not_json.json", "is not valid JSON"},
      {"truncated.json", "is not valid JSON"},
      {"invalid_utf8.json", "is not valid JSON"},
      {"deeply_nested.json", "nesting is deeper than"},
      {"top_level_array.json", "must be an object"},
      {"version_wrong.json", "field 'version'"},
      {"model_missing.json", "field 'model' is missing"},
      {"model_not_object.json", "field 'model' must be an object"},
      {"model_type_unknown.json", "field 'model.type' names an unknown model"},
      {"model_type_wrong_type.json", "field 'model.type' must be a string"},
      {"vocab_missing.json", "field 'model.vocab' is missing"},
      {"vocab_not_object.json", "field 'model.vocab' must be an object"},
      {"vocab_id_string.json", "field 'model.vocab[\"a\"]' must be an integer"},
      {"vocab_id_negative.json", "field 'model.vocab[\"a\"]' must be a token id"},
      {"vocab_id_huge.json", "field 'model.vocab[\"a\"]' must be a token id"},
      {"merges_missing.json", "field 'model.merges' is missing"},
      {"merges_not_array.json", "field 'model.merges' must be an array"},
      {"merges_wrong_type.json", "field 'model.merges[1]' must be a string"},
      {"merges_bad_format.json", "field 'model.merges[0]' must be two tokens"},
      {"merges_unknown_token.json", "field 'model.merges[1]' names token 'zz'"},
      {"merges_result_unknown.json", "field 'model.merges[0]' merges into 'ba'"},
      {"dropout_nonnull.json", "field 'model.dropout' asks for BPE dropout"},
      {"dropout_out_of_range.json", "field 'model.dropout' must be in [0, 1]"},
      {"fuse_unk_wrong_type.json", "field 'model.fuse_unk' must be a boolean"},
      {"normalizer_unknown.json", "field 'normalizer.type' names an unknown normalizer"},
      {"normalizer_missing_type.json", "field 'normalizer.type' is missing"},
      {"normalizer_precompiled.json", "field 'normalizer.type' is not supported"},
      {"normalizer_sequence_not_array.json", "field 'normalizer.normalizers' must be an array"},
      {"replace_pattern_wrong.json", "field 'normalizer.pattern' must be {\"String\""},
      {"pre_tokenizer_bad_regex.json", "regex pattern '(unclosed' is invalid"},
      {"pre_tokenizer_bad_behavior.json", "field 'pre_tokenizer.behavior' must be one of"},
      {"pre_tokenizer_unknown.json", "field 'pre_tokenizer.type' names an unknown"},
      {"metaspace_replacement_two_chars.json",
       "field 'pre_tokenizer.replacement' must be a single character"},
      {"metaspace_scheme_unknown.json", "field 'pre_tokenizer.prepend_scheme' must be one of"},
      {"added_tokens_not_array.json", "field 'added_tokens' must be an array"},
      {"added_token_missing_content.json", "field 'added_tokens[0].content' is missing"},
      {"added_token_content_wrong_type.json", "field 'added_tokens[0].content' must be a string"},
      {"post_processor_unknown_special.json",
       "field 'post_processor.single[0].SpecialToken.id' names a special token missing"},
      {"post_processor_unknown.json", "field 'post_processor.type' names an unknown"},
      {"bert_processing_bad_pair.json", "field 'post_processor.sep' must be a pair"},
      {"decoder_unknown.json", "field 'decoder.type' names an unknown decoder"},
      {"strip_decoder_negative.json", "field 'decoder.start' must not be negative"},
      {"wordpiece_max_negative.json", "field 'model.max_input_chars_per_word' must not be"},
      {"unigram_vocab_bad_pair.json", "field 'model.vocab[0]' must be a pair"},
      {"unigram_unk_id_out_of_range.json", "field 'model.unk_id' is outside the vocab"},
      // The fuzzer's: an empty-matching Replace with a long content grows "[SEP]" too far.
      {"oom-replace-normalizer-growth", "Replace normalizer /[0-9]{4,|/: "},
      {"timeout-replace-normalizer-growth", "Replace normalizer /[0-9]{4,|/: "},
  };
  return m;
}

TEST(TokenizerJson, MalformedFilesFailNamingTheField) {
  ASSERT_TRUE(fs::is_directory(corpus_dir())) << corpus_dir();
  size_t valid = 0, malformed = 0;
  for (const auto& e : fs::directory_iterator(corpus_dir())) {
    const std::string name = e.path().filename().string();
    if (name.rfind("valid_", 0) == 0) {
      auto tok = Tokenizer::from_file(e.path().string());
      EXPECT_FALSE(tok->encode("ab ab").empty()) << name;
      ++valid;
      continue;
    }
    auto it = expected_errors().find(name);
    ASSERT_NE(it, expected_errors().end()) << "no expected error listed for " << name;
    try {
      Tokenizer::from_file(e.path().string());
      ADD_FAILURE() << name << " loaded without an error";
    } catch (const Error& err) {
      const std::string msg = err.message();
      EXPECT_NE(msg.find(it->second), std::string::npos) << name << ": " << msg;
      EXPECT_NE(msg.find(name), std::string::npos) << "the error names the file: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    }
    ++malformed;
  }
  EXPECT_EQ(valid, 3u);
  EXPECT_EQ(malformed, expected_errors().size());
}

// Random truncations, byte flips, deletions and insertions of valid files: each loads or fails
// with tessera::Error, and what loads encodes and decodes.
TEST(TokenizerJson, MutationsNeverCrash) {
  std::mt19937 rng(7);
  const std::string strings[] = {"ab ab", "", "héllo wörld 🙂", "\xff\xfe", "<s>ab<s>"};
  size_t loaded = 0, refused = 0;
  for (const char* base : {"valid_bpe.json", "valid_wordpiece.json", "valid_unigram.json"}) {
    const std::string text = read(corpus_dir() / base);
    for (int i = 0; i < 700; ++i) {
      std::string m = text;
      const size_t pos = rng() % m.size();
      switch (rng() % 4) {
        case 0:
          m.resize(pos);
          break;
        case 1:
          m[pos] = static_cast<char>(rng() % 256);
          break;
        case 2:
          m.erase(pos, 1 + rng() % 8);
          break;
        default:
          m.insert(pos, 1, "{}[],:\"0a-"[rng() % 10]);
      }
      try {
        auto tok = Tokenizer::from_json_text(m, base);
        ++loaded;
        for (const auto& s : strings) {
          try {
            const auto ids = tok->encode(s);
            const std::string d = tok->decode(ids);
            EXPECT_TRUE(unicode::is_valid_utf8(d));
          } catch (const Error&) {
            // e.g. a WordPiece whose mutated unk_token is no longer in the vocabulary
          }
        }
      } catch (const Error&) {
        ++refused;
      }
    }
  }
  EXPECT_EQ(loaded + refused, 2100u);
  EXPECT_GT(refused, 0u);
}

TEST(TokenizerFolder, WithoutTokenizerJsonIsTheByteTokenizer) {
  TempDir d;
  d.write("config.json", "{}");
  auto tok = Tokenizer::from_folder(d.path().string());
  ASSERT_TRUE(tok->is_byte_tokenizer());
  const std::string text = "h\xC3\xA9llo \xF0\x9F\x99\x82";
  const auto ids = tok->encode(text);
  ASSERT_EQ(ids.size(), text.size() + 1);
  EXPECT_EQ(ids[0], *tok->bos_id());
  for (size_t i = 0; i < text.size(); ++i) {
    EXPECT_EQ(ids[i + 1], static_cast<unsigned char>(text[i]));
  }
  EXPECT_EQ(tok->decode(ids), text);
  EXPECT_EQ(tok->vocab_size(), 258);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{257});
  EXPECT_TRUE(tok->is_special(256));
  // Bytes that are not UTF-8 decode to U+FFFD, one per maximal invalid subsequence.
  EXPECT_EQ(tok->decode(std::vector<int32_t>{0x61, 0xE2, 0x82, 0x62, 0xFF}),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD");
}

TEST(TokenizerFolder, RefusesOtherTokenizerFormats) {
  TempDir d;
  d.write("tokenizer.model", "sentencepiece");
  try {
    Tokenizer::from_folder(d.path().string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("has tokenizer.model but no tokenizer.json"), std::string::npos)
        << e.message();
  }
  EXPECT_THROW(Tokenizer::from_folder((d.path() / "missing").string()), Error);
}

TEST(TokenizerFolder, ReadsSpecialTokensAndTransformersBosEos) {
  TempDir d;
  d.write("tokenizer.json", read(corpus_dir() / "valid_bpe.json"));
  // The file's template adds <s>; transformers' LlamaTokenizer rebuilds it from the flags.
  d.write("tokenizer_config.json",
          R"({"tokenizer_class": "LlamaTokenizer", "add_bos_token": false, "add_eos_token": true,
              "bos_token": {"content": "<s>"}, "eos_token": "Ġab"})");
  d.write("generation_config.json", R"({"eos_token_id": [5, 3]})");
  auto tok = Tokenizer::from_folder(d.path().string());
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_ids(), (std::vector<int32_t>{5, 3}));
  const auto plain = tok->encode("ab", false);
  auto with = plain;
  with.push_back(5);  // eos appended, no bos
  EXPECT_EQ(tok->encode("ab", true), with);

  d.write("tokenizer_config.json", R"({"eos_token": "<unknown>"})");
  try {
    Tokenizer::from_folder(d.path().string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("field 'eos_token' names token '<unknown>'"), std::string::npos)
        << e.message();
  }
}

// Streaming never shows half a character, even when a character's bytes come one token at a
// time, and invalid bytes come out as U+FFFD at the latest when the request ends.
TEST(IncrementalDecoder, HoldsSplitCharactersAndFlushesInvalidBytes) {
  auto tok = Tokenizer::byte_tokenizer();
  const std::string text = "a\xC3\xA9\xF0\x9F\x99\x82z";
  const std::vector<int32_t> prompt = {256, 'x', 'y'};
  IncrementalDecoder dec(*tok, prompt, true);
  std::string shown;
  for (unsigned char c : text) {
    const std::string piece = dec.step(c);
    EXPECT_TRUE(unicode::is_valid_utf8(piece));
    EXPECT_EQ(unicode::complete_utf8_prefix(piece), piece.size());
    shown += piece;
  }
  shown += dec.flush();
  EXPECT_EQ(shown, text);

  IncrementalDecoder bad(*tok, {}, true);
  std::string out = bad.step(0xE2);
  out += bad.step(0x82);
  EXPECT_EQ(out, "");  // could still become a character
  out += bad.flush();
  EXPECT_EQ(out, "\xEF\xBF\xBD");
}

// A long run of ids the decode drops (special tokens skipped, ids with no token) costs the stream
// nothing and changes no text: WordPiece's first word after 200,000 [UNK]/[PAD] ids still has no
// leading space, as in one decode of all ids. (The window once kept such ids: every step decoded
// the whole run, 4.8 s for 20,000 [UNK] in a release build.)
TEST(IncrementalDecoder, RunsOfSkippedIdsCostNothingAndChangeNoText) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  auto tok = Tokenizer::from_file(
      (fs::path(src ? src : ".") / "tests" / "fuzz" / "tokenizers" / "bert_wordpiece.json")
          .string());
  const auto unk = tok->token_to_id("[UNK]");
  const auto pad = tok->token_to_id("[PAD]");
  ASSERT_TRUE(unk && pad);
  const auto words = tok->encode("a b c, d.", false);  // its vocabulary: letters
  ASSERT_GE(words.size(), 3u);
  std::vector<int32_t> ids;
  for (int i = 0; i < 200000; ++i) ids.push_back(i % 3 ? *unk : *pad);
  ids.push_back(tok->vocab_size() + 7);  // no token: decode drops it
  ids.insert(ids.end(), words.begin(), words.end());
  for (int i = 0; i < 1000; ++i) ids.push_back(*pad);
  ids.push_back(words.front());
  const auto t0 = std::chrono::steady_clock::now();
  IncrementalDecoder dec(*tok, {}, true);
  std::string shown;
  for (int32_t id : ids) shown += dec.step(id);
  shown += dec.flush();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(shown, tok->decode(ids, true));
  EXPECT_EQ(shown.substr(0, 10), "a b c, d. ") << shown;
  EXPECT_LT(s, 5.0) << "streaming 201,000 dropped ids took " << s << " s";

  // Kept, the same special tokens are text, and the stream still matches one decode.
  std::vector<int32_t> some(ids.end() - 1010, ids.end());
  IncrementalDecoder keep(*tok, {}, false);
  std::string all;
  for (int32_t id : some) all += keep.step(id);
  all += keep.flush();
  EXPECT_EQ(all, tok->decode(some, false));
}

// A long run of ids that form no character (a random or broken model's output): with a
// prefix-stable decode (ByteLevel BPEs, the byte tokenizer) the stream shows it as it goes and
// stays linear; holding it all made every step decode the whole run (8,000 ids: 1.6 s, quadratic).
// A byte-fallback tokenizer still holds (the crate turns an invalid run into U+FFFD as a whole),
// but once the run is invalid past repair it takes each further byte without a decode: linear too.
TEST(IncrementalDecoder, LongRunsOfInvalidBytesAreShownAsTheyCome) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  const fs::path dir = fs::path(src ? src : ".") / "tests" / "fuzz" / "tokenizers";
  std::vector<std::pair<std::string, std::unique_ptr<Tokenizer>>> toks;
  for (const char* name :
       {"gpt2_bytelevel", "llama3_split", "llama2_sp_legacy", "mistral_sp_metaspace"}) {
    toks.emplace_back(name, Tokenizer::from_file((dir / (std::string(name) + ".json")).string()));
  }
  toks.emplace_back("byte", Tokenizer::byte_tokenizer());
  for (const auto& [name, tok] : toks) {
    int32_t bad = -1;  // a token whose text is one byte that starts no character
    for (int32_t id = 0; id < tok->vocab_size() && bad < 0; ++id) {
      if (tok->decode(std::vector<int32_t>{id, id}, false) == "\xEF\xBF\xBD\xEF\xBF\xBD") bad = id;
    }
    ASSERT_GE(bad, 0) << name;
    std::vector<int32_t> ids(8000, bad);
    const auto tail = tok->encode("ok \xE4\xBD\xA0", false);  // then text, a 3-byte character
    ids.insert(ids.end(), tail.begin(), tail.end());
    const auto t0 = std::chrono::steady_clock::now();
    IncrementalDecoder dec(*tok, {}, true);
    std::string shown;
    size_t pieces = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string piece = dec.step(ids[i]);
      pieces += i < 8000 && !piece.empty();  // during the run
      shown += piece;
    }
    shown += dec.flush();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(shown, tok->decode(ids, true)) << name;
    if (tok->decode_is_prefix_stable()) {
      EXPECT_GE(pieces, 8000 / IncrementalDecoder::kMaxHeld) << name;
    } else {
      EXPECT_EQ(pieces, 0u) << name << ": a byte-fallback run is held whole";
      EXPECT_GE(tok->held_fallback_byte(bad), 0) << name;
    }
    // Linear: 5-10 ms a tokenizer here (release build); the quadratic hold took 1.6 s (8 s
    // under ASan).
    EXPECT_LT(s, 0.5) << name << ": " << s << " s";
  }
}

// What IncrementalDecoder streams for `ids`, each piece checked to be valid UTF-8.
std::string streamed(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  IncrementalDecoder dec(tok, {}, skip);
  std::string shown;
  for (int32_t id : ids) {
    const std::string piece = dec.step(id);
    EXPECT_TRUE(unicode::is_valid_utf8(piece)) << "a streamed piece is invalid UTF-8";
    shown += piece;
  }
  return shown + dec.flush();
}

// The stream as it was before runs of invalid bytes were bounded: every step decodes the whole
// window (kept ids from the start of the last step that gave text), holds while the text ends in
// U+FFFD, and shows what follows the text shown so far. The oracle for the bounded one.
std::string stream_decoding_every_step(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                       bool skip) {
  auto kept = [&](int32_t id) {
    return tok.id_to_token(id).has_value() && !(skip && tok.is_special(id));
  };
  auto held = [](const std::string& t) {
    return t.size() >= 3 && t.substr(t.size() - 3) == "\uFFFD";
  };
  std::vector<int32_t> window;
  size_t read = 0;
  std::string shown_text, out;
  auto show = [&](const std::string& now) {
    std::string piece;
    if (now.compare(0, shown_text.size(), shown_text) == 0) {
      piece = now.substr(shown_text.size());
    } else {
      size_t k = 0;
      while (k < shown_text.size() && k < now.size() && shown_text[k] == now[k]) ++k;
      while (k > 0 && (static_cast<unsigned char>(now[k]) & 0xC0) == 0x80) --k;
      piece = now.substr(k);
    }
    window.erase(window.begin(), window.begin() + static_cast<std::ptrdiff_t>(read));
    read = window.size();
    shown_text = tok.decode(window, skip);
    out += piece;
  };
  for (int32_t id : ids) {
    if (!kept(id)) continue;
    window.push_back(id);
    const std::string now = tok.decode(window, skip);
    if (!held(now)) show(now);
  }
  if (read < window.size()) show(tok.decode(window, skip));
  return out;
}

// Byte-fallback tokenizers (LLaMA 2 / Mistral layouts) on random ids, half of them byte tokens
// (valid characters split into bytes, stray continuation bytes, bytes that start nothing): the
// bounded stream shows exactly what decoding every step showed, piece by piece valid UTF-8.
TEST(IncrementalDecoder, ByteFallbackRunsStreamAsDecodingEveryStep) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  const fs::path dir = fs::path(src ? src : ".") / "tests" / "fuzz" / "tokenizers";
  std::mt19937 rng(11);
  for (const char* name : {"llama2_sp_legacy", "mistral_sp_metaspace"}) {
    auto tok = Tokenizer::from_file((dir / (std::string(name) + ".json")).string());
    std::vector<int32_t> bytes(256, -1), others;
    for (int32_t id = 0; id < tok->vocab_size(); ++id) {
      const int b = tok->held_fallback_byte(id);
      if (b >= 0) {
        bytes[static_cast<size_t>(b)] = id;
      } else {
        others.push_back(id);
      }
    }
    ASSERT_EQ(std::count(bytes.begin(), bytes.end(), -1), 0) << name << ": 256 byte tokens";
    size_t dead_runs = 0;
    for (int round = 0; round < 400; ++round) {
      std::vector<int32_t> ids;
      const int n = 1 + static_cast<int>(rng() % 120);
      while (static_cast<int>(ids.size()) < n) {
        const unsigned kind = rng() % 4;
        if (kind == 0) {
          ids.push_back(others[rng() % others.size()]);
        } else if (kind == 1) {  // a valid character, byte by byte
          const std::string c = unicode::to_utf8(static_cast<char32_t>(0x80 + rng() % 0x2FF80));
          if (!unicode::is_valid_utf8(c)) continue;  // a surrogate
          for (unsigned char b : c) ids.push_back(bytes[b]);
        } else {  // any byte: continuation bytes, 0xC0/0xC1/0xF5-0xFF, leads without followers
          ids.push_back(bytes[rng() % 256]);
        }
      }
      for (bool skip : {true, false}) {
        const std::string shown = streamed(*tok, ids, skip);
        ASSERT_EQ(shown, stream_decoding_every_step(*tok, ids, skip)) << name << " round " << round;
        dead_runs += shown.find("\uFFFD\uFFFD\uFFFD") != std::string::npos;
      }
    }
    EXPECT_GT(dead_runs, 100u) << name << ": the rounds should hold long invalid runs";
  }
}

// The one place the stream and one decode differ: a byte-fallback run that spells a character and
// then bytes that form none. The stream shows the character when it completes; the crate's decode
// (and ours) turns the whole run into U+FFFD, one per byte, once it is invalid.
TEST(IncrementalDecoder, ARunThatTurnsInvalidAfterACharacterWasShown) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  auto tok = Tokenizer::from_file(
      (fs::path(src ? src : ".") / "tests" / "fuzz" / "tokenizers" / "llama2_sp_legacy.json")
          .string());
  const auto byte = [&](const char* t) { return tok->token_to_id(t).value(); };
  const std::vector<int32_t> ids = {byte("<0xC3>"), byte("<0xA9>"), byte("<0xFF>"), byte("a")};
  const std::string fffd = "\uFFFD";
  EXPECT_EQ(tok->decode(ids, true), fffd + fffd + fffd + "a");
  IncrementalDecoder dec(*tok, {}, true);
  EXPECT_EQ(dec.step(ids[0]), "");
  EXPECT_EQ(dec.step(ids[1]), "\u00E9");  // shown: the run so far is valid
  EXPECT_EQ(dec.step(ids[2]), "");        // held: ends in U+FFFD
  // The window's text, after the character already shown.
  const std::string rest = dec.step(ids[3]);
  EXPECT_EQ(rest + dec.flush(), fffd + fffd + fffd + "a");
}

// Which decoders let a growing invalid byte run skip its decode: ByteFallback with decoders
// before it that keep byte tokens and after it that keep a final U+FFFD. The others hold as
// before, and every layout streams as decoding every step does.
TEST(IncrementalDecoder, WhichDecodersTakeInvalidByteRunsWithoutDecoding) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  const auto base = nlohmann::json::parse(
      read(fs::path(src ? src : ".") / "tests" / "fuzz" / "tokenizers" / "llama2_sp_legacy.json"));
  const auto replace = [](nlohmann::json pattern, const std::string& content) {
    return nlohmann::json{{"type", "Replace"}, {"pattern", pattern}, {"content", content}};
  };
  const auto strip = [](const std::string& c, int start, int stop) {
    return nlohmann::json{{"type", "Strip"}, {"content", c}, {"start", start}, {"stop", stop}};
  };
  const nlohmann::json fallback = {{"type", "ByteFallback"}}, fuse = {{"type", "Fuse"}};
  const auto seq = [](std::vector<nlohmann::json> d) {
    return nlohmann::json{{"type", "Sequence"}, {"decoders", d}};
  };
  const nlohmann::json space = {{"String", "\u2581"}};
  const std::vector<std::pair<nlohmann::json, bool>> cases = {
      {base["decoder"], true},  // Replace, ByteFallback, Fuse, Strip: LLaMA 2 / Mistral
      {fallback, true},
      {seq({fallback, fuse}), true},
      {seq({seq({replace(space, " ")}), fallback, seq({fuse, strip(" ", 1, 1)})}), true},
      {seq({replace({{"Regex", "\u2581"}}, " "), fallback, fuse}), false},  // a regex: unknown
      {seq({replace({{"String", "x"}}, " "), fallback, fuse}), false},      // may change "<0x41>"
      {seq({replace(space, ""), fallback, fuse}), false},  // may make "<0x41>" of "<0x\u258141>"
      {seq({fuse, fallback}), false},                      // no byte token left to fall back
      {seq({strip(" ", 1, 0), fallback}), false},          // may make one of " <0x41>"
      {seq({fallback, strip("\uFFFD", 0, 1)}), false},     // strips the final U+FFFD
      {seq({fallback, replace({{"String", "\uFFFD"}}, "?")}), false},
      {seq({fallback, replace({{"String", ""}}, "?")}), false},     // matches after the end
      {seq({replace(space, " "), fuse, strip(" ", 1, 0)}), false},  // no ByteFallback
      {{{"type", "ByteLevel"}}, false},
  };
  std::mt19937 rng(5);
  for (size_t c = 0; c < cases.size(); ++c) {
    auto j = base;
    j["decoder"] = cases[c].first;
    auto tok = Tokenizer::from_json_text(j.dump());
    const auto ff = tok->token_to_id("<0xFF>");
    ASSERT_TRUE(ff.has_value());
    EXPECT_EQ(tok->held_fallback_byte(*ff) >= 0, cases[c].second) << cases[c].first.dump();
    EXPECT_EQ(tok->held_fallback_byte(*ff), cases[c].second ? 0xFF : -1);
    for (int round = 0; round < 20; ++round) {
      std::vector<int32_t> ids;
      for (int i = 0; i < 60; ++i) {
        ids.push_back(rng() % 3 ? *ff - static_cast<int32_t>(rng() % 256)  // the byte tokens
                                : static_cast<int32_t>(rng() % tok->vocab_size()));
      }
      ASSERT_EQ(streamed(*tok, ids, true), stream_decoding_every_step(*tok, ids, true))
          << cases[c].first.dump();
    }
  }
}

// Byte-level BPEs (GPT-2 / LLaMA 3 / Qwen2 layouts): random ids are mostly bytes that form no
// character, split characters and runs of invalid bytes; the stream is valid UTF-8 piece by piece
// and adds up to one decode of all ids, with special tokens skipped and kept.
TEST(IncrementalDecoder, RandomByteLevelIdsStreamExactly) {
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  const fs::path dir = fs::path(src ? src : ".") / "tests" / "fuzz" / "tokenizers";
  std::mt19937 rng(7);
  for (const char* name : {"gpt2_bytelevel", "llama3_split", "qwen2_split_nfc"}) {
    auto tok = Tokenizer::from_file((dir / (std::string(name) + ".json")).string());
    const int32_t vocab = tok->vocab_size();
    for (int round = 0; round < 300; ++round) {
      std::vector<int32_t> ids;
      const int n = 1 + static_cast<int>(rng() % 200);
      for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>(rng() % vocab));
      for (bool skip : {true, false}) {
        ASSERT_EQ(streamed(*tok, ids, skip), tok->decode(ids, skip)) << name << " round " << round;
      }
    }
  }
}

}  // namespace
}  // namespace tessera::tokenizers
