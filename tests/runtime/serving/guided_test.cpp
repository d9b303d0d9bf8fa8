// Guided decoding's choice constraint over the byte tokenizer (ids 0-255 are the bytes, 256 <bos>,
// 257 <eos>): the ids it allows at each point of a choice, the end of sequence where a choice is
// complete, and completion only where no longer choice goes on.
#include "runtime/serving/guided.h"

#include <gtest/gtest.h>

#include "common/error.h"
#include "runtime/serving/byte_tokenizer.h"

namespace tessera::serving {
namespace {

std::vector<int32_t> ids_of(const std::string& s) { return {s.begin(), s.end()}; }

TEST(Guided, PieceTableOfTheByteTokenizer) {
  const ByteTokenizer tok;
  const auto table = tok.piece_table();
  ASSERT_EQ(table->text.size(), 258u);
  EXPECT_EQ(table->text['a'], "a");
  EXPECT_EQ(table->text[' '], " ");
  EXPECT_EQ(table->text[256], "");  // <bos> and <eos> spell nothing
  EXPECT_EQ(table->text[257], "");
  EXPECT_EQ(table->by_first_byte['q'], std::vector<int32_t>{'q'});
  EXPECT_EQ(tok.piece_table().get(), table.get()) << "built once";
}

TEST(Guided, ChoicesAllowTheirNextBytesAndEndWhereComplete) {
  const ByteTokenizer tok;
  const ChoiceConstraint c({"yes", "yesterday", "no", "no"}, tok.piece_table(), {257});
  EXPECT_EQ(c.allowed({}), (std::vector<int32_t>{'n', 'y'}));
  EXPECT_EQ(c.allowed(ids_of("ye")), (std::vector<int32_t>{'s'}));
  // "yes" is a choice and "yesterday" goes on: 't' or the end.
  EXPECT_EQ(c.allowed(ids_of("yes")), (std::vector<int32_t>{'t', 257}));
  EXPECT_EQ(c.allowed(ids_of("no")), (std::vector<int32_t>{257}));
  EXPECT_FALSE(c.complete("yes"));
  EXPECT_TRUE(c.complete("yesterday"));
  EXPECT_TRUE(c.complete("no"));
  EXPECT_FALSE(c.complete("n"));
  EXPECT_FALSE(c.complete("maybe"));
  EXPECT_EQ(c.text_of(ids_of("yes")), "yes");
  EXPECT_THROW(ChoiceConstraint({}, tok.piece_table(), {257}), Error);
  EXPECT_THROW(ChoiceConstraint({"a", ""}, tok.piece_table(), {257}), Error);
}

}  // namespace
}  // namespace tessera::serving
