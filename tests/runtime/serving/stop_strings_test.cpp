// Stop strings over streamed text: whatever way the text is cut into deltas, the emitted text is
// the reference answer (cut before the earliest stop string), and nothing emitted is taken back.
#include "runtime/serving/stop_strings.h"

#include <gtest/gtest.h>

#include <random>

namespace tessera::serving {
namespace {

// The reference, on the whole text at once: the occurrence of a stop string that ends first (at
// equal ends, the one that starts first) cuts the text.
std::pair<std::string, bool> reference(const std::string& text,
                                       const std::vector<std::string>& stops, bool include) {
  size_t best = std::string::npos, len = 0;
  for (size_t end = 1; end <= text.size() && best == std::string::npos; ++end) {
    for (const auto& s : stops) {
      if (s.size() <= end && text.compare(end - s.size(), s.size(), s) == 0 &&
          (best == std::string::npos || end - s.size() < best)) {
        best = end - s.size();
        len = s.size();
      }
    }
  }
  if (best == std::string::npos) return {text, false};
  return {text.substr(0, include ? best + len : best), true};
}

TEST(StopStrings, RandomDeltasMatchTheReference) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string text;
    const int n = 1 + rng() % 40;
    for (int i = 0; i < n; ++i) text.push_back("abc"[rng() % 3]);
    std::vector<std::string> stops;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k) {
      std::string s;
      for (int i = 0; i < 1 + static_cast<int>(rng() % 4); ++i) s.push_back("abc"[rng() % 3]);
      stops.push_back(s);
    }
    const bool include = rng() % 2;
    StopStringProcessor p(stops, include);
    std::string out;
    bool stopped = false;
    size_t i = 0;
    while (i < text.size() && !stopped) {
      const size_t len = 1 + rng() % 3;
      auto r = p.push(std::string_view(text).substr(i, len));
      out += r.emit;
      stopped = r.stopped;
      i += len;
    }
    if (!stopped) out += p.finish();
    const auto [want, want_stop] = reference(text, stops, include);
    std::string all;
    for (const auto& s : stops) all += s + "|";
    ASSERT_EQ(out, want) << "text " << text << " stops " << all << " include " << include;
    ASSERT_EQ(stopped, want_stop);
  }
}

TEST(StopStrings, HoldsBackOnlyWhatCouldBecomeAStop) {
  StopStringProcessor p({"</end>"}, false);
  auto r = p.push("Hello </e");
  EXPECT_EQ(r.emit, "Hello ");
  r = p.push("xtra");
  EXPECT_EQ(r.emit, "</extra");
  r = p.push(" </end> tail");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.emit, " ");
  EXPECT_EQ(r.matched, "</end>");
  EXPECT_EQ(p.finish(), "");
  StopStringProcessor none({}, false);
  EXPECT_EQ(none.push("abc").emit, "abc");
}

}  // namespace
}  // namespace tessera::serving
