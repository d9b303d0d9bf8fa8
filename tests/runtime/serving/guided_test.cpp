// Guided decoding's choice constraint over the byte tokenizer (ids 0-255 are the bytes, 256 <bos>,
// 257 <eos>): the ids it allows at each point of a choice, the end of sequence where a choice is
// complete, and completion only where no longer choice goes on. And the piece table of a
// byte-level vocabulary, whose tokens may hold part of a UTF-8 character.
#include "runtime/serving/guided.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "runtime/serving/byte_tokenizer.h"
#include "runtime/serving/hf_tokenizer.h"
#include "runtime/serving/json_guide.h"

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

// GPT-2's byte-level alphabet has a token for each byte: those of bytes 0x80-0xFF are parts of a
// UTF-8 character, which decode alone as U+FFFD. The piece table holds their bytes, so that a
// choice or a JSON string with characters the vocabulary splits can be spelled, and JSON mode
// lets only the bytes that complete a character follow a lead byte.
TEST(Guided, PiecesOfByteLevelTokensThatSplitCharacters) {
  namespace fs = std::filesystem;
  const char* src = std::getenv("TESSERA_SOURCE_DIR");
  if (src == nullptr) GTEST_SKIP() << "TESSERA_SOURCE_DIR is not set";
  const fs::path dir = fs::temp_directory_path() / "tessera_guided_test_bytelevel";
  fs::create_directories(dir);
  fs::copy_file(fs::path(src) / "tests/fuzz/tokenizers/gpt2_bytelevel.json", dir / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  const HfTokenizer tok(dir.string());
  const auto table = tok.piece_table();
  int partial = 0;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    const std::string& t = table->text[static_cast<size_t>(id)];
    EXPECT_EQ(t.find("\xEF\xBF\xBD"), std::string::npos) << "token " << id << " reads as U+FFFD";
    if (sanitize_utf8(t) != t) ++partial;
  }
  EXPECT_GE(partial, 128) << "the bytes 0x80-0xFF";
  const std::string choice = "caf\xc3\xa9 \xe2\x98\x83";  // "café ☃"
  const std::vector<int32_t> ids = tok.encode(choice, false);
  const ChoiceConstraint c({choice, "cab"}, table, {0});
  ASSERT_EQ(c.text_of(ids), choice);
  for (size_t k = 0; k < ids.size(); ++k) {
    const auto allowed = c.allowed(std::span<const int32_t>(ids.data(), k));
    EXPECT_TRUE(std::find(allowed.begin(), allowed.end(), ids[k]) != allowed.end()) << k;
  }
  EXPECT_TRUE(c.complete(std::span<const int32_t>(ids)));
  // JSON mode: the answer's tokens are allowed, and after a lead byte only continuation bytes.
  const JsonObjectConstraint json(table, {0});
  const std::vector<int32_t> answer = tok.encode("{\"k\": \"" + choice + "\"}", false);
  int after_lead = 0;
  for (size_t k = 0; k < answer.size(); ++k) {
    const std::span<const int32_t> out(answer.data(), k);
    const auto allowed = json.allowed(out);
    EXPECT_TRUE(std::find(allowed.begin(), allowed.end(), answer[k]) != allowed.end()) << k;
    const std::string& last = k > 0 ? table->text[static_cast<size_t>(answer[k - 1])] : "";
    if (last.size() == 1 && static_cast<unsigned char>(last[0]) >= 0xC2) {
      ++after_lead;
      for (int32_t id : allowed) {
        const auto b = static_cast<unsigned char>(table->text[static_cast<size_t>(id)][0]);
        EXPECT_TRUE(b >= 0x80 && b <= 0xBF) << "after a lead byte, token " << id;
      }
    }
  }
  EXPECT_GE(after_lead, 2);
  EXPECT_TRUE(json.complete(std::span<const int32_t>(answer)));
}

}  // namespace
}  // namespace tessera::serving
