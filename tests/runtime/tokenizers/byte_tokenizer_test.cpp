#include "runtime/tokenizers/byte_tokenizer.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace tessera::tokenizers {
namespace {

TEST(ByteTokenizer, RoundTripsAnyBytes) {
  ByteTokenizer tok;
  std::string text = "héllo\n\x01\xff world";
  auto ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size() + 1);
  EXPECT_EQ(ids[0], ByteTokenizer::kBos);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.encode("", false).size(), 0u);
}

TEST(ByteTokenizer, RejectsIdsOutsideVocabulary) {
  ByteTokenizer tok;
  EXPECT_THROW(tok.decode({1, 258}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

TEST(EscapeBytes, PrintableStaysOthersEscaped) {
  EXPECT_EQ(escape_bytes("ab\n\x01\\"), "ab\\n\\x01\\\\");
}

}  // namespace
}  // namespace tessera::tokenizers
