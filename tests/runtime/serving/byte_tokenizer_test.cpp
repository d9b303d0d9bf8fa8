// The byte tokenizer's streaming decoder emits only complete UTF-8 (checked against the whole
// decode for every split of multi-byte text) and replaces invalid bytes with U+FFFD.
#include "runtime/serving/byte_tokenizer.h"

#include <gtest/gtest.h>

namespace tessera::serving {
namespace {

TEST(ByteTokenizer, RoundTripsAndAddsBos) {
  ByteTokenizer t;
  const std::string text = "héllo wörld – 日本 🎉";
  auto ids = t.encode(text, true);
  EXPECT_EQ(ids.front(), ByteTokenizer::kBos);
  EXPECT_EQ(ids.size(), text.size() + 1);
  EXPECT_EQ(t.decode(ids, true), text);
  EXPECT_EQ(t.decode(ids, false), "<bos>" + text);
}

TEST(ByteTokenizer, StreamDecoderEmitsWholeCharacters) {
  ByteTokenizer t;
  const std::string text = "aé日🎉b";
  auto ids = t.encode(text, false);
  auto d = t.stream_decoder({}, true);
  std::string out;
  std::vector<std::string> pieces;
  for (int32_t id : ids) {
    std::string piece = d->step(id);
    pieces.push_back(piece);
    out += piece;
  }
  out += d->flush();
  EXPECT_EQ(out, text);
  // Each emitted piece is itself valid UTF-8.
  for (const auto& p : pieces) EXPECT_EQ(sanitize_utf8(p), p);
  EXPECT_EQ(pieces[1], "");  // first byte of é
  EXPECT_EQ(pieces[2], "é");
}

TEST(ByteTokenizer, InvalidBytesBecomeReplacementCharacters) {
  EXPECT_EQ(sanitize_utf8("a\xff"
                          "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(complete_utf8_prefix("ab\xE6\x97"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xE6\x97\xA5"), 5u);
  EXPECT_EQ(complete_utf8_prefix("ab\xE6"
                                 "c"),
            4u);  // broken: emitted (as U+FFFD)
  ByteTokenizer t;
  auto d = t.stream_decoder({}, true);
  EXPECT_EQ(d->step(0xE6), "");
  EXPECT_EQ(d->flush(), "\xEF\xBF\xBD");
}

TEST(ByteTokenizer, ChatTemplateIsChatMl) {
  ByteTokenizer t;
  nlohmann::json m = nlohmann::json::array(
      {{{"role", "user"}, {"content", "hi"}},
       {{"role", "assistant"}, {"content", {{{"type", "text"}, {"text", "yo"}}}}}});
  EXPECT_EQ(t.render_chat(m, true, {}),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_THROW(t.render_chat(nlohmann::json::array({{{"content", "x"}}}), true, {}),
               std::exception);
}

}  // namespace
}  // namespace tessera::serving
