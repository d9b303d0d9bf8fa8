// OutputProcessor: stop strings inside one delta and split across tokens, hold-back and release,
// include_stop_str_in_output, several stop strings, multi-byte UTF-8, finish(), and a randomised
// comparison with a direct search over the whole text.
#include "runtime/engine/output_processor.h"

#include <gtest/gtest.h>

#include <random>

#include "common/error.h"

namespace tessera::engine {
namespace {

struct Fed {
  std::string text;  // everything emitted, finish() included when not stopped
  std::vector<std::string> pieces;
  bool stopped = false;
  int32_t stop_index = -1;
};

Fed feed(OutputProcessor& p, const std::vector<std::string>& deltas) {
  Fed r;
  for (const auto& d : deltas) {
    TextDelta t = p.step(d);
    r.pieces.push_back(t.text);
    r.text += t.text;
    if (t.stopped && !r.stopped) {
      r.stopped = true;
      r.stop_index = t.stop_index;
    }
  }
  if (!r.stopped) r.text += p.finish();
  return r;
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

TEST(OutputProcessor, NoStopStringsPassEverything) {
  OutputProcessor p({}, false);
  EXPECT_EQ(feed(p, {"a", "bc", "", "d"}).pieces, (std::vector<std::string>{"a", "bc", "", "d"}));
}

TEST(OutputProcessor, StopInsideOneDelta) {
  OutputProcessor p({"STOP"}, false);
  Fed r = feed(p, {"abc STOP def", "more"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "abc ");
  EXPECT_EQ(r.stop_index, 0);
  EXPECT_TRUE(p.stopped());
  EXPECT_EQ(p.step("x").text, "");
  EXPECT_EQ(p.finish(), "");
}

TEST(OutputProcessor, StopSplitAcrossTokensIsHeldBack) {
  OutputProcessor p({"STOP"}, false);
  Fed r = feed(p, {"Hel", "lo ST", "O", "P and more"});
  EXPECT_EQ(r.pieces, (std::vector<std::string>{"Hel", "lo ", "", ""}));
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "Hello ");
  OutputProcessor q({"STOP"}, true);
  EXPECT_EQ(feed(q, {"Hel", "lo ST", "O", "P and more"}).text, "Hello STOP");
}

TEST(OutputProcessor, HeldTextIsReleasedWhenItCannotMatch) {
  OutputProcessor p({"STOP"}, false);
  Fed r = feed(p, {"ST", "AR", "S"});
  EXPECT_EQ(r.pieces, (std::vector<std::string>{"", "STAR", ""}));
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.text, "STARS");  // finish() releases the held "S"
  // Overlapping prefixes: "aaab" stops at "aab".
  OutputProcessor q({"aab"}, false);
  Fed s = feed(q, {"a", "a", "a", "b"});
  EXPECT_EQ(s.pieces, (std::vector<std::string>{"", "", "a", ""}));
  EXPECT_EQ(s.text, "a");
}

TEST(OutputProcessor, TheStopStringThatEndsFirstWins) {
  OutputProcessor p({"bcde", "cd"}, false);
  Fed r = feed(p, {"abcdef"});
  EXPECT_EQ(r.text, "ab");
  EXPECT_EQ(r.stop_index, 1);
  OutputProcessor q({"abc", "b"}, true);
  Fed s = feed(q, {"xabc"});
  EXPECT_EQ(s.text, "xab");
  EXPECT_EQ(s.stop_index, 1);
}

TEST(OutputProcessor, MultiByteText) {
  OutputProcessor p({"世界"}, false);
  Fed r = feed(p, {"你好", "世", "界!"});
  EXPECT_EQ(r.pieces, (std::vector<std::string>{"你好", "", ""}));
  EXPECT_EQ(r.text, "你好");
  // A stop string sharing a lead byte with the text: é (C3 A9) vs è (C3 A8).
  OutputProcessor q({"é!"}, false);
  Fed s = feed(q, {"è", "é", "a", "é", "!"});
  EXPECT_EQ(s.pieces, (std::vector<std::string>{"è", "", "éa", "", ""}));
  EXPECT_EQ(s.text, "èéa");
  for (const auto& piece : s.pieces) EXPECT_TRUE(valid_utf8(piece));
  OutputProcessor e({"🙂x"}, true);
  EXPECT_EQ(feed(e, {"ok🙂", "x tail"}).text, "ok🙂x");
}

TEST(OutputProcessor, EmptyStopStringIsRefused) {
  try {
    OutputProcessor p({"a", ""}, false);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stop[1] must not be empty"), std::string::npos);
  }
  scheduler::SamplingParams params;
  params.stop = {"x"};
  params.include_stop_str_in_output = true;
  OutputProcessor from(params);
  EXPECT_EQ(feed(from, {"axb"}).text, "ax");
}

TEST(OutputProcessor, RandomTextsMatchADirectSearch) {
  // Alphabet with a 2-byte and a 3-byte character; stop strings drawn from the same.
  const std::vector<std::string> chars = {"a", "b", "c", "é", "€"};
  std::mt19937 rng(5);
  auto word = [&](size_t len) {
    std::string s;
    for (size_t i = 0; i < len; ++i) s += chars[rng() % chars.size()];
    return s;
  };
  for (int it = 0; it < 3000; ++it) {
    std::vector<std::string> stop;
    for (int k = 1 + static_cast<int>(rng() % 3); k > 0; --k) stop.push_back(word(1 + rng() % 4));
    const bool include = rng() % 2;
    std::vector<std::string> deltas;
    std::string text;
    for (int k = static_cast<int>(rng() % 12); k > 0; --k) {
      deltas.push_back(word(rng() % 3));
      text += deltas.back();
    }
    // Reference: the occurrence that ends first (then starts first) in the whole text.
    size_t best_end = std::string::npos, best_start = 0;
    for (const auto& s : stop) {
      const size_t at = text.find(s);
      if (at == std::string::npos) continue;
      if (at + s.size() < best_end || (at + s.size() == best_end && at < best_start)) {
        best_end = at + s.size();
        best_start = at;
      }
    }
    const std::string want =
        best_end == std::string::npos ? text : text.substr(0, include ? best_end : best_start);
    OutputProcessor p(stop, include);
    std::string emitted, received;
    bool stopped = false;
    for (const auto& d : deltas) {
      TextDelta t = p.step(d);
      emitted += t.text;
      ASSERT_TRUE(valid_utf8(t.text));
      if (stopped) continue;
      received += d;
      if (t.stopped) {
        stopped = true;
        continue;
      }
      // Emitted text is final; what is held could still become a stop string.
      const std::string held = received.substr(emitted.size());
      ASSERT_EQ(received.substr(0, emitted.size()), emitted);
      bool prefix = held.empty();
      for (const auto& s : stop)
        prefix |= s.size() > held.size() && s.compare(0, held.size(), held) == 0;
      EXPECT_TRUE(prefix) << "held '" << held << "'";
    }
    if (!stopped) emitted += p.finish();
    EXPECT_EQ(emitted, want) << "iteration " << it;
  }
}

}  // namespace
}  // namespace tessera::engine
