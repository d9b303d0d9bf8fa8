// JSON mode's automaton against nlohmann::json's parser (an independent reference): a string is a
// complete answer (a top-level object, nothing after it) exactly when nlohmann accepts it as an
// object, over valid objects made here and their one-byte mutations; every prefix of a valid
// object is accepted on the way; and the constraint allows only tokens that keep the text valid.
#include "runtime/serving/json_guide.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "runtime/serving/byte_tokenizer.h"

namespace tessera::serving {
namespace {

// A random JSON value (depth-limited), written with random whitespace.
std::string random_value(std::mt19937& rng, int depth, bool object = false) {
  auto ws = [&] {
    static const char* spaces[] = {"", "", "", " ", "\n", "\t ", "\r\n"};
    return std::string(spaces[rng() % 7]);
  };
  const int kind = object ? 0 : static_cast<int>(rng() % (depth > 3 ? 5 : 7));
  switch (kind) {
    case 0:
    case 5: {
      std::string s = "{" + ws();
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i) {
        if (i) s += "," + ws();
        s += "\"k" + std::to_string(rng() % 100) + "\"" + ws() + ":" + ws() +
             random_value(rng, depth + 1) + ws();
      }
      return s + "}";
    }
    case 6: {
      std::string s = "[" + ws();
      const int n = static_cast<int>(rng() % 4);
      for (int i = 0; i < n; ++i) s += (i ? "," + ws() : "") + random_value(rng, depth + 1) + ws();
      return s + "]";
    }
    case 1: {
      static const char* strs[] = {"\"\"",
                                   "\"a b\"",
                                   "\"\\n\\\"\\\\\\/\\t\"",
                                   "\"\\u00e9x\"",
                                   "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"",
                                   "\"\\ud83d\\ude00 \\uD834\\uDD1E \\uFFFD\\ud7ff\""};
      return strs[rng() % 6];
    }
    case 2: {
      static const char* nums[] = {"0", "-0", "12", "-3.25", "1e5", "2.5E-3", "-0.0e+10", "907"};
      return nums[rng() % 8];
    }
    case 3: {
      static const char* lits[] = {"true", "false", "null"};
      return lits[rng() % 3];
    }
    default:
      return "\"x\"";
  }
}

bool complete(const std::string& s) {
  JsonState st;
  return st.feed(s) && st.done();
}

bool reference_object(const std::string& s) {
  if (!nlohmann::json::accept(s)) return false;
  const auto j = nlohmann::json::parse(s);
  // The automaton ends at the object: no trailing whitespace.
  return j.is_object() && !s.empty() && s.back() == '}';
}

TEST(JsonGuide, AgreesWithNlohmannOnObjectsAndTheirMutations) {
  std::mt19937 rng(5);
  const std::string alphabet = "{}[]\":,.-+eE0123456789 \n\\tfnrua\x01\xc3\xa9\xff";
  int valid = 0, mutated = 0;
  for (int i = 0; i < 3000; ++i) {
    const std::string s =
        std::string(" \n"[rng() % 2] == ' ' ? "" : "\n") + random_value(rng, 0, /*object=*/true);
    ASSERT_TRUE(reference_object(s)) << s;
    EXPECT_TRUE(complete(s)) << s;
    // Every proper prefix is a valid start, not yet complete.
    JsonState st;
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      ASSERT_TRUE(st.feed(static_cast<unsigned char>(s[k]))) << s << " at " << k;
      ASSERT_FALSE(st.done()) << s << " at " << k;
    }
    ++valid;
    for (int m = 0; m < 4; ++m) {
      std::string t = s;
      const size_t at = rng() % t.size();
      switch (rng() % 3) {
        case 0:
          t[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          t.erase(at, 1);
          break;
        default:
          t.insert(t.begin() + static_cast<std::ptrdiff_t>(at), alphabet[rng() % alphabet.size()]);
      }
      EXPECT_EQ(complete(t), reference_object(t)) << t;
      ++mutated;
    }
  }
  EXPECT_EQ(valid, 3000);
  EXPECT_GT(mutated, 10000);
}

TEST(JsonGuide, RefusesWhatAnObjectCannotHoldAndTakesSurrogatePairs) {
  for (const std::string s :
       {"[1]", "\"x\"", "{\"a\":1} ", "{\"a\":01}", "{\"a\":1.}", "{\"a\":\"\x01\"}",
        "{\"a\":\"\xc3\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}",
        "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":\"\\uDBFF\\uDBFF\"}", "{\"a\":\"\\ud800x\"}",
        "{\"a\":tru}", "{'a':1}", "{\"a\" 1}", "{,}", "{\"a\":1,}"}) {
    EXPECT_FALSE(complete(s)) << s;
    EXPECT_FALSE(reference_object(s)) << s;
  }
  // Surrogate pairs, as Python's json.dumps writes characters past U+FFFF.
  for (const std::string s : {"{\"a\":\"\\ud83d\\ude00\"}", "{\"a\":\"\\uDBFF\\uDFFF\"}",
                              "{\"\\uD800\\uDC00\":\"\\ud7ff\\ue000\"}"}) {
    EXPECT_TRUE(reference_object(s)) << s;
    EXPECT_TRUE(complete(s)) << s;
  }
  std::string deep = "{\"a\":";
  for (int i = 0; i < 40; ++i) deep += "[";
  JsonState st;
  EXPECT_FALSE(st.feed(deep)) << "deeper than kMaxDepth";
}

TEST(JsonGuide, ConstraintAllowsOnlyValidContinuations) {
  const ByteTokenizer tok;
  const JsonObjectConstraint c(tok.piece_table(), {257});
  auto ids = [](const std::string& s) { return std::vector<int32_t>(s.begin(), s.end()); };
  // At the start: whitespace or '{'.
  EXPECT_EQ(c.allowed({}), (std::vector<int32_t>{'\t', '\n', '\r', ' ', '{'}));
  // After {"a": a value starts.
  const auto after_colon = c.allowed(ids("{\"a\":"));
  for (int32_t t : after_colon) {
    JsonState st = c.state_of(ids("{\"a\":"));
    EXPECT_TRUE(st.feed(static_cast<unsigned char>(t))) << t;
  }
  EXPECT_EQ(after_colon.size(), 4u + 1 + 1 + 1 + 1 + 10 + 3);  // ws, " { [ - digits t f n
  // Complete: only the end.
  EXPECT_EQ(c.allowed(ids("{\"a\":[1,2]}")), std::vector<int32_t>{257});
  EXPECT_TRUE(c.complete(ids("{}")));
  EXPECT_FALSE(c.complete(ids("{\"a\"")));
}

// The cache keyed by what a token can see of the state gives what a fresh scan gives, at every
// prefix of 400 random objects, a quarter of them nested up to kMaxDepth (one constraint for all,
// so keys are shared across answers).
TEST(JsonGuide, CachedAllowedIdsEqualAFreshScan) {
  // The 256 bytes, then pieces that close or open several levels at once, as BPE vocabularies
  // have, and <eos> (no text).
  auto table = std::make_shared<PieceTable>();
  for (int b = 0; b < 256; ++b) table->text.push_back(std::string(1, static_cast<char>(b)));
  for (const char* p : {"}}",     "]}",       "}]",     "]]",      "}]}",   "]}]}",   "\"}",
                        "\"]",    "\":",      ", \"",   "\": {\"", "[[",    "{\"",    "true}",
                        "null]",  "0}",       "1,",     "e+",      "\\u00", "\"}]}}", "  ",
                        "\n  \"", "]}]}, \"", "}]}],1", "}}}},0"}) {
    table->text.push_back(p);
  }
  table->text.push_back("");
  const auto eos = static_cast<int32_t>(table->text.size() - 1);
  for (size_t id = 0; id < table->text.size(); ++id) {
    if (!table->text[id].empty()) {
      table->by_first_byte[static_cast<unsigned char>(table->text[id][0])].push_back(
          static_cast<int32_t>(id));
    }
  }
  const JsonObjectConstraint c(table, {eos});
  std::mt19937 rng(9);
  int compared = 0;
  // Nested down to kMaxDepth too, where the cache key must hold the depth.
  auto deep = [&] {
    const int levels = 1 + static_cast<int>(rng() % JsonState::kMaxDepth);
    std::string open, close;
    for (int l = 0; l < levels; ++l) {
      const bool object = l == 0 || rng() % 2;
      open += object ? "{\"k\": " : "[1, ";
      close.insert(0, rng() % 3 ? (object ? "}" : "]") : (object ? ", \"z\": null}" : ", 2]"));
    }
    return open + random_value(rng, 4) + close;
  };
  for (int i = 0; i < 400; ++i) {
    const std::string s = i % 4 == 3 ? deep() : random_value(rng, 0, /*object=*/true);
    std::vector<int32_t> ids;
    for (size_t k = 0; k <= s.size(); ++k) {
      ASSERT_EQ(c.allowed(ids), c.scan(c.state_of(ids))) << s.substr(0, k);
      ++compared;
      if (k < s.size()) ids.push_back(static_cast<unsigned char>(s[k]));
    }
  }
  EXPECT_GT(compared, 3000);
}

// Serving's JSON-mode requests share their tokenizer's mask cache; it gives what a cache of a
// request's own gives.
TEST(JsonGuide, OneMaskCachePerTokenizer) {
  const ByteTokenizer tok;
  const auto masks = tok.json_mask_cache();
  EXPECT_EQ(masks.get(), tok.json_mask_cache().get());
  const JsonObjectConstraint a(masks), b(masks), own(tok.piece_table(), tok.eos_ids());
  std::mt19937 rng(12);
  for (int i = 0; i < 50; ++i) {
    const std::string s = random_value(rng, 0, /*object=*/true);
    std::vector<int32_t> ids;
    for (size_t k = 0; k <= s.size(); ++k) {
      const auto got = (i % 2 ? a : b).allowed(ids);
      ASSERT_EQ(got, own.allowed(ids)) << s.substr(0, k);
      if (k < s.size()) ids.push_back(static_cast<unsigned char>(s[k]));
    }
    EXPECT_TRUE(a.complete(ids)) << s;
  }
}

// state_of remembers the last few outputs: 24 interleaved answers (more than it remembers), which
// share prefixes, diverge, grow by 1-3 tokens, and start again shorter, get at every step the state
// a fresh automaton reaches on their text, valid or not.
TEST(JsonGuide, RememberedStatesEqualAFreshRun) {
  const ByteTokenizer tok;
  const JsonObjectConstraint c(tok.piece_table(), {257});
  std::mt19937 rng(4);
  auto text_ids = [](const std::string& s) {
    std::vector<int32_t> ids;
    for (unsigned char b : s) ids.push_back(b);
    return ids;
  };
  std::vector<std::vector<int32_t>> answers;
  const std::string common = "{\"shared\": [1, 2, {\"x\": \"y\"}], \"k\": ";
  for (int i = 0; i < 24; ++i) {
    std::string s = random_value(rng, 0, /*object=*/true);
    if (i % 3 == 0) s = common + random_value(rng, 1) + "}";
    if (i % 4 == 1) s.insert(s.begin() + rng() % s.size(), '\x01');  // invalid from there
    answers.push_back(text_ids(s));
  }
  auto fresh = [&](std::span<const int32_t> ids) {
    JsonState s;
    for (int32_t id : ids) {
      if (!s.feed(tok.piece_table()->text[static_cast<size_t>(id)])) break;
    }
    return s;
  };
  std::vector<size_t> at(answers.size(), 0);
  int checked = 0, invalid = 0;
  for (int step = 0; step < 20000; ++step) {
    const size_t a = rng() % answers.size();
    const auto& ids = answers[a];
    at[a] = rng() % 16 == 0 ? rng() % (at[a] + 1) : std::min(ids.size(), at[a] + 1 + rng() % 3);
    const std::span<const int32_t> prefix(ids.data(), at[a]);
    const JsonState want = fresh(prefix);
    const JsonState got = c.state_of(prefix);
    ASSERT_EQ(got.mode, want.mode) << "answer " << a << " at " << at[a];
    ASSERT_EQ(got.stack, want.stack) << "answer " << a << " at " << at[a];
    ASSERT_EQ(got.key, want.key);
    ASSERT_EQ(got.count, want.count);
    ASSERT_EQ(got.lo, want.lo);
    ASSERT_EQ(got.hi, want.hi);
    ASSERT_EQ(got.literal, want.literal);
    ++checked;
    invalid += want.mode == JsonState::Mode::kError;
  }
  EXPECT_EQ(checked, 20000);
  EXPECT_GT(invalid, 100) << "the invalid answers' error states were not reached";
}

}  // namespace
}  // namespace tessera::serving
